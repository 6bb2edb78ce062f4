"""From the task reward R to each role's reward, before any advantage (docs/method.md §3, §4, §8):

    V(q_i)    = (1/G) sum_j R(q_i, a_i^j)          (LSP eq. 2; v_inv for an invalid query, §3)
    r_sol     = R + w R_Q                          (§8)
    r_ch(q_i) = f(V(q_i)) + w V_Q(q_i),  V_Q(q_i) = (1/G) sum_j R_Q(q_i, a_i^j), 0 for an invalid query
    r_ch(q_i) <- max(floor, r_ch(q_i) - lambda r_rep(q_i))   (R-Zero, §17.2; only when configured)

f is the Challenger's objective (§4: a name of `CHALLENGER_OBJECTIVES`, the paper's -V by default, or a
function of yours: `challenger_objective`) and w the weight of the self-quality reward R_Q (w = 1 in the
paper, added raw; LSP-Zero has no R_Q at all). r_rep is R-Zero's repetition penalty (rl/repetition.py),
lambda its weight and floor the lowest reward (R-Zero: max(0, uncertainty - r_rep)).
`role_rewards` does the whole combination of one step.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from lsp_exp.nodes import unwrapped
from lsp_exp.rl.registry import get, register

# ---- V(q): the value of a query (docs/method.md §3) ----------------------------------------------


def query_values(rewards: torch.Tensor, valid: torch.Tensor, invalid_value: float | None) -> torch.Tensor:
    """V(q_i) = (1/G) sum_j R(q_i, a_i^j) (LSP eq. 2) for a valid query; an invalid one is worth
    `invalid_value`, or, when that is None (an unbounded reward), the highest reward any answer to a
    valid query earned this step (0 when none is valid): at least the highest V, so under -V an
    invalid query earns the Challenger no more than its worst real query (and less when answers differ)."""
    value = rewards.mean(-1)
    if invalid_value is None:
        graded = valid[:, None].expand_as(rewards)
        invalid_value = rewards[graded].max() if bool(valid.any()) else value.new_zeros(())
    return torch.where(valid, value, torch.as_tensor(invalid_value, dtype=value.dtype, device=value.device))


def invalid_query_value(configured: float | None, reward_bounds: tuple[float, float] | None) -> float | None:
    """The value V of an invalid query (unfinished, empty, or one the reward cannot grade):
    `configured` (game.invalid_query_value) when set; otherwise the reward's upper bound, at which
    the Challenger earns the least any objective gives (-V is lowest; uncertainty and learnability
    are 0 at V = 1); None for an unbounded reward (a raw reward-model score): then `query_values`
    takes the highest reward of the step, the batch's stand-in for an upper bound."""
    if configured is not None:
        return float(configured)
    return None if reward_bounds is None else float(reward_bounds[1])


# ---- a step with no valid query (docs/method.md §3) -----------------------------------------------

ALL_INVALID_ADVANTAGE = -1.0   # docs/method.md §3, "A step with no valid query"


def all_invalid_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A(q_i) = -1 for every query of a step in which none is valid (docs/method.md §3): equal values
    leave a group baseline nothing to compare, so each sampled query is made less likely instead."""
    advantages = torch.full_like(rewards, ALL_INVALID_ADVANTAGE)
    return advantages if mask is None else advantages * mask


def challenger_advantage_fn(advantage_fn: Callable, any_valid: bool) -> Callable:
    """The Challenger's advantage estimator this step: the algorithm's, or `all_invalid_advantages`
    when no query is valid."""
    return advantage_fn if any_valid else all_invalid_advantages


# ---- f(V): the Challenger's objectives (docs/method.md §4) ----------------------------------------

CHALLENGER_OBJECTIVES: dict[str, Callable] = {}
NEEDS_UNIT_INTERVAL = {"uncertainty", "learnability"}   # objectives defined for V in [0, 1]


def unit_interval_only(fn: Callable) -> Callable:
    """Mark an objective defined for V in [0, 1] (`check_objective` refuses other rewards); a function
    of yours says the same with `fn.needs_unit_interval = True`."""
    fn.needs_unit_interval = True
    return fn


@register(CHALLENGER_OBJECTIVES, "neg_value")
def neg_value(values: torch.Tensor) -> torch.Tensor:
    """f(V) = -V: the paper's zero-sum reward (LSP eq. 1, 3)."""
    return -values


@register(CHALLENGER_OBJECTIVES, "uncertainty")
@unit_interval_only
def uncertainty(values: torch.Tensor) -> torch.Tensor:
    """f(V) = 1 - 2|V - 1/2|: highest where the Solver succeeds half the time (R-Zero)."""
    return 1 - 2 * (values - 0.5).abs()


@register(CHALLENGER_OBJECTIVES, "learnability")
@unit_interval_only
def learnability(values: torch.Tensor) -> torch.Tensor:
    """f(V) = 1 - V when 0 < V < 1, else 0 (Absolute Zero)."""
    return torch.where((values > 0) & (values < 1), 1 - values, torch.zeros_like(values))


