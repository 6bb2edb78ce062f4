"""A Hydra callback that gives each multirun a parent MLflow run; every job becomes its child.

The parent is made by the first job that logs to an MLflow experiment (under a file lock in the
sweep directory, so parallel jobs of the joblib or submitit launcher agree on one parent per
experiment), and its id reaches the job's logger through `LSP_MLFLOW_PARENT_RUN_ID`, which
`tracking.run_tags` turns into the `mlflow.parentRunId` tag: the MLflow UI then nests the jobs
under the sweep. The parent is named after the sweep (its swept overrides and its folder); each
job's run name (`tracking.run_name`, plus the job's values of the other swept keys) is made unique
within the sweep under the same lock (`LSP_MLFLOW_RUN_NAME`). Every job's end is recorded
(`sweep_jobs.py`: a failed job is one line and the sweep goes on). When the multirun ends, one line
per job is printed, then one per failed job, with the `lsp-report` command for the sweep; the
parents end FAILED when a job failed (and the command exits 1), FINISHED otherwise. A sweep stopped
before its end (Ctrl-C, SIGTERM, an error of the sweeper) ends its parents KILLED or FAILED
(`end_open_sweep`, from `lsp-train`'s entry).

    lsp-report parent_run=<parent run id>      # the sweep's table
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lsp_exp.run.console import DEFAULT_STORE, say, where_to_look
from lsp_exp.run.sweep_jobs import (JobFailed, failure_lines, job_label, record_job,
                                    tolerate_a_study_without_a_completed_trial)
from lsp_exp.run.tracking import RUN_NAME_ENV, ensure_experiment, init_sqlite_store, run_name, tracking_uri

PARENT_ENV = "LSP_MLFLOW_PARENT_RUN_ID"
PARENTS_FILE = "mlflow_parents.json"  # {tracking uri + experiment: parent run id}
SWEEP_FILE = "sweep.json"             # the sweep's name and swept keys (on_multirun_start)
NAMES_FILE = "run_names.json"         # the run names given so far in this sweep
NAMED_BY_RUN = ("game", "algorithm", "seed")  # swept keys the default run name already shows
_OPEN: list[DictConfig] = []         # the sweep this process started and has not ended (end_open_sweep)


@contextmanager
def _locked(sweep_dir: Path):
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / (PARENTS_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield sweep_dir / PARENTS_FILE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def swept(config: DictConfig) -> tuple[list[str], list[str]]:
    """(the command line's sweep overrides as written, the keys a sweeper varies): from the
    multirun's config, e.g. (['game=lsp_zero,grpo_data', 'seed=0,1'], ['game', 'seed']), or for the
    Optuna sweeper the keys of `hydra.sweeper.params` (and `hparams_search=...` as written)."""
    written, keys = [], []
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    for text, override in zip(config.hydra.overrides.task, parsed, strict=True):
        key = override.get_key_element()
        if override.is_sweep_override():
            written.append(text)
            keys.append(key)
        elif key.split("@")[0].lstrip("+~") in ("hparams_search", "experiment"):
            written.append(text)
    params = config.hydra.get("sweeper", {}).get("params") or {}
    keys += [k for k in params if k not in keys]
    return written, keys


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value(text: str) -> str:
    """A swept value as a run name shows it: floats to 3 significant digits (an Optuna trial's 3.7561e-05)."""
    try:
        return text if float(text) == int(text) else f"{float(text):.3g}"
    except ValueError:
        try:
            return f"{float(text):.3g}"
        except ValueError:
            return text


class MLflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _OPEN[:] = [config]
        tolerate_a_study_without_a_completed_trial()
        written, keys = swept(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        name = " ".join(["sweep", *written])
        searched = [k for k in keys if not any(w.lstrip("+~").startswith(f"{k}=") for w in written)]
        if searched:  # a sweeper's own search space (Optuna)
            name += f" over {', '.join(searched)}"
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({
            "name": f"{name} · {sweep_dir.name}", "keys": keys,
            "default_store": os.environ.get("MLFLOW_TRACKING_URI"),  # (before a job's MLflow client sets it)
        }, indent=1))

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) != 0:
            return  # one task per node of a SLURM job, or a DDP rank: only rank 0 logs
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(RUN_NAME_ENV, None)
        if config.hydra.mode != RunMode.MULTIRUN or config.get("logger", {}).get("name", "none") == "none":
            return
        import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

        uri = tracking_uri(config)
        if uri.startswith("sqlite:///"):
            init_sqlite_store(uri)
        name = config.logger.experiment_name
        sweep_dir = Path(config.hydra.sweep.dir)
        with _locked(sweep_dir) as path:
            parents = _read(path)
            key = f"{uri}#{name}"
            sweep = _read(sweep_dir / SWEEP_FILE)
            if key not in parents:
                client = mlflow.MlflowClient(uri)
                location = Path(config.logger.artifact_location).as_uri() if config.logger.artifact_location else None
                exp_id = ensure_experiment(uri, name, location)
                run = client.create_run(exp_id, run_name=sweep.get("name", f"sweep {sweep_dir.name}"),
                                        tags={"sweep_dir": str(sweep_dir), "kind": "sweep"})
                parents[key] = run.info.run_id
                path.write_text(json.dumps(parents, indent=1))
            # The job's name: the default (or logger.run_name) and its values of the other swept keys;
            # a name given already in this sweep gets the job's number.
            job = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in config.hydra.overrides.task if "=" in o}
            others = [f"{_short(k)}={_value(job[k])}" for k in sweep.get("keys", [])
                      if k in job and (config.logger.get("run_name") or k not in NAMED_BY_RUN)]
            job_name = run_name(config, " ".join(others))
            names_path = sweep_dir / NAMES_FILE
            names = _read(names_path)
            if job_name in names.values():
                job_name = f"{job_name} #{config.hydra.job.num}"
            names[str(config.hydra.job.num)] = job_name
            names_path.write_text(json.dumps(names, indent=1))
        os.environ[PARENT_ENV] = parents[key]
        os.environ[RUN_NAME_ENV] = job_name

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        """Record the job's end in the sweep folder: finished, or its one line (`sweep_jobs.JobFailed`)."""
        if config.hydra.mode != RunMode.MULTIRUN or job_return is None or \
                int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) != 0:
            return
        value, overrides = job_return._return_value, list(config.hydra.overrides.task)
        error = str(value) if isinstance(value, JobFailed) else None
        if job_return.status == JobStatus.FAILED:  # (an exception lsp-train did not catch)
            message = " ".join(str(value).split())[:1000]
            error = f"error: {job_label(config.hydra)} failed: {type(value).__name__}: {message}"
        record_job(Path(config.hydra.sweep.dir), int(config.hydra.job.num), overrides, error)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if end_sweep(config):
            raise SystemExit(1)  # (Hydra passes a callback's SystemExit on: the command's exit code)


