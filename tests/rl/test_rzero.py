"""R-Zero's Challenger reward, the Solver's difficulty band and the alternating schedule
(lsp_exp/rl/role_rewards.py:penalised, rl/band.py, rl/schedule.py; docs/method.md §17.2), by hand."""
import torch

from lsp_exp.rl.band import band_limits, in_band
from lsp_exp.rl.role_rewards import penalised, role_rewards, uncertainty
from lsp_exp.rl.schedule import phase, trained_roles


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))


# V = 0.5, 0.75, 1, 0: uncertainty f(V) = 1, 0.5, 0, 0
TASK = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
VALID = torch.ones(4, dtype=torch.bool)
PENALTY = torch.tensor([0.5, 0.5, 0.25, 0.25])


def test_challenger_reward_with_penalty_and_floor():
    """R-Zero: max(0, f(V) - r_rep) = max(0, [0.5, 0, -0.25, -0.25])."""
    out = role_rewards(TASK, VALID, uncertainty, 1.0, penalty=PENALTY, penalty_weight=1.0, floor=0.0)
    close(out.challenger, [0.5, 0.0, 0.0, 0.0])
    close(out.values, [0.5, 0.75, 1.0, 0.0])
    assert out.solver is TASK
    out = role_rewards(TASK, VALID, uncertainty, 1.0, penalty=PENALTY, penalty_weight=0.5)   # no floor
    close(out.challenger, [0.75, 0.25, -0.125, -0.125])
    close(role_rewards(TASK, VALID, uncertainty, 1.0, floor=0.25).challenger, [1.0, 0.5, 0.25, 0.25])


def test_penalty_comes_after_the_self_quality_reward():
    """f(V) + w V_Q - lambda r_rep: V_Q = 2, 4, 0, 6 and w = 0.5 -> [2, 2.5, 0, 3] - 2 r_rep."""
    quality = torch.tensor([[2.0] * 4, [4.0] * 4, [0.0] * 4, [6.0] * 4])
    out = role_rewards(TASK, VALID, uncertainty, 1.0, quality, 0.5, penalty=PENALTY, penalty_weight=2.0)
    close(out.challenger, [1.0, 1.5, -0.5, 2.5])


def test_default_path_is_unchanged():
    objective = uncertainty(torch.tensor([0.5, 0.75, 1.0, 0.0]))
    assert penalised(objective) is objective
    assert penalised(objective, PENALTY, 0.0) is objective          # lambda = 0: off
    assert torch.equal(role_rewards(TASK, VALID, uncertainty, 1.0).challenger, objective)


def test_band_edges_are_in_when_closed_and_out_when_open():
    values = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    valid = torch.ones(5, dtype=torch.bool)
    assert in_band(values, valid, 0.25, 0.75).tolist() == [False, True, True, True, False]          # R-Zero
    assert in_band(values, valid, 0.25, 0.75, is_open=True).tolist() == [False, False, True, False, False]
    assert in_band(values, valid, 0.0, 1.0).tolist() == [True] * 5                                  # the default
    assert in_band(values, valid, None, None, is_open=True).tolist() == [True] * 5                  # no limit
    assert in_band(values, valid, 0.5, None).tolist() == [False, False, True, True, True]


def test_invalid_queries_are_never_in_the_band():
    values = torch.tensor([0.5, 0.5, 1.0])
    valid = torch.tensor([True, False, False])
    assert in_band(values, valid, 0.0, 1.0).tolist() == [True, False, False]
    assert in_band(values, valid, None, None).tolist() == [True, False, False]


def test_dapo_drops_all_fail_and_all_succeed_groups():
    """DAPO's dynamic sampling on a binary reward: the open band (0, 1) keeps the groups with spread."""
    values = TASK.mean(-1)   # 0.5, 0.75, 1, 0
    assert in_band(values, VALID, *band_limits(None, None, (0.0, 1.0)), is_open=True).tolist() == \
        [True, True, False, False]


def test_band_limits_default_to_the_reward_bounds():
    assert band_limits(None, None, (0.0, 1.0)) == (0.0, 1.0)
    assert band_limits(0.25, None, (0.0, 1.0)) == (0.25, 1.0)
    assert band_limits(None, 0.75, None) == (None, 0.75)       # unbounded reward: no limit below
    assert band_limits(None, None, None) == (None, None)


def test_schedule_phases():
    """2 Challenger steps, then 3 Solver steps, then again; both 0: no schedule."""
    assert [phase(s, 2, 3) for s in range(7)] == ["challenger"] * 2 + ["solver"] * 3 + ["challenger"] * 2
    assert phase(1002, 2, 3) == "solver" and phase(1000, 2, 3) == "challenger"   # a resumed run's phase
    assert phase(5, 0, 0) is None
    assert trained_roles(5, 0, 0) == ("solver", "challenger")
    assert trained_roles(0, 1, 1) == ("challenger",) and trained_roles(1, 1, 1) == ("solver",)
