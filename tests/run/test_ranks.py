"""Figures shared by every rank, shown in one process: the step's gathers (the metrics' in
run/step_logging.py, the KL's in run/self_play.py) are replaced by ones that add a second, made-up
rank. Every logged figure is then the reduction over both, and the adaptive KL coefficient moves with
the KL of all ranks, so it cannot drift apart between ranks."""
from __future__ import annotations

import pytest

import lsp_exp.run.self_play
import lsp_exp.run.step_logging
from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, tiny_overrides
from tests.helpers.tiny_run import run_of


def test_every_rank_logs_and_adapts_beta_to_the_same_reduced_figures(shared_outputs, monkeypatch):
    """kl.target = 0.5, horizon 1, beta 0.1. At step 0 the policy is the reference: this rank's KL is
    exactly 0, the made-up rank's 1.0, so the reduced KL is 0.5 = target and beta stays 0.1 at step 1.
    Adapting to this rank's own KL (error clipped to -0.2) would give 0.1 * (1 - 0.2) = 0.08."""
    real = lsp_exp.run.step_logging.gather_objects
    local_tokens = []

    def two_ranks(obj, trainer):
        if isinstance(obj, dict) and set(obj) == {"solver", "challenger"}:  # each role's KL, for beta
            return [obj, {name: kl + 1.0 for name, kl in obj.items()}]
        if not (isinstance(obj, dict) and "train/kl/solver" in obj):
            return real(obj, trainer)
        local_tokens.append(obj["train/tokens/solver"])
        other = {**obj, "train/kl/solver": obj["train/kl/solver"] + 1.0,
                 "train/kl/challenger": obj["train/kl/challenger"] + 1.0,
                 "train/tokens/solver": obj["train/tokens/solver"] + 100.0}
        other.pop("train/answer_len")              # a key this rank lacks
        return [obj, other]

    monkeypatch.setattr(lsp_exp.run.step_logging, "gather_objects", two_ranks)
    monkeypatch.setattr(lsp_exp.run.self_play, "gather_objects", two_ranks)
    train(compose_config("train", tiny_overrides(
        shared_outputs, "game=lsp_zero", "kl=adaptive", "kl.beta=0.1", "kl.target=0.5", "kl.horizon=1",
        "trainer.max_steps=2", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0",
        "eval.sample_table_every=0", "trainer.checkpoint_every=0", "+tags.failcase=ranks")))
    _, history, _ = run_of(shared_outputs, "ranks")
    first = {k: v[0][1] for k, v in history.items()}
    assert first["train/kl/solver"] == pytest.approx(0.5, abs=1e-6)
    assert first["train/kl/challenger"] == pytest.approx(0.5, abs=1e-6)
    assert [v for _, v in history["train/kl/beta_solver"]] == pytest.approx([0.1, 0.1], rel=1e-6)
    assert [v for _, v in history["train/kl/beta_challenger"]] == pytest.approx([0.1, 0.1], rel=1e-6)
    summed = [2 * local + 100.0 for local in local_tokens]                     # this rank's + the other's
    assert [v for _, v in history["train/tokens/solver"]] == summed
    assert "train/answer_len" in first                                          # kept from the rank that has it
