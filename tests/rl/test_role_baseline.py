"""SPIRAL's role-conditioned advantage (docs/method.md §17.3): one running baseline per role, the
bias-corrected EMA of the role's mean counted reward, advanced once per step and checkpointed."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.core.generation import Rollout
from lsp_exp.core.logprobs import LogprobOptions
from lsp_exp.core.micro_batch import logprobs_in_chunks
from lsp_exp.core.roles import RoleBatch, role_backward
from lsp_exp.nodes import build
from lsp_exp.rl.advantages import RoleBaseline, group_mean_advantage, is_stateful, role_estimator
from lsp_exp.rl.algorithms import AlgorithmSpec, algorithm_spec
from lsp_exp.rl.kl import kl_k3
from lsp_exp.rl.role_rewards import all_invalid_advantages, challenger_advantage_fn

from tests.helpers.tiny_run import TINY_RM, compose_config, runs_of_this_test, tiny_overrides


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=1e-6, atol=1e-6)


def test_hand_values_across_steps_with_a_mask_and_an_empty_step():
    est = RoleBaseline(decay=0.5)
    # step 1: counted {1, 0}, mean .5; b = .5 * 0 + .5 * .5 = .25, corrected .25 / (1 - .5) = .5
    close(est(torch.tensor([[1.0, 0.0, 3.0]]), torch.tensor([[True, True, False]])), [[0.5, -0.5, 0.0]])
    assert (est.ema, est.steps, est.baseline) == (0.25, 1, 0.5)
    # step 2: counted {2, 4, 0}, mean 2; b = .125 + 1 = 1.125, corrected 1.125 / .75 = 1.5
    close(est(torch.tensor([[2.0, 4.0], [0.0, 9.0]]), torch.tensor([[True, True], [True, False]])),
          [[0.5, 2.5], [-1.5, 0.0]])
    assert (est.ema, est.steps, est.baseline) == (1.125, 2, 1.5)
    # step 3: nothing counted: A = 0, b and t as they were
    close(est(torch.tensor([[7.0, 8.0]]), torch.tensor([[False, False]])), [[0.0, 0.0]])
    assert (est.ema, est.steps) == (1.125, 2)
    # step 4: mean 3; b = .5625 + 1.5 = 2.0625, corrected 2.0625 / (1 - .125) = 2.357143
    close(est(torch.tensor([[3.0]])), [[3.0 - 2.0625 / 0.875]])
    assert est.steps == 3 and est.baseline == pytest.approx(2.357142857)


def test_bias_correction_makes_the_first_baseline_the_first_mean():
    est = RoleBaseline()   # SPIRAL's decay 0.95
    close(est(torch.tensor([[1.0, 0.0, 0.0, 1.0]])), [[0.5, -0.5, -0.5, 0.5]])   # b = .5, not .05 * .5 = .025
    assert est.ema == pytest.approx(0.025) and est.baseline == pytest.approx(0.5)
    est(torch.tensor([[1.0, 1.0]]))
    # (.95 * .025 + .05 * 1) / (1 - .95^2) = .07375 / .0975: the means' weighted average .95 : 1
    assert est.baseline == pytest.approx(0.07375 / 0.0975) == pytest.approx((0.95 * 0.5 + 1.0) / 1.95)


def test_an_empty_first_step_leaves_no_baseline():
    est = RoleBaseline()
    assert torch.equal(est(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool)), torch.zeros(2, 2))
    assert est.baseline is None and est.state_dict() == {"ema": 0.0, "steps": 0}


def test_the_state_dict_round_trip_continues_the_same_trajectory():
    rewards = [torch.tensor([[0.3, 0.9, 0.1]]), torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0.2, 0.2, 0.7]])]
    whole, first = RoleBaseline(0.8), RoleBaseline(0.8)
    for r in rewards[:2]:
        whole(r), first(r)
    resumed = RoleBaseline(0.8)
    resumed.load_state_dict(dict(first.state_dict()))
    assert torch.equal(resumed(rewards[2]), whole(rewards[2])) and resumed.state_dict() == whole.state_dict()


def test_each_role_builds_its_own_estimator_and_functions_stay_as_they_are():
    spec = AlgorithmSpec("role_baseline", "reinforce_token", "seq_mean_token_sum")
    solver, challenger = spec.role_estimator(), spec.role_estimator()
    assert solver is not challenger and is_stateful(solver) and solver.decay == 0.95
    solver(torch.tensor([[1.0, 3.0]]))
    assert solver.baseline == 2.0 and challenger.baseline is None and challenger.steps == 0
    lsp = AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum")
    assert lsp.role_estimator() is group_mean_advantage and not is_stateful(group_mean_advantage)  # stateless: as is


def test_the_preset_binds_its_decay_and_a_bad_one_is_one_line():
    cfg = compose_config("train", ["algorithm=role_baseline", "algorithm.advantage.decay=0.5"])
    spec = algorithm_spec(cfg.algorithm, build)
    estimators = [spec.role_estimator(), spec.role_estimator()]
    assert all(type(e) is RoleBaseline and e.decay == 0.5 for e in estimators) and estimators[0] is not estimators[1]
    assert role_estimator(spec.advantage_fn) is not role_estimator(spec.advantage_fn)
    bad = compose_config("train", ["algorithm=role_baseline", "algorithm.advantage.decay=1.0"])
    with pytest.raises(ValueError, match=r"^algorithm\.advantage \(RoleBaseline\): decay must be in \[0, 1\), got 1"):
        algorithm_spec(bad.algorithm, build)


class Counted(RoleBaseline):
    """A user's stateful estimator (subclassed here to count its calls)."""

    def __init__(self, decay: float = 0.95):
        super().__init__(decay)
        self.calls = 0

    def __call__(self, rewards, mask=None):
        self.calls += 1
        return super().__call__(rewards, mask)


