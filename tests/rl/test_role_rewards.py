"""From the task reward R to each role's reward (lsp_exp/rl/role_rewards.py; docs/method.md §3, §4, §8),
against hand-computed values."""
import functools

import pytest
import torch
from omegaconf import OmegaConf

from lsp_exp.errors import ConfigError
from lsp_exp.nodes import build
from lsp_exp.rl.advantages import group_mean_advantage
from lsp_exp.rl.role_rewards import (ALL_INVALID_ADVANTAGE, CHALLENGER_OBJECTIVES, NEEDS_UNIT_INTERVAL, RoleRewards,
                                     all_invalid_advantages, challenger_advantage_fn, challenger_objective,
                                     challenger_rewards, check_objective, invalid_query_value, learnability,
                                     needs_unit_interval, neg_value, query_values, role_rewards, solver_rewards,
                                     uncertainty)


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=1e-5, rtol=1e-5)


# ---- V(q) and the invalid query's value (§3) -------------------------------------------------------
def test_query_values_with_invalid_queries():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    close(query_values(rewards, torch.tensor([True, False]), 1.0), [0.75, 1.0])
    close(query_values(rewards, torch.tensor([True, False]), 0.0), [0.75, 0.0])


def test_invalid_query_value_on_any_reward_scale():
    """null: the reward's upper bound (the verifier's 1, a sigmoid's 1); an unbounded reward (raw
    reward-model scores) takes the highest reward of an answer to a valid query this step, so an
    invalid query earns the Challenger less under -V than its worst real query."""
    assert invalid_query_value(None, (0.0, 1.0)) == 1.0 and invalid_query_value(None, (-2.0, 3.5)) == 3.5
    assert invalid_query_value(0.25, (0.0, 1.0)) == 0.25 and invalid_query_value(-3.0, None) == -3.0
    assert invalid_query_value(None, None) is None
    raw = torch.tensor([[4.0, 6.0], [9.0, 11.0], [-3.0, -1.0], [20.0, 30.0]])   # V = 5, 10, -2, 25
    valid = torch.tensor([True, True, True, False])
    close(query_values(raw, valid, None), [5.0, 10.0, -2.0, 11.0])       # 30 belongs to the invalid query
    assert neg_value(query_values(raw, valid, None))[3] < neg_value(query_values(raw, valid, None))[:3].min()
    close(query_values(raw, torch.zeros(4, dtype=torch.bool), None), [0.0, 0.0, 0.0, 0.0])  # nothing valid


# ---- a step with no valid query (§3) ---------------------------------------------------------------
def test_all_invalid_advantages_are_minus_one_where_counted():
    rewards = torch.tensor([[0.3, 0.3, 0.3, 0.3]])
    assert ALL_INVALID_ADVANTAGE == -1.0
    assert torch.equal(all_invalid_advantages(rewards), torch.full((1, 4), -1.0))
    assert torch.equal(all_invalid_advantages(rewards, torch.tensor([[1.0, 1.0, 0.0, 1.0]])),
                       torch.tensor([[-1.0, -1.0, 0.0, -1.0]]))


def test_the_algorithms_estimator_is_kept_while_any_query_is_valid():
    assert challenger_advantage_fn(group_mean_advantage, any_valid=True) is group_mean_advantage
    flat = torch.full((1, 4), 1.0)   # every invalid query worth the same V: the group baseline gives 0
    assert torch.equal(group_mean_advantage(flat, torch.ones(1, 4)), torch.zeros(1, 4))
    assert torch.equal(challenger_advantage_fn(group_mean_advantage, any_valid=False)(flat, torch.ones(1, 4)),
                       torch.full((1, 4), -1.0))


# ---- the Challenger's objectives f(V) (§4) ---------------------------------------------------------
def test_challenger_objectives():
    v = torch.tensor([0.0, 0.25, 0.5, 1.0])
    close(neg_value(v), [0.0, -0.25, -0.5, -1.0])
    close(uncertainty(v), [0.0, 0.5, 1.0, 0.0])       # 1 - 2|V - 1/2|
    close(learnability(v), [0.0, 0.75, 0.5, 0.0])     # 1 - V if 0 < V < 1 else 0
    assert CHALLENGER_OBJECTIVES == {"neg_value": neg_value, "uncertainty": uncertainty, "learnability": learnability}
    assert NEEDS_UNIT_INTERVAL == {"uncertainty", "learnability"}


