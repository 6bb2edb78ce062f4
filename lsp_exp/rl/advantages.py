"""Advantage estimators. Input: rewards [groups, members] and a mask of members that count."""
from __future__ import annotations

import torch

from lsp_exp.rl.registry import ADVANTAGE_ESTIMATORS, register


def masked_group_mean(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-group mean of the masked members, shape [groups, 1] (0 for an empty group)."""
    mask = mask.to(rewards.dtype)
    return (rewards * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


@register(ADVANTAGE_ESTIMATORS, "group_mean")
def group_mean_advantage(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A = r - mean_group(r), no division by a standard deviation (LSP eq. 2-3).

    Solver: rewards [N, G] give A_Sol(q_i, a_i^j) = R(q_i, a_i^j) - V(q_i), V(q_i) = mean_j R (eq. 2).
    Challenger: rewards [1, N] with r_i = -V(q_i) give A_Ch(q_i) = mean_i V - V(q_i) (eq. 3).
    """
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask
    return (rewards - masked_group_mean(rewards, mask)) * mask
