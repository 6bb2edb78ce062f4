"""MLflow tracking through Lightning's MLFlowLogger: params, tags, eval metrics, sample tables."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from lsp_exp.run import tracking_failures
from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.run.run_end import keep_unlogged
from lsp_exp.run.tracking_failures import (ACTIVE_LOGGERS, TRACKING_ERRORS, ArtifactStoreError,
                                       ResilientMLFlowLogger, TrackingLostError, artifact_errors, check_reachable,
                                       is_remote, one_line, retry_until)


def build_logger(cfg: DictConfig) -> MLFlowLogger | None:
    """An MLFlowLogger with an explicit tracking URI and artifact location, or None for logger=none."""
    if cfg.logger.name == "none":
        return None
    log = cfg.logger
    if log.tracking_uri and log.tracking_uri.startswith("sqlite:///"):
        init_sqlite_store(log.tracking_uri)
    artifact_location = Path(log.artifact_location).as_uri() if log.artifact_location else None
    experiment_id = ensure_experiment(log.tracking_uri, log.experiment_name, artifact_location)
    name = os.environ.get(RUN_NAME_ENV) or free_run_name(log.tracking_uri, experiment_id, run_name(cfg))
    logger = ResilientMLFlowLogger(
        experiment_name=log.experiment_name, run_name=name,
        tracking_uri=log.tracking_uri,
        artifact_location=artifact_location, tags=run_tags(cfg),
    )
    ACTIVE_LOGGERS.append(logger)
    return logger


RUN_NAME_ENV = "LSP_MLFLOW_RUN_NAME"  # a multirun job's name, unique within its sweep (sweep_callback.py)


def run_name(cfg: DictConfig, suffix: str = "") -> str:
    """The run's MLflow name: `logger.run_name` when set (interpolations resolved), else
    `<game>-<algorithm>-s<seed>` (e.g. `lsp_zero-lsp-s1`), with `suffix` (a sweep's other swept values)."""
    name = cfg.logger.get("run_name") or f"{cfg.game.name}-{cfg.algorithm.name}-s{cfg.seed}"
    return f"{name} {suffix}".strip()


def free_run_name(uri: str | None, experiment_id: str, name: str) -> str:
    """`name`, or, when a run of the experiment has it already (deleted runs included), `name-2`,
    `name-3`, ...: the first that none has, so separate runs of one config are told apart in the runs
    table. (A sweep's jobs are named unique within the sweep instead: `sweep_callback.py`.) A store
    that does not answer leaves `name` as it is."""
    import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)
    from mlflow.entities import ViewType  # noqa: PLC0415 (optional, as above)

    prefix = name.split("'")[0].split("\\")[0]  # a quote or a backslash would end the filter's string
    client, taken, token = mlflow.MlflowClient(uri), set(), None
    try:
        while True:
            page = client.search_runs([experiment_id], filter_string=f"attributes.run_name LIKE '{prefix}%'",
                                      run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            taken.update(run.info.run_name for run in page)
            token = page.token
            if not token:
                break
    except TRACKING_ERRORS as err:
        logging.getLogger(__name__).warning("could not list the runs named %r (%s); the run keeps the name",
                                            name, one_line(err, 200))
        return name
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def tracking_uri(cfg: DictConfig) -> str | None:
    """The store runs are logged to (and `init_from` reads from): the logger's, else MLflow's default."""
    if cfg.logger.get("tracking_uri"):
        return cfg.logger.tracking_uri
    import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

    return mlflow.get_tracking_uri()


def ensure_experiment(uri: str | None, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (with `artifact_location`) if it does not exist (a
    parallel job may create it first), so Lightning's logger has nothing to announce."""
    import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 (optional, as above)

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # a parallel job created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def init_sqlite_store(uri: str) -> None:
    """Create (or migrate) a sqlite store under a file lock, so parallel jobs do not race on it."""
    import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    # a refused write is MLflow's traceback on stderr: the run's own warning says it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    check_reachable(uri)  # one line for a store that cannot be used (sqlite_store.py)
    db = Path(uri.removeprefix("sqlite:///"))
    with open(db.with_suffix(db.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
        fcntl.flock(lock, fcntl.LOCK_UN)


def run_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {"game": cfg.game.name, "algorithm": cfg.algorithm.name, "reward": cfg.reward.name,
            "kl": cfg.kl.name, "model": cfg.model.name, "seed": str(cfg.seed)}
    if cfg.experiment:
        tags["experiment"] = str(cfg.experiment)
    if cfg.get("init_from"):
        tags["init_from"] = str(cfg.init_from)
    tags.update({str(k): str(v) for k, v in (cfg.get("tags") or {}).items()})
    if os.environ.get("LSP_MLFLOW_PARENT_RUN_ID"):  # a multirun job: the sweep's parent (sweep_callback.py)
        tags["mlflow.parentRunId"] = os.environ["LSP_MLFLOW_PARENT_RUN_ID"]
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def flat_params(cfg: DictConfig) -> dict[str, object]:
    """The resolved config flattened to `group.key` params."""
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def log_run_start(logger: MLFlowLogger | None, cfg: DictConfig) -> None:
    if logger is None:
        return
    logger.log_hyperparams(flat_params(cfg))
    with artifact_errors(logger, "config/resolved.yaml"):
        logger.experiment.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")


def log_eval(logger: MLFlowLogger | None, step: int, metrics: dict[str, float]) -> None:
    if logger is not None:
        logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=step)


def sample_rows(queries, answers, per_pair: dict, per_query: dict, texts: dict | None = None,
                answer_columns: dict | None = None) -> dict[str, list]:
    """One row per answer: the query, the answer, the task's reading of the answer beside it
    (`answer_columns`, lists of N * G values, e.g. `decoded`, `expected`, `correct`: `Task.answer_columns`),
    per-pair values [N, G], per-query values [N] and per-pair texts (lists of N * G strings, e.g. the
    judge's replies)."""
    g = len(answers) // max(1, len(queries))
    rows: dict[str, list] = {"query": [q for q in queries for _ in range(g)], "answer": list(answers)}
    rows.update({k: list(v) for k, v in (answer_columns or {}).items()})
    rows.update({k: v.detach().float().flatten().cpu().tolist() for k, v in per_pair.items()})  # one copy per tensor
    rows.update({k: [x for x in v.detach().float().cpu().tolist() for _ in range(g)] for k, v in per_query.items()})
    rows.update({k: list(v) for k, v in (texts or {}).items()})
    return rows


def log_sample_table(logger, step: int, rows: dict[str, list]) -> None:
    """The sample table (see `sample_rows`) as the run artifact `samples/step_<step>.json`."""
    if logger is None or not isinstance(logger, MLFlowLogger) or getattr(logger, "down_since", None) is not None:
        return  # (no tables while the tracking server is down)
    try:
        with artifact_errors(logger, f"the sample table samples/step_{step:06d}.json"):
            logger.experiment.log_table(logger.run_id, data=rows, artifact_file=f"samples/step_{step:06d}.json")
    except TRACKING_ERRORS as err:
        if not hasattr(logger, "went_down"):
            raise
        logger.went_down(err, step)


def log_final_model(logger, policy, tokenizer, outputs: str | None = None, state_dict=None,
                    entry: dict | None = None, upload: bool = True) -> Path | None:
    """The trained model (or LoRA adapter) in Hugging Face format, as the run's `model/` artifact
    (`state_dict`: the full weights of a sharded policy, gathered by every rank), and an MLflow
    logged model pointing at it (`entry`: the arguments of `final_model.log_model_entry`; its id
    is kept as `logger.model_id`), which the UI's model views list.

    `upload=False` (`logger.log_model=false`: a full 3B model is ~6 GB): nothing is logged; the model
    is saved under `<outputs>/models/<run id>/model`, which the run's tag `final_model_dir` names.
    With a remote tracking server it is first saved there (and kept), so a server that went away
    does not lose it: the upload is retried for END_WAIT_S, then TrackingLostError says where it is,
    and where the metrics the server never got are (`run_end.keep_unlogged`). Returns that folder.
    An artifact store that refuses the model part way (full, read-only): what it took is removed
    and ArtifactStoreError (one line) ends the run FAILED; nothing truncated is left as its model."""
    if logger is None:
        return None
    if not upload:
        local = Path(outputs or ".") / "models" / logger.run_id / "model"
        save_model(local, policy, tokenizer, state_dict)
        logger.experiment.set_tag(logger.run_id, "final_model_dir", str(local.resolve()))
        return local
    keep = bool(outputs and is_remote(logger._tracking_uri))  # a remote store: the model stays on this machine too
    local = Path(outputs or ".") / "models" / logger.run_id / "model"
    with (contextlib.nullcontext(str(local)) if keep else tempfile.TemporaryDirectory()) as folder:
        save_model(Path(folder), policy, tokenizer, state_dict)
        refused = retry_until(lambda: upload_model(logger, Path(folder)), tracking_failures.END_WAIT_S,
                              "the final model", logger._tracking_uri)
        if refused is not None:
            logger.went_down(refused)
            where = f"it is saved in {local}"
            if not keep:
                try:
                    shutil.copytree(folder, local, dirs_exist_ok=True)  # not lost with the temporary folder
                except OSError as err:
                    where = f"it could not be saved in {local} either ({one_line(err, 200)})"
            kept = keep_unlogged(logger, outputs)
            raise TrackingLostError(
                f"the tracking store {logger._tracking_uri} refused the final model ({one_line(refused, 200)}, retried "
                f"for {tracking_failures.END_WAIT_S:.0f} s); {where}" +
                (f", the metrics the store did not get in {kept}" if kept else "") +
                f"; run {logger.run_id} stays RUNNING there")
    _log_entry(logger, entry)
    return local if keep else None


def save_model(folder: Path, policy, tokenizer, state_dict=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)


def upload_model(logger, folder: Path) -> None:
    """`folder` as the run's `model/` artifact. If the store refuses it part way, what it took is
    removed, so no truncated model is left as the run's model (an artifact store that refuses a
    file: ArtifactStoreError, one line)."""
    try:
        with artifact_errors(logger, "the final model"):
            logger.experiment.log_artifacts(logger.run_id, str(folder), "model")
    except ArtifactStoreError as err:
        raise ArtifactStoreError(f"{err}; {remove_partial_model(logger)}") from None
    except TRACKING_ERRORS:
        remove_partial_model(logger)
        raise


def remove_partial_model(logger) -> str:
    """Remove the run's `model/` artifact (what a failed upload left); says what happened."""
    try:
        # imported here: MLflow is optional (logger=none runs without it)
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: PLC0415

        uri = logger.experiment.get_run(logger.run_id).info.artifact_uri
        get_artifact_repository(uri).delete_artifacts("model")
        return "the partial model/ artifact is removed"
    except Exception as err:  # noqa: BLE001 (any store's own error: the message says so)
        logging.getLogger(__name__).warning("could not remove the partial model/ artifact of run %s (%s)",
                                            logger.run_id, one_line(err, 200))
        return f"its partial model/ artifact could not be removed ({one_line(err, 200)})"


def _log_entry(logger, entry: dict | None) -> None:
    """The logged model beside the `model/` artifact; a store that refuses it (e.g. an MLflow 2
    server) costs a warning, not the finished run."""
    if entry is None:
        return
    from lsp_exp.run.final_model import log_model_entry  # noqa: PLC0415 (it imports MLflow, optional: logger=none)

    try:
        with artifact_errors(logger, "the final model's logged-model entry (its model/ artifact is complete)"):
            logger.model_id = log_model_entry(logger, **entry)
    except TRACKING_ERRORS as err:
        logging.getLogger(__name__).warning("the final model is the run's model/ artifact; the store refused it as "
                                            "a logged model (%s)", one_line(err, 200))
