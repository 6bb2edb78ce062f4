"""Tracking that fails well: a dead server at start fails in seconds; one that goes away mid-run
costs no training (metrics are kept and replayed); a run that raises ends FAILED with its error.

- MLflow's HTTP client retries 7 times with a backoff factor of 2 and a 120 s timeout by default
  (minutes per call against a dead server). Unless the environment says otherwise, a call here
  gives up after 3 retries (about 7 s) and 20 s per request.
- `check_reachable` asks an http(s) server once, with a 5 s timeout, before anything is built; a
  sqlite store is preflighted (`sqlite_store.py`: a folder, not a database, read-only, locked).
- `ResilientMLFlowLogger` keeps the metrics a failed call could not send, retries at most every
  `retry_s` seconds, and replays them in order once the server answers; `finalize` never raises for
  the server, so training ends normally and the final model is saved locally (see
  `tracking.log_final_model`).
- `record_failure` tags the run `error` (one line), logs `error.txt` (the traceback) and ends it
  FAILED; the logger does it itself when Lightning finalizes it after an exception inside `fit`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

import requests
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
try:
    from mlflow.exceptions import MlflowException
except ImportError:  # MLflow not installed: only logger=none can run (e.g. a bare GPU image, experiments/gpu_check)
    class MlflowException(Exception):  # never raised: there is no MLflow client to raise it
        pass

from lsp_exp.errors import LspError
from lsp_exp.run import sqlite_store

log = logging.getLogger(__name__)

# What a tracking server that is down, slow or gone raises through MLflow's client.
TRACKING_ERRORS = (MlflowException, requests.RequestException, ConnectionError, TimeoutError)
REMOTE_SCHEMES = ("http", "https", "databricks")
INTERRUPTS = (KeyboardInterrupt, SIGTERMException)  # a run they stop ends KILLED, not FAILED
# While the server is down, how often a metrics call tries it again (the others are kept meanwhile).
RETRY_S = float(os.environ.get("LSP_TRACKING_RETRY_S", "60"))
# After training, how long the run's end (the metrics kept, the final model, its status) is retried
# against a store that refuses it (a server down, a sqlite file locked by another writer).
END_WAIT_S = float(os.environ.get("LSP_TRACKING_END_WAIT_S", "300"))


class TrackingUnreachableError(LspError, ConnectionError):
    """The tracking store named by the config cannot be reached; the message names the key."""


class TrackingLostError(LspError, RuntimeError):
    """The tracking server went away and did not come back before the run ended; the message says
    where the final model and the metrics it did not get are kept."""


class ArtifactStoreError(LspError, RuntimeError):
    """The artifact store refused a file (full, read-only); the run ends FAILED, its metrics kept in
    the tracking store; the message names the run, the file and the reason."""


@contextmanager
def artifact_errors(logger, what: str):
    """An OSError of a local artifact store (a full disk, a read-only folder) while logging `what`
    becomes ArtifactStoreError, one line; a tracking server's errors pass through."""
    try:
        yield
    except TRACKING_ERRORS:
        raise
    except OSError as err:
        raise ArtifactStoreError(
            f"the artifact store of run {getattr(logger, 'run_id', None)} refused {what} ({one_line(err, 300)}); the "
            f"run ends FAILED, its metrics are kept in {getattr(logger, '_tracking_uri', None)}") from None


def retry_until(call, wait_s: float, what: str, uri: str | None = None) -> BaseException | None:
    """`call()` again (backing off from 0.5 s to 10 s) while the store refuses it, for at most
    `wait_s` seconds; returns the last refusal, or None once it succeeded."""
    deadline, delay, said = time.monotonic() + wait_s, 0.5, False
    while True:
        try:
            call()
            if said:
                log.warning("the tracking store %s took %s", uri, what)
            return None
        except TRACKING_ERRORS as err:
            if time.monotonic() + delay > deadline:
                return err
            if not said:
                log.warning("the tracking store %s refused %s (%s); retrying for up to %.0f s", uri, what,
                            one_line(err, 200), wait_s)
                said = True
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


def one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_remote(uri: str | None) -> bool:
    return bool(uri) and urlparse(uri).scheme in REMOTE_SCHEMES