def test_challenger_advantage_is_mean_value_minus_value():
    # LSP eq. 3: A_Ch(q_i) = mean_i V - V(q_i), i.e. the centred challenger reward -V.
    values = torch.tensor([0.5, 0.0, 1.0])
    close(group_mean_advantage(neg_value(values)[None]), [[0.0, 0.5, -0.5]])
    close(group_mean_advantage(neg_value(values)[None])[0], values.mean() - values)


def test_bounded_objectives_refuse_unbounded_rewards():
    check_objective("uncertainty", (0.0, 1.0))
    check_objective("neg_value", None)
    with pytest.raises(ValueError, match="challenger_objective=uncertainty needs a reward in \\[0, 1\\]"):
        check_objective("uncertainty", None)
    with pytest.raises(ValueError, match="learnability"):
        check_objective("learnability", (-5.0, 5.0))


# ---- a Challenger objective of the user's (`game.challenger_objective: {_target_, _partial_: true}`) ----------
CALLS = []


def hardest_half(values, margin=0.0):
    """A user's objective: -V, plus `margin` for a query solved less than half the time."""
    CALLS.append(margin)
    return -values + margin * (values < 0.5).float()


def near(values, target=0.5):
    return -(values - target).abs()


near.needs_unit_interval = True


def a_number():
    return 1.5


def test_an_objective_is_a_name_or_a_users_function_with_its_keys_bound():
    assert challenger_objective("uncertainty") is uncertainty
    with pytest.raises(ValueError, match="unknown game.challenger_objective 'chaos'; available: learnability"):
        challenger_objective("chaos")
    node = OmegaConf.create({"_target_": f"{__name__}.hardest_half", "_partial_": True, "margin": 0.25})
    objective = challenger_objective(node, build)
    CALLS.clear()
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])   # V = 0.5, 0, 1
    out = role_rewards(rewards, torch.tensor([True, True, True]), objective=objective, invalid_value=1.0)
    close(out.challenger, [-0.5, 0.25, -1.0])   # -V, + 0.25 where V < 1/2: the user's function, its margin bound
    assert CALLS == [0.25]
    with pytest.raises(ConfigError, match=r"^game\.challenger_objective\.margn: not a parameter of "
                                          rf"{__name__}\.hardest_half \(parameters: margin\)$"):
        challenger_objective(OmegaConf.create({**node, "margn": 1.0}), build)
    with pytest.raises(ValueError, match="built a float, not a function of V"):
        challenger_objective(OmegaConf.create({"_target_": f"{__name__}.a_number"}), build)   # no `_partial_`


def test_a_users_objective_may_need_the_unit_interval():
    node = OmegaConf.create({"_target_": f"{__name__}.near", "_partial_": True, "target": 0.3})
    objective = challenger_objective(node, build)
    assert isinstance(objective, functools.partial) and needs_unit_interval(objective)
    assert needs_unit_interval(uncertainty) and needs_unit_interval("learnability")
    assert not needs_unit_interval(neg_value) and not needs_unit_interval("neg_value")
    assert not needs_unit_interval(challenger_objective(OmegaConf.create(
        {"_target_": f"{__name__}.hardest_half", "_partial_": True}), build))
    check_objective(objective, (0.0, 1.0))
    with pytest.raises(ValueError, match=rf"^game.challenger_objective={__name__}.near needs a reward in \[0, 1\], "
                                         r"but the reward's range is \(-1.0, 1.0\)$"):
        check_objective(objective, (-1.0, 1.0))
    check_objective(hardest_half, None)   # declares nothing: any reward
    close(objective(torch.tensor([0.3, 1.0])), [0.0, -0.7])


