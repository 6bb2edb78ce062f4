"""The step's callbacks: the step's figures reach the store before the step's checkpoint is written,
sample tables and held-out evaluations land at their steps, and what the step returns is typed."""
from __future__ import annotations

import mlflow

from lsp_exp.cli.train import train
from lsp_exp.run.checkpointing import StepCheckpoint
from lsp_exp.run.playout import StepRecord
from lsp_exp.run.step_logging import StepMetricsLogger

from tests.helpers.tiny_run import compose_config, run_of, tiny_overrides


def test_each_step_is_in_the_store_before_its_checkpoint(shared_outputs, monkeypatch):
    """At every checkpoint (every step here) the store already holds that step's `train/*` figures."""
    real_save, seen = StepCheckpoint.save, {}
    uri = f"sqlite:///{shared_outputs}/mlflow.db"

    def save(self, trainer):
        run_id = trainer.logger.run_id
        logged = [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, "train/solver/reward")]
        seen[trainer.global_step] = logged
        return real_save(self, trainer)

    records = []
    real_figures = StepMetricsLogger.figures

    def figures(self, record, module):
        records.append(record)
        return real_figures(self, record, module)

    monkeypatch.setattr(StepCheckpoint, "save", save)
    monkeypatch.setattr(StepMetricsLogger, "figures", figures)
    train(compose_config("train", tiny_overrides(shared_outputs, "trainer.max_steps=3", "trainer.checkpoint_every=1",
                                                 "eval.samples=0", "+tags.failcase=callbacks")))
    assert seen == {1: [0], 2: [0, 1], 3: [0, 1, 2]}   # checkpoint k follows the figures of steps 0 .. k - 1
    assert [r.step for r in records] == [0, 1, 2] and all(isinstance(r, StepRecord) for r in records)
    n, g = records[0].playout.n, records[0].playout.group_size
    assert records[0].graded.rewards.shape == (n, g) and records[0].rewards.challenger.shape == (n,)
    run, history, client = run_of(shared_outputs, "callbacks")
    assert [s for s, _ in history["eval/accuracy"]] == [0, 2, 3]      # start, every 2 steps, end
    tables = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert tables == ["samples/step_000002.json", "samples/step_000003.json"]   # every 2 steps, and the last