def challenger_objective(value, build: Callable | None = None) -> Callable:
    """f of `game.challenger_objective`: a `CHALLENGER_OBJECTIVES` name, or a `_target_` node naming a
    function V [N] -> [N] with `_partial_: true` (its other keys bound), which `build(node, key)` turns
    into a callable (as `algorithm.advantage`, rl/algorithms.py)."""
    if isinstance(value, str):
        return get(CHALLENGER_OBJECTIVES, value, "game.challenger_objective")
    objective = value if callable(value) else build(value, "game.challenger_objective")
    if not callable(objective):
        raise ValueError(f"game.challenger_objective: {value.get('_target_')} built a {type(objective).__name__}, "
                         "not a function of V (give a function with `_partial_: true`)")
    return objective


def objective_label(objective: str | Callable) -> str:
    """The objective's name (a built-in's registered name), or `module.function` of a function of yours
    (its partial unwrapped)."""
    if isinstance(objective, str):
        return objective
    fn = unwrapped(objective)
    names = [name for name, registered in CHALLENGER_OBJECTIVES.items() if registered is fn]
    if names:
        return names[0]
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}".lstrip(".")


def needs_unit_interval(objective: str | Callable) -> bool:
    """Whether f is defined for V in [0, 1] only: a built-in in `NEEDS_UNIT_INTERVAL`, or a function
    (or a partial of one) whose `needs_unit_interval` attribute is true."""
    if isinstance(objective, str):
        return objective in NEEDS_UNIT_INTERVAL
    fn = objective
    while True:
        if getattr(fn, "needs_unit_interval", False):
            return True
        if not isinstance(fn, functools.partial):
            return False
        fn = fn.func


def check_objective(objective: str | Callable, reward_bounds: tuple[float, float] | None) -> None:
    """Refuse an objective that needs V in [0, 1] (a name or a function: `needs_unit_interval`) with a
    reward that does not declare that range."""
    if needs_unit_interval(objective) and (reward_bounds is None or reward_bounds[0] < 0 or reward_bounds[1] > 1):
        raise ValueError(f"game.challenger_objective={objective_label(objective)} needs a reward in [0, 1], but the "
                         f"reward's range is {reward_bounds}")


# ---- + w R_Q: the self-quality reward of full LSP (docs/method.md §8) -----------------------------


def solver_rewards(task: torch.Tensor, quality: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """r_sol = R + w R_Q, both [N, G]."""
    return task + weight * quality


def challenger_rewards(objective: torch.Tensor, quality: torch.Tensor, weight: float = 1.0,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """r_ch = f(V) + w V_Q: objective [N], quality [N, G], valid [N] bool -> [N]. An invalid query
    collects no V_Q (0, the judge's lowest score): otherwise a Challenger could earn the judge's
    points with queries the Solver is not trained on."""
    v_q = quality.mean(-1)
    if valid is not None:
        v_q = torch.where(valid, v_q, torch.zeros_like(v_q))
    return objective + weight * v_q


# ---- - lambda r_rep, max(floor, .): R-Zero's repetition penalty (docs/method.md §17.2) --------------


def penalised(challenger: torch.Tensor, penalty: torch.Tensor | None = None, weight: float = 0.0,
              floor: float | None = None) -> torch.Tensor:
    """max(floor, r_ch - lambda r_rep): `penalty` r_rep [N] (None: none), `weight` lambda, `floor`
    (None: no floor). Unchanged (the same tensor) when neither applies."""
    if penalty is not None and weight:
        challenger = challenger - weight * penalty.to(challenger)   # docs/method.md §17.2
    if floor is not None:
        challenger = challenger.clamp(min=floor)                     # docs/method.md §17.2
    return challenger


# ---- the whole combination of one step ------------------------------------------------------------


class RoleRewards(NamedTuple):
    """values [N]: V(q_i) from the task reward alone; solver [N, G]: r_sol; challenger [N]: r_ch."""

    values: torch.Tensor
    solver: torch.Tensor
    challenger: torch.Tensor


def role_rewards(rewards: torch.Tensor, query_valid: torch.Tensor, objective: Callable,
                 invalid_value: float | None, quality: torch.Tensor | None = None,
                 weight: float = 1.0, *, penalty: torch.Tensor | None = None, penalty_weight: float = 0.0,
                 floor: float | None = None) -> RoleRewards:
    """Task rewards R [N, G] and query validity [N] -> V, r_sol, r_ch (module docstring). `objective`:
    f, V [N] -> [N]; `invalid_value`: V of an invalid query (`invalid_query_value`); `quality`: the
    judge's R_Q [N, G], None without a judge (LSP-Zero: r_sol = R, r_ch = f(V)); `weight`: w;
    `penalty`, `penalty_weight`, `floor`: r_rep [N], lambda and the floor of R-Zero (`penalised`)."""
    values = query_values(rewards, query_valid, invalid_value)
    if quality is None:
        return RoleRewards(values, rewards, penalised(objective(values), penalty, penalty_weight, floor))
    challenger = challenger_rewards(objective(values), quality, weight, valid=query_valid)
    return RoleRewards(values, solver_rewards(rewards, quality, weight),
                       penalised(challenger, penalty, penalty_weight, floor))