def test_one_stateful_object_for_both_roles_is_refused():
    with pytest.raises(ValueError, match=r"^algorithm\.advantage: Counted was built once.*`_partial_: true`"):
        AlgorithmSpec(Counted(), "reinforce_token", "seq_mean_token_sum")


def test_a_challenger_step_with_no_valid_query_leaves_its_baseline():
    est = RoleBaseline()
    est(torch.tensor([[-0.5, 0.0]]))
    fn = challenger_advantage_fn(est, any_valid=False)
    assert fn is all_invalid_advantages and est.state_dict() == {"ema": pytest.approx(-0.0125), "steps": 1}


def tiny_batch(groups: int, members: int, seed: int) -> tuple[LlamaForCausalLM, RoleBatch]:
    """A tiny policy and a role's batch of `groups` x `members` completions (4 prompt + 5 completion tokens)."""
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=31, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)).train()
    rows = groups * members
    ids = torch.randint(1, 31, (rows, 9))
    completion = torch.cat([torch.zeros(rows, 4, dtype=torch.long), torch.ones(rows, 5, dtype=torch.long)], 1)
    rollout = Rollout(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=completion,
                      texts=[""] * rows, finished=torch.ones(rows, dtype=torch.bool), temperature=1.0, prompt_length=4)
    with torch.no_grad():
        ref = logprobs_in_chunks(policy, rollout)
    mask = torch.tensor([[True] * members, [False] * members, *[[True] * members] * (groups - 2)])
    return policy, RoleBatch("solver", rollout, torch.rand(groups, members), mask, ref, 0.1, 5,
                             advantage_fn=Counted(0.5))


@pytest.mark.parametrize("placement", ["advantage", "reward"])
def test_the_baseline_advances_once_per_step_whatever_the_micro_batches_and_inner_epochs(placement):
    """role_backward takes the advantages once, before its micro-batches, and keeps them for the later
    inner epochs (`algorithm.epochs`): the EMA moves once per step."""
    spec = AlgorithmSpec("group_mean", "clipped", "token_mean", epochs=3)   # the batch's estimator is used
    for micro in (None, 1, 4):
        policy, batch = tiny_batch(3, 3, seed=0)
        for _ in range(spec.epochs):   # as SelfPlayModule._update: one role_backward per inner epoch
            role_backward(batch, policy, estimator=kl_k3, placement=placement, algorithm=spec, scale=1.0,
                          logprob_options=LogprobOptions(micro_batch_size=micro), backward=torch.Tensor.backward)
        est = batch.advantage_fn
        assert (est.calls, est.steps) == (1, 1), micro
        counted = batch.rewards[batch.member_mask]
        if placement == "advantage":   # b_1 = the counted mean (bias-corrected), A = (r - b_1) m - beta KL m
            assert est.baseline == pytest.approx(float(counted.double().mean()))


# Self-play with the tiny reward model, so some queries are valid and both baselines move; micro-batches of 2
# rows and 2 inner epochs: still one update of each baseline per step.
SELF_PLAY = ["game=lsp_zero", "algorithm=role_baseline", "algorithm.epochs=2", "trainer.micro_batch_size=2",
             "reward=tiny_rm", *TINY_RM, "kl.beta=0.1", "optim.lr=1e-3", "eval.samples=0", "eval.every_n_steps=0",
             "eval.judge_pairs=0", "eval.sample_table_every=0", "trainer.num_threads=1", "trainer.checkpoint_every=2"]


def test_a_resumed_run_continues_the_baselines_of_an_uninterrupted_one(shared_outputs):
    """k=2, 2k=4: the checkpoint holds each role's baseline; the resumed run logs the same baselines,
    advantages and losses as a run of 4 steps, and each baseline moved once per step with a counted member."""
    import mlflow

    from lsp_exp.cli.train import train
    from lsp_exp.run.checkpointing import latest_checkpoint

    def run(*extra):
        train(compose_config("train", tiny_overrides(shared_outputs, *SELF_PLAY, *extra)))
        return runs_of_this_test(f"sqlite:///{shared_outputs}/mlflow.db", "lsp-exp")[-1].info.run_id

    def history(run_id):
        client = mlflow.MlflowClient(f"sqlite:///{shared_outputs}/mlflow.db")
        keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("train/")]
        return {k: sorted((m.step, None if math.isnan(m.value) else m.value)   # (NaN: nothing to count that step)
                          for m in client.get_metric_history(run_id, k)) for k in keys}

    full = run("trainer.max_steps=4")
    first = run("trainer.max_steps=2")
    saved = torch.load(latest_checkpoint(shared_outputs / "checkpoints" / first), map_location="cpu",
                       weights_only=False)["advantage_estimators"][0]
    run("trainer.max_steps=4", f"resume={first}")
    expected, got = history(full), history(first)
    assert set(got) == set(expected) and all(got[k] == expected[k] for k in expected), \
        [k for k in expected if got.get(k) != expected[k]]
    ended = torch.load(latest_checkpoint(shared_outputs / "checkpoints" / full), map_location="cpu",
                       weights_only=False)["advantage_estimators"][0]
    for role in ("solver", "challenger"):   # the baseline is logged on the steps its estimator ran
        assert ended[role]["steps"] > saved[role]["steps"] > 0, role   # it moved before and after the resume
        assert ended[role]["steps"] <= len(got[f"train/adv_baseline/{role}"]) <= 4