# ---- + w R_Q (§8) ----------------------------------------------------------------------------------
def test_self_reward_combination_by_hand():
    task = torch.tensor([[1.0, 0.0], [0.0, 0.0]])     # R, N=2 queries, G=2 answers
    quality = torch.tensor([[7.0, 5.0], [2.0, 4.0]])  # R_Q
    assert torch.equal(solver_rewards(task, quality), torch.tensor([[8.0, 5.0], [2.0, 4.0]]))
    # -V + V_Q: V = (0.5, 0), V_Q = (6, 3)
    assert torch.equal(challenger_rewards(-task.mean(-1), quality), torch.tensor([5.5, 3.0]))
    assert torch.equal(challenger_rewards(-task.mean(-1), quality, weight=0.5), torch.tensor([2.5, 1.5]))
    # An invalid query collects no V_Q: only its objective (-V at the invalid value) is left.
    assert torch.equal(challenger_rewards(-task.mean(-1), quality, valid=torch.tensor([True, False])),
                       torch.tensor([5.5, -task.mean(-1)[1].item()]))
    assert torch.equal(solver_rewards(task, quality, weight=0.0), task)


# ---- the whole combination of one step -------------------------------------------------------------
TASK = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])   # R [N=3, G=4]
VALID = torch.tensor([True, True, False])                                                # the third invalid
QUALITY = torch.tensor([[7.0, 5.0, 6.0, 2.0], [0.0, 4.0, 4.0, 4.0], [7.0, 7.0, 7.0, 7.0]])  # R_Q


def test_role_rewards_without_a_judge():
    """LSP-Zero: V = (0.75, 0.5, v_inv = 1); r_sol = R itself; r_ch = -V."""
    out = role_rewards(TASK, VALID, neg_value, invalid_value=1.0)
    assert isinstance(out, RoleRewards)
    assert torch.equal(out.values, torch.tensor([0.75, 0.5, 1.0]))
    assert out.solver is TASK
    assert torch.equal(out.challenger, torch.tensor([-0.75, -0.5, -1.0]))


def test_role_rewards_with_the_judge():
    """Full LSP, w = 0.5: r_sol = R + R_Q / 2; V_Q = (5, 3, 0: invalid), so
    r_ch = (-0.75 + 2.5, -0.5 + 1.5, -1 + 0) = (1.75, 1.0, -1.0)."""
    values, solver, challenger = role_rewards(TASK, VALID, neg_value, invalid_value=1.0, quality=QUALITY, weight=0.5)
    assert torch.equal(values, torch.tensor([0.75, 0.5, 1.0]))
    assert torch.equal(solver, torch.tensor([[4.5, 2.5, 4.0, 2.0], [0.0, 2.0, 3.0, 3.0], [4.5, 4.5, 4.5, 4.5]]))
    assert torch.equal(challenger, torch.tensor([1.75, 1.0, -1.0]))


def test_role_rewards_with_another_objective_and_an_unbounded_reward():
    """uncertainty, invalid_value None: the invalid query is worth the step's best valid reward, 1;
    f(V) = 1 - 2|V - 1/2| = (0.5, 1.0, 0.0)."""
    out = role_rewards(TASK, VALID, uncertainty, invalid_value=None)
    assert torch.equal(out.values, torch.tensor([0.75, 0.5, 1.0]))
    assert torch.equal(out.challenger, torch.tensor([0.5, 1.0, 0.0]))


def test_role_rewards_equals_its_parts_bit_for_bit():
    """The same tensors as query_values, the objective, solver_rewards and challenger_rewards one by one."""
    g = torch.Generator().manual_seed(0)
    task, quality = torch.rand(5, 3, generator=g), torch.randint(0, 8, (5, 3), generator=g).float()
    valid = torch.tensor([True, False, True, True, False])
    values = query_values(task, valid, None)
    out = role_rewards(task, valid, learnability, None, quality, 0.142857)
    assert torch.equal(out.values, values)
    assert torch.equal(out.solver, solver_rewards(task, quality, 0.142857))
    assert torch.equal(out.challenger, challenger_rewards(learnability(values), quality, 0.142857, valid=valid))
