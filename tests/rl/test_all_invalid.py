"""A Challenger step with no valid query (docs/method.md §3): equal values give a group baseline
nothing to compare, so every query's advantage is -1 and each sampled query becomes less likely."""
import mlflow
import pytest
import torch

from lsp_exp.cli.train import train
from lsp_exp.rl.advantages import group_mean_advantage
from lsp_exp.rl.role_loss import all_invalid_advantages, challenger_advantage_fn

from tests.helpers.tiny_run import compose_config, run_of_this_test, tiny_overrides


def test_all_invalid_advantages_are_minus_one_where_counted():
    rewards = torch.tensor([[0.3, 0.3, 0.3, 0.3]])
    assert torch.equal(all_invalid_advantages(rewards), torch.full((1, 4), -1.0))
    assert torch.equal(all_invalid_advantages(rewards, torch.tensor([[1.0, 1.0, 0.0, 1.0]])),
                       torch.tensor([[-1.0, -1.0, 0.0, -1.0]]))


def test_the_algorithms_estimator_is_kept_while_any_query_is_valid():
    assert challenger_advantage_fn(group_mean_advantage, any_valid=True) is group_mean_advantage
    flat = torch.full((1, 4), 1.0)   # every invalid query worth the same V: the group baseline gives 0
    assert torch.equal(group_mean_advantage(flat, torch.ones(1, 4)), torch.zeros(1, 4))
    assert torch.equal(challenger_advantage_fn(group_mean_advantage, any_valid=False)(flat, torch.ones(1, 4)),
                       torch.full((1, 4), -1.0))


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
