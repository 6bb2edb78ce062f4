"""Sample tables: every `eval.sample_table_every` steps and at the last step (`trainer.max_steps`), so
a short run has one too, one row per answer of the step (the query, the answer, the task's reading of
it, the rewards and advantages of both roles, the judge's reply) as the run artifact
`samples/step_<step>.json` (run/tracking.py). `eval.sample_table_every=0` logs none."""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from lsp_exp.run.playout import StepRecord
from lsp_exp.run.tracking import log_sample_table, sample_rows


class SampleTables(Callback):
    def __init__(self, every: int):
        self.every = every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step  # (after the step's update)
        if self.every and (step % self.every == 0 or step == trainer.max_steps):
            log_sample_table(module.logger, step, table(outputs["step"], module.task))


def table(record: StepRecord, task) -> dict[str, list]:
    """The rows of one step's sample table."""
    playout, rewards, judged = record.playout, record.rewards, record.judged
    updated = {b.name: b for b in record.roles}   # (under game.schedule one role only: no advantages for the other)
    per_pair = {"reward": record.graded.rewards, "solver_reward": rewards.solver}
    if "solver" in updated:
        per_pair["solver_advantage"] = updated["solver"].advantages
    if judged is not None:
        per_pair["judge_score"] = judged.values.view(playout.n, playout.group_size)
    per_query = {"value": rewards.values, "challenger_reward": rewards.challenger}
    if "challenger" in updated:
        per_query["challenger_advantage"] = updated["challenger"].advantages[0]
    if record.repetition is not None:   # R-Zero (docs/method.md §17.2)
        per_query["repetition_penalty"] = record.repetition.penalty
    texts = {"judge_reply": judged.texts} if judged is not None else {}
    columns = task.answer_columns(playout.pair_queries, playout.answers.texts)
    return sample_rows(playout.queries.texts, playout.answers.texts, per_pair, per_query, texts, columns)
