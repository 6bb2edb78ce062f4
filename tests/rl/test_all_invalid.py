"""A Challenger step with no valid query (docs/method.md §3): equal values give a group baseline
nothing to compare, so every query's advantage is -1 and each sampled query becomes less likely
(`all_invalid_advantages` by hand: test_role_rewards.py)."""
import mlflow
import pytest

from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, run_of_this_test, tiny_overrides


def test_a_step_with_no_valid_query_pushes_every_query_down(shared_outputs):
    """max_query_tokens=1: no query ends, none is valid. Step 0 (KL 0): the Challenger's advantages
    are all -1, and its loss has a gradient (not all zero as with the group baseline)."""
    train(compose_config("train", tiny_overrides(shared_outputs, "game=lsp_zero", "game.max_query_tokens=1",
                                                 "trainer.max_steps=1", "eval.every_n_steps=0", "eval.samples=0",
                                                 "eval.judge_pairs=0", "trainer.checkpoint_every=0")))
    run = run_of_this_test(f"sqlite:///{shared_outputs}/mlflow.db")
    metrics = mlflow.MlflowClient(f"sqlite:///{shared_outputs}/mlflow.db").get_run(run.info.run_id).data.metrics
    assert metrics["train/query_valid_frac"] == 0.0
    assert metrics["train/adv_mean/challenger"] == pytest.approx(-1.0)
    assert metrics["train/adv_std/challenger"] == pytest.approx(0.0, abs=1e-6)
