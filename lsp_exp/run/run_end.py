"""A run's end recorded truthfully: the metrics, then the final model, then FINISHED, in that order.

After training (Lightning's own finalize leaves the run RUNNING: `ResilientMLFlowLogger.finalize`),
`end_run`
1. sends the metrics the store has not taken, retried for `END_WAIT_S` (a sqlite file locked by
   another writer until after training, a server that is down);
2. logs the final model (`tracking.log_final_model`): an artifact store that refuses it leaves no
   partial `model/` behind and ends the run FAILED (`ArtifactStoreError`, one line);
3. marks the run FINISHED, retried the same way.
A store that refuses the metrics or the end for all that time: the metrics it did not get are kept
in the first folder that takes them (`keep_unlogged`: the Hydra run folder, `<outputs>/models/<run
id>`, the system temp folder), the model is saved in `<outputs>/models/<run id>/model` when it can
be, and TrackingLostError says where both are and that the run stays RUNNING in that store.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig

from lsp_exp.run import tracking_failures
from lsp_exp.run.tracking_failures import TrackingLostError, one_line, retry_until

log = logging.getLogger(__name__)


def keep_unlogged(logger, outputs: str | None) -> Path | None:
    """Write the metrics the store did not get to the first folder that takes them; returns the
    file (None: there were none, or no folder took them)."""
    if not getattr(logger, "pending", None):
        return None
    for path in _candidates(logger.run_id, outputs):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            logger.dump_pending(path)
            return path
        except OSError as err:
            log.warning("could not keep the unlogged metrics in %s (%s)", path, one_line(err, 200))
    return None


def _candidates(run_id: str, outputs: str | None) -> list[Path]:
    folders = []
    try:
        if HydraConfig.initialized():
            folders.append(Path(HydraConfig.get().runtime.output_dir) / "unlogged_metrics.jsonl")
    except ValueError:
        pass
    if outputs:
        folders.append(Path(outputs) / "models" / run_id / "unlogged_metrics.jsonl")
    folders.append(Path(tempfile.gettempdir()) / f"lsp-unlogged-metrics-{run_id}.jsonl")
    return folders


def end_run(logger, outputs: str | None, log_model: Callable[[], Path | None],
            save_locally: Callable[[Path], None] | None = None) -> Path | None:
    """The end of a run that trained to its last step (see the module's docstring); returns what
    `log_model` returns. `save_locally(folder)` saves the model where the run's end can say, when the
    store never takes the metrics."""
    if logger is None:
        return log_model()
    uri, wait_s = logger._tracking_uri, tracking_failures.END_WAIT_S

    def flushed():
        if logger.flush() is False:
            raise logger.last_error

    refused = retry_until(flushed, wait_s, "the metrics kept", uri)
    if refused is not None:
        lost(logger, outputs, refused, save_locally, "refused metrics until the end")
    model = log_model()
    refused = retry_until(lambda: logger.experiment.set_terminated(logger.run_id, "FINISHED"), wait_s,
                          "the run's end (FINISHED)", uri)
    if refused is not None:
        lost(logger, outputs, refused, None, "refused the run's end (FINISHED)")
    logger.unfinished = None
    logger.error_recorded = True  # ended: nothing else may end it again
    return model


def lost(logger, outputs: str | None, err: BaseException, save_locally, what: str) -> None:
    """The store refused the run's end for END_WAIT_S: keep what it did not get, raise TrackingLostError."""
    logger.went_down(err)
    kept = keep_unlogged(logger, outputs)
    model = ""
    if save_locally is not None and outputs:
        folder = Path(outputs) / "models" / logger.run_id / "model"
        try:
            save_locally(folder)
            model = f"; the final model is saved in {folder}"
        except OSError as save_err:
            model = f"; the final model could not be saved in {folder} ({one_line(save_err, 200)})"
    metrics = (f"the metrics it did not get are in {kept}" if kept is not None else
               "it has every metric" if not logger.pending else "the metrics it did not get could not be kept")
    raise TrackingLostError(f"the tracking store {logger._tracking_uri} {what} ({one_line(err, 200)}, retried for "
                            f"{tracking_failures.END_WAIT_S:.0f} s); {metrics}{model}; run {logger.run_id} stays "
                            "RUNNING there")
