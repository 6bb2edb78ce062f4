"""The Solver's difficulty band (R-Zero; DAPO's dynamic sampling; docs/method.md §17.2): a valid
query's answers enter the Solver's loss only when its value V lies in [low, high] (closed) or in
(low, high) (open). DAPO drops the groups whose answers all fail or all succeed: the open band (0, 1)
of a binary reward. R-Zero keeps the queries the Solver solves 25-75% of the time: [0.25, 0.75]."""
from __future__ import annotations

import torch


def band_limits(low: float | None, high: float | None,
                reward_bounds: tuple[float, float] | None) -> tuple[float | None, float | None]:
    """The band's limits: each configured one, or (None) the reward's bound on that side; None stays
    None (no limit) for an unbounded reward."""
    if low is None and reward_bounds is not None:
        low = float(reward_bounds[0])
    if high is None and reward_bounds is not None:
        high = float(reward_bounds[1])
    return low, high


def in_band(values: torch.Tensor, valid: torch.Tensor, low: float | None, high: float | None,
            is_open: bool = False) -> torch.Tensor:
    """[N] bool: the valid queries whose V [N] lies in the band (docs/method.md §17.2):
    low <= V <= high (closed) or low < V < high (`is_open`); None: no limit on that side. An invalid
    query is never in the band."""
    inside = valid.clone()
    if low is not None:
        inside &= values > low if is_open else values >= low
    if high is not None:
        inside &= values < high if is_open else values <= high
    return inside