def end_open_sweep(err: BaseException) -> None:
    """The sweep this process started stopped before its end (`err`): its parents end KILLED (Ctrl-C,
    SIGTERM) or FAILED, and the jobs so far are summarised. Nothing when no sweep is open."""
    if not _OPEN:
        return
    interrupted = isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and err.code == 143)
    end_sweep(_OPEN[0], stopped=f"the sweep stopped before its end ({type(err).__name__}"
                                f"{f' {err.code}' if isinstance(err, SystemExit) else ''})",
              status="KILLED" if interrupted else "FAILED")


def end_sweep(config: DictConfig, stopped: str | None = None, status: str | None = None) -> bool:
    """End the sweep's parent runs (FAILED when a job failed or the sweep stopped early, else
    FINISHED) and print its summary and its failed jobs; returns whether anything failed."""
    _OPEN.clear()
    sweep_dir = Path(config.hydra.sweep.dir)
    failures = failure_lines(sweep_dir)
    failed = bool(failures) or stopped is not None
    status = status or ("FAILED" if failed else "FINISHED")
    sweep = _read(sweep_dir / SWEEP_FILE)
    for key, run_id in _read(sweep_dir / PARENTS_FILE).items():
        import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

        uri = key.rsplit("#", 1)[0]
        client = mlflow.MlflowClient(uri)
        try:
            client.set_terminated(run_id, status)
        except Exception as err:  # noqa: BLE001 (the jobs' runs are ended already; say so and go on)
            say(f"could not end the sweep's parent run {run_id} {status} ({type(err).__name__}: {err})", err=True)
        try:
            for line in sweep_summary(client, uri, run_id, sweep.get("keys", []), sweep.get("default_store")):
                say(line)
        except Exception as err:  # noqa: BLE001 (a summary is a courtesy: never fail a finished sweep over it)
            say(f"(no sweep summary: {type(err).__name__}: {err})")
    for line in failures:
        say(line)
    if stopped:
        say(f"error: {stopped}; the parent runs end {status}", err=True)
    elif failures:
        say(f"error: {failures[0].removesuffix(':')} (listed above, each in its job's log); the parent runs end "
            "FAILED", err=True)
    return failed


def sweep_summary(client, uri: str, parent_id: str, keys: list[str], default_store: str | None = None) -> list[str]:
    """One line per job of the sweep (name, status, held-out accuracy first -> last, run id), then
    the `lsp-report` command for the sweep and a link to it in the UI."""
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              order_by=["attributes.start_time ASC"], max_results=5000)
    lines = [f"sweep '{parent.info.run_name}': {len(runs)} runs under MLflow parent run {parent_id}"]
    width = max((len(r.info.run_name or "") for r in runs), default=0)
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, "eval/accuracy"), key=lambda m: m.step)
        accuracy = (f"held-out accuracy {history[0].value:.3f} -> {history[-1].value:.3f}" if len(history) > 1 else
                    f"held-out accuracy {history[0].value:.3f}" if history else "no held-out accuracy")
        lines.append(f"  {run.info.run_name:<{width}}  {run.info.status:<8}  {accuracy}  {run.info.run_id}")
    group = [f"tags.{k}" if k == "experiment" else (k if "." in k else f"{k}.name") for k in keys if k != "seed"]
    command = f".venv/bin/lsp-report parent_run={parent_id}"
    if group:
        command += f" 'group_by=[{','.join(group)}]'"
    default = default_store or f"sqlite:///{DEFAULT_STORE}"  # what lsp-report reads without tracking_uri=
    if uri != default:
        command += f" tracking_uri={uri}"
    lines.append(f"compare the arms: {command}")
    lines.append(where_to_look(uri, parent.info.experiment_id))
    return lines
