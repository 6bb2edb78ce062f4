"""A Hydra callback that gives each multirun a parent MLflow run; every job becomes its child.

The parent is made by the first job that logs to an MLflow experiment (under a file lock in the
sweep directory, so parallel jobs of the joblib or submitit launcher agree on one parent per
experiment), and its id reaches the job's logger through `LSP_MLFLOW_PARENT_RUN_ID`, which
`tracking.run_tags` turns into the `mlflow.parentRunId` tag: the MLflow UI then nests the jobs
under the sweep. When the multirun ends, the parents are marked FINISHED.

    lsp-report parent_run=<parent run id>      # the sweep's table
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

PARENT_ENV = "LSP_MLFLOW_PARENT_RUN_ID"
PARENTS_FILE = "mlflow_parents.json"  # {tracking uri + experiment: parent run id}

log = logging.getLogger(__name__)


@contextmanager
def _locked(sweep_dir: Path):
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / (PARENTS_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield sweep_dir / PARENTS_FILE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


class MLflowSweepCallback(Callback):
    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) != 0:
            return  # one task per node of a SLURM job, or a DDP rank: only rank 0 logs
        os.environ.pop(PARENT_ENV, None)
        if config.hydra.mode != RunMode.MULTIRUN or config.get("logger", {}).get("name", "none") == "none":
            return
        from lsp_exp.run.tracking import init_sqlite_store, tracking_uri

        import mlflow

        uri = tracking_uri(config)
        if uri.startswith("sqlite:///"):
            init_sqlite_store(uri)
        name = config.logger.experiment_name
        with _locked(Path(config.hydra.sweep.dir)) as path:
            parents = _read(path)
            key = f"{uri}#{name}"
            if key not in parents:
                client = mlflow.MlflowClient(uri)
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    location = Path(config.logger.artifact_location).as_uri() if config.logger.artifact_location else None
                    exp_id = client.create_experiment(name, artifact_location=location)
                else:
                    exp_id = experiment.experiment_id
                sweep_dir = str(config.hydra.sweep.dir)
                run = client.create_run(exp_id, run_name=f"sweep {Path(sweep_dir).name}",
                                        tags={"sweep_dir": sweep_dir, "kind": "sweep"})
                parents[key] = run.info.run_id
                path.write_text(json.dumps(parents, indent=1))
                log.info("MLflow parent run %s for the sweep in %s", run.info.run_id, sweep_dir)
        os.environ[PARENT_ENV] = parents[key]

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / PARENTS_FILE
        if not path.is_file():
            return
        import mlflow

        for key, run_id in _read(path).items():
            uri = key.rsplit("#", 1)[0]
            mlflow.MlflowClient(uri).set_terminated(run_id)
