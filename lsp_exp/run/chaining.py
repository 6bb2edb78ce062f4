"""`init_from`: start a run from another run's final weights (or LoRA adapter), so "LSP then RL" is
two commands, or one multirun per stage.

`init_from` takes one of
- a directory in Hugging Face format (a full model, or a LoRA adapter with `adapter_config.json`);
- an MLflow run id: that run's `model/` artifact (what `lsp-train` logs at the end), or with
  `logger.log_model=false` the folder its tag `final_model_dir` names;
- `filter:<MLflow filter string>`: the newest FINISHED run that matches, in any experiment of the
  tracking store, e.g. `filter:tags.arm = 'lsp' and tags.seed = '1'` (one config chains every seed
  of a multirun with `${seed}` in the string).

A run id is downloaded once into `<outputs>/init_from/<run id>/`.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from lsp_exp.errors import LspError

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class InitFromError(LspError, ValueError):
    """`init_from` names nothing that can be loaded; the message says what was looked for."""


def find_runs(spec: str, tracking_uri: str | None, key: str = "init_from", max_results: int = 1000) -> list[str]:
    """The run ids behind `spec`, newest first: itself when it is a run id, else every finished run
    matching the `filter:` expression (`key` names the config key in errors)."""
    if RUN_ID.match(spec):
        return [spec]
    if not spec.startswith("filter:"):
        raise InitFromError(f"{key}={spec!r}: not a directory, an MLflow run id or 'filter:<expression>'")
    import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

    client = mlflow.MlflowClient(existing_store(tracking_uri, spec, key))
    experiments = [e.experiment_id for e in client.search_experiments()]
    expression = spec.removeprefix("filter:").strip()
    try:
        runs = client.search_runs(experiments, filter_string=f"{expression} and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=max_results)
    except Exception as err:  # noqa: BLE001 (MLflow raises its own exception types for a bad filter)
        raise InitFromError(f"{key}={spec!r}: MLflow rejected the filter ({err})") from None
    if not runs:
        raise InitFromError(f"{key}={spec!r}: no finished MLflow run matches in {tracking_uri}")
    return [r.info.run_id for r in runs]


def find_run(spec: str, tracking_uri: str | None, key: str = "init_from") -> str:
    """The run id behind `spec`: itself when it is a run id, else the newest finished run matching
    the `filter:` expression."""
    runs = find_runs(spec, tracking_uri, key=key, max_results=10)
    if len(runs) > 1:
        log.warning("%s: %d finished runs match %r; using the newest, %s", key, len(runs), spec, runs[0])
    return runs[0]


def existing_store(tracking_uri: str | None, spec: str, key: str = "init_from") -> str:
    """The store to look a run up in; a sqlite file that does not exist is one line (MLflow would
    create an empty store there: with logger=none, an `mlflow.db` in the working directory)."""
    import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

    uri = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InitFromError(f"{key}={spec!r}: there is no tracking store at {uri} to look the run up in; give "
                            "logger.tracking_uri=<the store that holds it>")
    return uri


def resolve_init_from(spec: str, tracking_uri: str | None, outputs: str, key: str = "init_from") -> Path:
    """A local directory holding the weights `spec` names (downloading a run's `model/` artifact);
    `key` names the config key in errors (`run` for lsp-eval)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _check_weights(path, spec, key)
    if spec.startswith(("/", ".", "~")):
        raise InitFromError(f"{key}={spec!r}: directory does not exist")
    run_id = find_run(spec, tracking_uri, key)
    target = Path(outputs) / "init_from" / run_id
    if not (target / "model").is_dir():
        import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)
        from mlflow.exceptions import MlflowException  # noqa: PLC0415 (optional, as above)

        tracking_uri = existing_store(tracking_uri, spec, key)
        try:
            kept = mlflow.MlflowClient(tracking_uri).get_run(run_id).data.tags.get("final_model_dir")
        except MlflowException as err:
            raise InitFromError(f"{key}={spec!r}: no run {run_id} in {tracking_uri} "
                                f"({' '.join(str(err).split())[:200]})") from None
        if kept and Path(kept).is_dir():  # logger.log_model=false: the model stayed on this machine
            return _check_weights(Path(kept), spec, key)

        target.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(target),
                                                tracking_uri=tracking_uri)
        except Exception as err:  # noqa: BLE001 (any store's own error: reported in one line)
            raise InitFromError(f"{key}={spec!r}: could not fetch the `model/` artifact of run {run_id} "
                                f"from {tracking_uri} ({err})") from None
    return _check_weights(target / "model", spec, key)


def _check_weights(path: Path, spec: str, key: str = "init_from") -> Path:
    """A folder with a readable config.json (a model) or adapter_config.json (a LoRA adapter)."""
    configs = [path / name for name in ("adapter_config.json", "config.json") if (path / name).is_file()]
    if not configs:
        raise InitFromError(f"{key}={spec!r}: {path} holds neither a model (config.json) nor a LoRA adapter "
                            "(adapter_config.json)")
    try:
        if not isinstance(json.loads(configs[0].read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).split())[:200]
        raise InitFromError(f"{key}={spec!r}: {configs[0]} is not valid JSON ({reason})") from None
    return path


def is_adapter(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()
