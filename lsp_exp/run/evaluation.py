"""Held-out evaluation of the Solver during a run (docs/evaluation.md): a Lightning callback that, at
the start of a run, judges the judges (how the reward and the self-quality judge classify labelled
pairs) and evaluates the Solver, then every `eval.every_n_steps` steps (greedy) and at the end.
A resumed run was judged and evaluated at the start of its first run."""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from lsp_exp.eval.heldout import evaluate_solver
from lsp_exp.judge.judging_the_judges import judge_the_judges
from lsp_exp.run.console import heldout_status
from lsp_exp.run.tracking import log_eval
from lsp_exp.tasks.base import HeldoutSet


class HeldoutEvaluation(Callback):
    """`heldout`: the task's held-out problems (None: none evaluated); `labelled_pairs`: (query,
    answer, correct?) to judge the judges; `samples`: k of pass@k at the start and the end."""

    def __init__(self, heldout: HeldoutSet | None, *, every: int, samples: int, max_new_tokens: int,
                 labelled_pairs=None, judge_threshold: float = 5.5):
        self.heldout, self.every, self.samples, self.max_new_tokens = heldout, every, samples, max_new_tokens
        self.labelled_pairs, self.judge_threshold = labelled_pairs or [], judge_threshold
        self.history: dict[int, dict[str, float]] = {}   # held-out metrics by step
        self.judging: dict[str, float] = {}             # eval/judge/* and eval/reward/* at the start

    def on_train_start(self, trainer, module):
        if module.resumed_at is not None:
            return
        if self.labelled_pairs:
            with module.gathered_reference():  # every rank gathers; rank 0 judges
                if trainer.is_global_zero:
                    judge = _Autocast(module.judge, module.autocast_context) if module.judge is not None else None
                    self.judging = judge_the_judges(self.labelled_pairs, module.reward, judge, self.judge_threshold)
                    log_eval(module.logger, 0, self.judging)
        self.evaluate(trainer, module, samples=self.samples)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self.evaluate(trainer, module, samples=0)

    def on_train_end(self, trainer, module):
        self.evaluate(trainer, module, samples=self.samples)

    def evaluate(self, trainer, module, samples: int) -> None:
        if self.heldout is None or not self.heldout.prompts:
            return
        step = trainer.global_step
        with module.gathered_policy(), module.autocast_context():  # every rank gathers a sharded policy
            if not trainer.is_global_zero:  # rank 0 evaluates
                return
            with heldout_status(len(self.heldout.prompts), samples, step,  # a line, a bar, the result
                                bar=trainer.progress_bar_callback) as status:
                metrics = evaluate_solver(module.policy, module.tokenizer, self.heldout, samples=samples,
                                          max_new_tokens=self.max_new_tokens, progress=status.progress,
                                          sampling=module.sampling)
                status.done(metrics)
        self.history[step] = metrics
        log_eval(module.logger, step, metrics)


class _Autocast:
    """A scorer (the judge) whose `score` runs under `context()`; its other attributes are the scorer's."""

    def __init__(self, scorer, context):
        self.scorer, self.context = scorer, context

    def score(self, *args, **kwargs):
        with self.context():
            return self.scorer.score(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.scorer, name)
