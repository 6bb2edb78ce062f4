"""What a run prints: plain lines (also written to the Hydra job's log file), the self-play progress
bar, held-out evaluation status, and where to look at the run in the MLflow UI.

Every line goes to stdout with `say` and, when Hydra has configured the job's logging, to its log
file (`<run dir>/train.log`) with a timestamp, so the log holds what the terminal showed.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from lsp_exp.run.config import PROJECT_ROOT

_log = logging.getLogger("lsp_exp")
DEFAULT_STORE = PROJECT_ROOT / "outputs" / "mlflow.db"   # what `make ui` serves
UI_ADDRESS = "http://127.0.0.1:5000"


def say(message: str, err: bool = False) -> None:
    """One line on stdout (stderr with `err`), and the same line in the job's log file, if any."""
    print(message, file=sys.stderr if err else sys.stdout, flush=True)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if handlers:
        record = _log.makeRecord(_log.name, logging.ERROR if err else logging.INFO, __file__, 0, message, None, None)
        for handler in handlers:
            handler.handle(record)


# ---- where to look at a run ------------------------------------------------------------------------
def ui_base(tracking_uri: str | None) -> str:
    """The address of the MLflow UI over this store: the server itself for http(s), else the local
    `mlflow ui` (`make ui`, or `ui_command`)."""
    if tracking_uri and urlparse(tracking_uri).scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return UI_ADDRESS


def ui_command(tracking_uri: str | None) -> str | None:
    """The command that serves this store's UI (None: a server already does)."""
    if tracking_uri and urlparse(tracking_uri).scheme in ("http", "https"):
        return None
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        if Path(tracking_uri.removeprefix("sqlite:///")).resolve() == DEFAULT_STORE.resolve():
            return "make ui"
    return f".venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port 5000"


def run_link(tracking_uri: str | None, experiment_id: str, run_id: str | None = None) -> str:
    """A link that opens the run (or the experiment's runs) in the UI's model-training view, also
    from a browser that never chose it (`workflowType=machine_learning`; MLflow 3 opens in GenAI mode)."""
    page = f"experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{ui_base(tracking_uri)}/#/{page}?workflowType=machine_learning"


def where_to_look(tracking_uri: str | None, experiment_id: str, run_id: str | None = None) -> str:
    """'open <link>' with the command that serves it, one line."""
    command = ui_command(tracking_uri)
    return f"open {run_link(tracking_uri, experiment_id, run_id)}" + (f"  (after `{command}`)" if command else "")


# ---- the progress bar --------------------------------------------------------------------------------
def bar_figures(cfg) -> list[tuple[str, str]]:
    """(label, metric key) of the figures the progress bar shows, for the game being played: what
    the Solver earns, how many of the Challenger's queries are valid (no such thing in a data game),
    the judge's mean score (full LSP), the verifier's verdict beside a proxy reward, the Solver's KL."""
    figures = [("solver reward", "train/solver/reward")]
    if cfg.game.challenger:
        figures.append(("valid queries", "train/query_valid_frac"))
    if cfg.game.self_reward:
        figures.append(("judge score", "train/judge/score"))
    figures += [("true accuracy", "train/solver/true_accuracy"), ("KL", "train/kl/solver")]
    return figures


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar counting self-play steps out of `trainer.max_steps` (a resumed run
    starts where it left off), with the game's figures on a line of their own instead of
    `v_num` and Lightning's keys after the bar."""

    def __init__(self, figures):
        super().__init__(leave=True)
        self.figures, self.figures_text = figures, ""

    def _get_train_description(self, current_epoch: int) -> str:
        return "self-play step"

    @property
    def total_train_batches(self):
        return self.trainer.max_steps

    def configure_columns(self, trainer) -> list:
        return [TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(bar_width=24),
                TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), SecondsPerStep()]

    def _init_progress(self, trainer) -> None:
        super()._init_progress(trainer)
        progress = self.progress
        if progress is None or getattr(progress, "figures_line", False):
            return
        # The figures go on a line under the bars (not a column after them: a table cell that wraps).
        progress.columns = tuple(c for c in progress.columns if c is not self._metric_component)
        rows = progress.get_renderables

        def renderables():
            yield from rows()
            if self.figures_text:
                yield Text(self.figures_text, style="italic")

        progress.get_renderables, progress.figures_line = renderables, True

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        metrics = trainer.callback_metrics
        self.figures_text = "  " + "  ".join(f"{label} {float(metrics[key]):.3f}" for label, key in self.figures
                                             if key in metrics)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()


