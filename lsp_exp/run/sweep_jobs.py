"""A sweep survives a failed job: the failure is one line, recorded, and the sweep goes on.

Hydra's job runner catches `Exception` only (a job's `SystemExit(2)` ends the whole sweep), its
basic sweeper raises after a batch with a failed job, and the Optuna sweeper stops the study at a
trial's exception or NaN value. So in a multirun `lsp-train` never raises out of a job that failed:
it says one line (stderr and the job's log) and returns `JobFailed`, which the basic sweeper
ignores and the Optuna sweeper marks as a failed trial (it is not a number). Each job's end is
recorded in `<sweep dir>/jobs.json` (under the sweep's file lock, so the jobs of a parallel launcher
agree), from which the end of the sweep reads which jobs failed (`sweep_callback.py`).
"""
from __future__ import annotations

import fcntl
import json
import logging
from contextlib import contextmanager
from pathlib import Path

from lsp_exp.run.console import say

JOBS_FILE = "jobs.json"    # {job number: {"overrides": "...", "error": its one line or null}}
log = logging.getLogger(__name__)


class JobFailed:
    """What a failed job returns to the sweeper: its one line (not a number, so Optuna fails the trial)."""

    def __init__(self, line: str):
        self.line = line

    def __str__(self) -> str:
        return self.line

    def __repr__(self) -> str:
        return f"JobFailed({self.line!r})"


@contextmanager
def locked(sweep_dir: Path):
    """The sweep folder's lock (the one the parent-run bookkeeping takes too)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / "mlflow_parents.json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def job_label(hydra_cfg) -> str:
    """`job <n> (<its values of the swept keys>)`, e.g. `job 1 (optim.lr=-1)` (all its overrides when the
    sweep's keys are unknown)."""
    overrides = list(hydra_cfg.overrides.task)
    keys = read_json(Path(hydra_cfg.sweep.dir) / "sweep.json").get("keys") or []
    shown = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys] or overrides
    return f"job {hydra_cfg.job.num} ({' '.join(shown)})"


def record_job(sweep_dir: Path, num: int, overrides: list[str], error: str | None) -> None:
    """Note job `num`'s end (`error`: its one line, or None for a job that finished)."""
    with locked(sweep_dir):
        jobs = read_json(sweep_dir / JOBS_FILE)
        jobs[str(num)] = {"overrides": " ".join(overrides), "error": error}
        (sweep_dir / JOBS_FILE).write_text(json.dumps(jobs, indent=1))


def failed_jobs(sweep_dir: Path) -> tuple[int, dict[int, dict]]:
    """(how many jobs ended, {job number: its record} of those that failed)."""
    jobs = read_json(sweep_dir / JOBS_FILE)
    return len(jobs), {int(n): j for n, j in jobs.items() if j.get("error")}


def failure_lines(sweep_dir: Path) -> list[str]:
    """The end-of-sweep lines naming every failed job (none when every job finished)."""
    ended, failed = failed_jobs(sweep_dir)
    if not failed:
        return []
    return [f"{len(failed)} of {ended} jobs failed:", *(f"  {failed[n]['error']}" for n in sorted(failed))]


def tolerate_a_study_without_a_completed_trial() -> None:
    """Hydra's Optuna sweeper asks the study for its best trial at the end, a ValueError (a traceback
    after the last trial) when every trial failed; here that is one line, and the sweep ends like any
    other (its summary names the failed trials, the exit code says so). Idempotent; nothing without
    the plugin."""
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl  # noqa: PLC0415 (optional plugin)
    except ImportError:
        return
    if getattr(OptunaSweeperImpl.sweep, "lsp_tolerant", False):
        return
    original = OptunaSweeperImpl.sweep

    def sweep(self, arguments):
        try:
            return original(self, arguments)
        except ValueError as err:
            if "No trials are completed yet" not in str(err):
                raise
            say("no trial of the study completed: no best value, no optimization_results.yaml", err=True)
            return None

    sweep.lsp_tolerant = True
    OptunaSweeperImpl.sweep = sweep
