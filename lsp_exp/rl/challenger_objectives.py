"""Challenger objectives: the Challenger's reward as a function of the Solver's value V(q).

- `neg_value`: -V(q), the paper's zero-sum reward (LSP eq. 1, 3);
- `uncertainty`: 1 - 2|V(q) - 1/2|, highest where the Solver succeeds half the time (R-Zero);
- `learnability`: 1 - V(q) when 0 < V(q) < 1, else 0 (Absolute Zero).
The last two need V in [0, 1] (`NEEDS_UNIT_INTERVAL`).
"""
from __future__ import annotations

import torch

from lsp_exp.rl.registry import register

CHALLENGER_OBJECTIVES: dict = {}
NEEDS_UNIT_INTERVAL = {"uncertainty", "learnability"}


@register(CHALLENGER_OBJECTIVES, "neg_value")
def neg_value(values: torch.Tensor) -> torch.Tensor:
    return -values


@register(CHALLENGER_OBJECTIVES, "uncertainty")
def uncertainty(values: torch.Tensor) -> torch.Tensor:
    return 1 - 2 * (values - 0.5).abs()


@register(CHALLENGER_OBJECTIVES, "learnability")
def learnability(values: torch.Tensor) -> torch.Tensor:
    return torch.where((values > 0) & (values < 1), 1 - values, torch.zeros_like(values))


def check_objective(name: str, reward_bounds: tuple[float, float] | None) -> None:
    """Refuse an objective that needs V in [0, 1] with a reward that does not declare that range."""
    if name in NEEDS_UNIT_INTERVAL and (reward_bounds is None or reward_bounds[0] < 0 or reward_bounds[1] > 1):
        raise ValueError(
            f"game.challenger_objective={name} needs a reward in [0, 1], but the reward's range is {reward_bounds}"
        )