def check_reachable(uri: str, key: str = "logger.tracking_uri", timeout: float = 5.0) -> None:
    """One request to an http(s) server (any HTTP answer will do), or the folder of a sqlite store."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnreachableError(
                f"{key}={uri!r}: tracking server unreachable ({one_line(reason)}); start it, point {key} "
                "(or MLFLOW_TRACKING_URI) at a running one, or use a local store (sqlite:///...) or logger=none"
            ) from None
    elif scheme == "sqlite":  # a folder, not a database, read-only, locked past a bound: one line each
        try:
            sqlite_store.preflight(uri, key)
        except sqlite_store.TrackingStoreError as err:
            raise TrackingUnreachableError(str(err)) from None


class ResilientMLFlowLogger(MLFlowLogger):
    """An MLFlowLogger whose metrics survive a tracking server that goes away mid-run."""

    def __init__(self, *args, retry_s: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_s = RETRY_S if retry_s is None else retry_s
        self.pending: list[tuple[dict[str, float], int | None]] = []
        self.down_since: float | None = None  # time.monotonic() of the first failure of an outage
        self.down_step: int | None = None
        self.last_error: BaseException | None = None
        self._last_try = 0.0
        self.error_recorded = False
        self.unfinished: str | None = None  # the status `finalize` could not set (server down)
        self.logged_through = -1  # a resumed run: steps up to this one are in the store already (first values win)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if step is not None and step <= self.logged_through:  # a resumed run: the store has this step already
            return
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}  # Lightning's epoch: always 0 here
        if not metrics:
            return
        self.pending.append((metrics, step))
        if self.down_since is not None and time.monotonic() - self._last_try < self.retry_s:
            return
        self.flush()

    def flush(self) -> bool:
        """Send what is pending, oldest first; False while the server is still down."""
        self._last_try = time.monotonic()
        try:
            while self.pending:
                metrics, step = self.pending[0]
                super().log_metrics(metrics, step)
                self.pending.pop(0)
        except TRACKING_ERRORS as err:
            self.went_down(err, self.pending[0][1] if self.pending else None)
            return False
        if self.down_since is not None:
            log.warning("tracking server %s is back after %.0f s; the metrics kept meanwhile are logged",
                        self._tracking_uri, time.monotonic() - self.down_since)
            self.down_since = None
        return True

    def went_down(self, err: BaseException, step: int | None = None) -> None:
        self.last_error = err
        if self.down_since is None:
            self.down_since, self.down_step = time.monotonic(), step
            log.warning("tracking server %s unreachable at step %s (%s); training goes on, metrics are kept and "
                        "sent when it answers (retry every %.0f s)", self._tracking_uri, step, one_line(err, 200),
                        self.retry_s)

    def dump_pending(self, path: Path) -> None:
        """The metrics the server never got, one JSON object per call, for the record."""
        with open(path, "w") as f:
            for metrics, step in self.pending:
                f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        error = sys.exc_info()[1] if status == "failed" else None  # Lightning finalizes inside its `except`
        if status == "success":  # ended by run_end.end_run: after the final model, retried (not here)
            self.flush()
            self.unfinished = "FINISHED"
            return
        if not self.flush():
            self.unfinished = status  # the run stays RUNNING on the server; log_final_model / main say so
            return
        self.unfinished = None
        if isinstance(error, INTERRUPTS):  # stopped, not failed (a checkpointed run can be resumed)
            status = "KILLED"
        elif error is not None:
            record_failure(self, error)
            return
        try:
            super().finalize(status)
        except TRACKING_ERRORS as err:
            self.went_down(err)


def record_failure(logger, err: BaseException) -> None:
    """Tag the run `error` (one line), end it FAILED (KILLED for Ctrl-C or SIGTERM, without the
    error), retried for END_WAIT_S while the store refuses it, then log `error.txt` (the traceback).
    Never raises: a server that is down only gets a warning (the run then stays RUNNING there)."""
    run_id = getattr(logger, "_run_id", None)
    if logger is None or run_id is None or getattr(logger, "error_recorded", False):
        return
    if getattr(logger, "down_since", None) is not None:
        log.warning("run %s stays RUNNING on %s: the tracking server is down", run_id, logger._tracking_uri)
        return
    client = logger.experiment
    status = "KILLED" if isinstance(err, INTERRUPTS) else "FAILED"

    def end():
        if status == "FAILED":
            client.set_tag(run_id, "error", f"{type(err).__name__}: {one_line(err, 4000)}")
        client.set_terminated(run_id, status)

    refused = retry_until(end, END_WAIT_S, f"the run's end ({status})", logger._tracking_uri)  # (a locked store)
    if refused is not None:
        log.warning("could not mark run %s %s on %s (%s)", run_id, status, logger._tracking_uri, one_line(refused))
        return
    logger.error_recorded = True
    if status == "FAILED":  # the traceback last: an artifact store that is full must not keep the run RUNNING
        try:
            client.log_text(run_id, "".join(traceback.format_exception(err)), "error.txt")
        except (*TRACKING_ERRORS, OSError) as log_err:
            log.warning("run %s is FAILED; its error.txt could not be logged (%s)", run_id, one_line(log_err))


ACTIVE_LOGGERS: list = []  # the loggers of the job now running in this process (for main's error handler)


def fail_active_runs(err: BaseException) -> None:
    """End the runs of the job that raised `err` FAILED, with the error (see `record_failure`)."""
    while ACTIVE_LOGGERS:
        record_failure(ACTIVE_LOGGERS.pop(), err)
