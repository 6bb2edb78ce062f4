"""Run health: a run that cannot learn says so. After each step the step's reduced figures (the
StepMetricsLogger's `last`, which comes before this callback in the list) are checked against a
few conditions under which no step has a learning signal; one that holds `trainer.health.steps`
steps in a row prints one line (the figure, its value, for how many steps, the keys to change),
tags the MLflow run (`health=<conditions>`, `health.<condition>=<the line>`), and the end of the
run repeats it. A condition that stops holding says so once too. Only rank 0 prints and tags."""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass

from lightning.pytorch.callbacks import Callback

from lsp_exp.run.console import say

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Condition:
    name: str        # the tag's value: health=<name>
    key: str         # the step figure it reads
    op: str          # holds when `figure <op> threshold`
    option: str      # the option of trainer.health that sets the threshold
    meaning: str     # what it means for learning
    change: str      # the keys to change

    def holds(self, value: float, threshold: float) -> bool:
        return {"<": operator.lt, ">": operator.gt, ">=": operator.ge}[self.op](value, threshold)


CONDITIONS = (
    Condition("queries_invalid", "train/query_valid_frac", "<", "min_query_valid_frac",
              "almost no query is valid, so almost no answer is trained on",
              "game.max_query_tokens, game.temperature, the model (one that can write the task's queries) or the task"),
    Condition("queries_unfinished", "train/query_unfinished_frac", ">", "max_unfinished_frac",
              "the Challenger's queries run out of tokens before they end (an unfinished query is invalid)",
              "game.max_query_tokens, game.temperature or the model"),
    Condition("answers_unfinished", "train/answer_unfinished_frac", ">", "max_unfinished_frac",
              "the Solver's answers run out of tokens before they end",
              "game.max_answer_tokens, game.temperature or the model"),
    Condition("no_reward_spread", "train/zero_std_frac", ">=", "zero_std_frac",
              "the answers in every group get the same reward: zero advantages, no learning signal",
              "the reward (one that tells answers apart), game.group_size or game.temperature"),
)


@dataclass(frozen=True)
class Event:
    condition: str
    line: str
    started: bool            # True: it has held `steps` steps in a row; False: it no longer holds


@dataclass
class Streak:
    """One condition's run of consecutive steps."""
    start: int               # its first step
    steps: int = 0
    low: float = math.inf    # the figure's range over the streak
    high: float = -math.inf
    reported: bool = False


class HealthWatch:
    """The conditions' bookkeeping on each step's figures (no I/O): `observe` says what changes at a
    step; `reports` holds the line of every condition reported so far, in the order first reported."""

    def __init__(self, steps: int = 5, min_query_valid_frac: float = 0.1, max_unfinished_frac: float = 0.9,
                 zero_std_frac: float = 1.0):
        self.steps = steps
        self.thresholds = {"min_query_valid_frac": min_query_valid_frac, "max_unfinished_frac": max_unfinished_frac,
                           "zero_std_frac": zero_std_frac}
        self.streaks: dict[str, Streak] = {}
        self.reports: dict[str, str] = {}

    def observe(self, step: int, figures: dict[str, float]) -> list[Event]:
        """What changes at this step: a condition that has now held `steps` steps in a row (reported
        once), or one reported before that no longer holds (a missing or NaN figure does not hold)."""
        out = []
        for cond in CONDITIONS:
            value = figures.get(cond.key)
            if value is None or math.isnan(value) or not cond.holds(value, self.thresholds[cond.option]):
                streak = self.streaks.pop(cond.name, None)
                if streak is not None and streak.reported:
                    shown = "no figure" if value is None or math.isnan(value) else f"{value:.2f}"
                    self.reports[cond.name] = f"{self._line(cond, streak)} -- it stopped at step {step}"
                    out.append(Event(cond.name, f"run health: {cond.key} {shown} at step {step}: {cond.name} no "
                                                f"longer holds (it held from step {streak.start})", started=False))
                continue
            streak = self.streaks.setdefault(cond.name, Streak(start=step))
            streak.steps += 1
            streak.low, streak.high = min(streak.low, value), max(streak.high, value)
            if streak.steps >= self.steps and not streak.reported:
                streak.reported = True
                self.reports.pop(cond.name, None)   # (a condition that holds again moves to the end)
                self.reports[cond.name] = self._line(cond, streak)
                out.append(Event(cond.name, self.reports[cond.name], started=True))
        return out

    def at_end(self) -> dict[str, str]:
        """The line of each condition reported in this run; one that still holds with its whole streak."""
        lines = dict(self.reports)
        for cond in CONDITIONS:
            streak = self.streaks.get(cond.name)
            if streak is not None and streak.reported:
                lines[cond.name] = f"{self._line(cond, streak)} -- still at the end"
        return lines

    def _line(self, cond: Condition, streak: Streak) -> str:
        value = f"{streak.low:.2f}" if streak.low == streak.high else f"{streak.low:.2f} to {streak.high:.2f}"
        return (f"run health: {cond.key} {value} {cond.op} {self.thresholds[cond.option]:g} "
                f"(trainer.health.{cond.option}) for {streak.steps} steps in a row from step {streak.start}: "
                f"{cond.meaning}; change {cond.change}")

    # resuming: the streaks and reports go into each checkpoint
    def state(self) -> dict:
        return {"streaks": {k: vars(s).copy() for k, s in self.streaks.items()}, "reports": dict(self.reports)}

    def load(self, state: dict) -> None:
        self.streaks = {k: Streak(**s) for k, s in state.get("streaks", {}).items()}
        self.reports = dict(state.get("reports", {}))


class RunHealth(Callback):
    """Watches each step's figures (`figures.last`, a StepMetricsLogger earlier in the callback list)
    with a `HealthWatch` configured by `trainer.health`; rank 0 prints and tags."""

    def __init__(self, options, figures):
        self.enabled = bool(options.enabled)
        self.watch = HealthWatch(steps=options.steps, min_query_valid_frac=options.min_query_valid_frac,
                                 max_unfinished_frac=options.max_unfinished_frac, zero_std_frac=options.zero_std_frac)
        self.figures = figures

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.enabled:
            return
        for event in self.watch.observe(outputs["step"].step, self.figures.last):
            if trainer.is_global_zero:
                say(f"warning: {event.line}" if event.started else event.line)
                self._tag(trainer, {event.condition: self.watch.reports[event.condition]})

    def on_train_end(self, trainer, pl_module):
        ongoing = {k: v for k, v in self.watch.at_end().items() if self.watch.reports.get(k) != v}
        if ongoing and trainer.is_global_zero:
            self._tag(trainer, ongoing)   # the whole streak of each condition that holds to the end

    def summary(self) -> list[str]:
        """The end of the run's lines: one per condition that held in it."""
        return [f"warning: {line}" for line in self.watch.at_end().values()]

    def _tag(self, trainer, lines: dict[str, str]) -> None:
        logger = trainer.logger
        if logger is None or getattr(logger, "run_id", None) is None:
            return
        tags = {"health": ",".join(self.watch.reports), **{f"health.{k}": v[:5000] for k, v in lines.items()}}
        try:
            for key, value in tags.items():
                logger.experiment.set_tag(logger.run_id, key, value)
        except Exception as err:  # noqa: BLE001 (a tracking server that is down must not stop training)
            log.warning("could not tag run %s with its health (%s)", logger.run_id, err)

    def state_dict(self) -> dict:
        return self.watch.state()

    def load_state_dict(self, state_dict: dict) -> None:
        self.watch.load(state_dict)