def progress_bar(cfg) -> StepProgressBar:
    """The self-play progress bar: 'self-play step k/max_steps', time, seconds per step, and under it
    a line of labelled figures of the last step (`bar_figures`)."""
    return StepProgressBar(bar_figures(cfg))


class SecondsPerStep(ProgressColumn):
    """Seconds per self-play step (blank in the other bars)."""

    def render(self, task):
        speed = task.speed if str(task.description).startswith("self-play") else None
        return Text(f"{1 / speed:.1f} s/step" if speed else "", style="dim")


# ---- held-out evaluation -----------------------------------------------------------------------------
class HeldoutStatus:
    """What `heldout_status` yields: `progress(answers)` as answers are generated, `done(metrics)`."""

    def __init__(self, label: str):
        self.label, self.start = label, time.perf_counter()
        self._progress, self._task = None, None

    def progress(self, answers: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=answers)
            self._progress.refresh()

    def done(self, metrics: dict[str, float]) -> None:
        seconds = time.perf_counter() - self.start
        figures = "  ".join(f"{_label(k)} {v:.3f}" for k, v in metrics.items() if "/" not in k)
        say(f"{self.label}: {figures}  ({seconds:.0f} s)")


@contextmanager
def heldout_status(total: int, samples: int, step: int, bar=None):
    """A line before a held-out evaluation (what it does), the result line after it, and while it
    runs a row 'held-out answers k/n' (greedy and sampled answers) in the training bar (`bar`: the
    trainer's progress bar callback) or, on a terminal, a bar of its own."""
    what = f"greedy and {samples} samples each" if samples else "greedy"
    label = f"held-out evaluation at step {step}"
    say(f"{label}: {total} problems, {what} ...")
    status = HeldoutStatus(label)
    answers = total * (1 + samples)
    progress = getattr(bar, "progress", None) if getattr(bar, "is_enabled", False) else None
    if progress is not None:  # a row in the training bar's display
        status._progress, status._task = progress, progress.add_task("held-out answers", total=answers)
        try:
            yield status
        finally:
            progress.remove_task(status._task)
    elif sys.stdout.isatty():
        with Progress(TextColumn("held-out answers"), MofNCompleteColumn(), BarColumn(bar_width=24),
                      TimeElapsedColumn(), transient=True) as own:
            status._progress, status._task = own, own.add_task("held-out", total=answers)
            yield status
    else:
        yield status


def _label(key: str) -> str:
    return key.replace("pass_at_", "pass@")


def accuracy_line(history: dict[int, dict[str, float]]) -> str | None:
    """'held-out Solver accuracy 0.483 -> 0.484 (step 0 -> 3); pass@1 ...': the first and last evaluation."""
    if not history:
        return None
    first, last = history[min(history)], history[max(history)]
    keys = [k for k in last if k.startswith("pass_at_") and "/" not in k]
    if min(history) == max(history):  # one evaluation (a resumed run has no "before")
        extra = "".join(f"; {_label(k)} {last[k]:.3f}" for k in keys)
        return f"held-out Solver accuracy {last['accuracy']:.3f} (step {max(history)}){extra}"
    extra = "".join(f"; {_label(k)} {first[k]:.3f} -> {last[k]:.3f}" for k in keys if k in first)
    return (f"held-out Solver accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f} "
            f"(step {min(history)} -> {max(history)}){extra}")
