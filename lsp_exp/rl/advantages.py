"""Advantage estimators. Input: rewards [groups, members] and a mask of members that count.

Masked members are left out of every baseline and statistic, and get advantage 0. For the Solver
a group is one query's G answers ([N, G]); for the Challenger it is the step's N queries ([1, N]).
Standard deviations are the unbiased (Bessel, n - 1) estimate, as torch.std in TRL and verl; a
group with fewer than two valid members has std 0 (instead of NaN).
"""
from __future__ import annotations

import torch

from lsp_exp.rl.registry import ADVANTAGE_ESTIMATORS, register


def _mask(rewards: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()


def masked_group_mean(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-group mean of the masked members, shape [groups, 1] (0 for an empty group)."""
    mask = mask.to(rewards.dtype)
    return (rewards * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def masked_group_std(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Per-group std of the masked members over the last dim, shape [..., 1]:
    sqrt( sum_j m_j (x_j - mean)^2 / (n - 1) )  (n if not unbiased); 0 when n < 2."""
    m = mask.to(values.dtype)
    n = m.sum(-1, keepdim=True)
    sq = (((values - masked_group_mean(values, mask)) * m) ** 2).sum(-1, keepdim=True)
    return (sq / ((n - 1) if unbiased else n).clamp(min=1)).sqrt()


@register(ADVANTAGE_ESTIMATORS, "group_mean")
def group_mean_advantage(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A = r - mean_group(r), no division by a standard deviation (LSP eq. 2-3).

    Solver: rewards [N, G] give A_Sol(q_i, a_i^j) = R(q_i, a_i^j) - V(q_i), V(q_i) = mean_j R (eq. 2).
    Challenger: rewards [1, N] with r_i = -V(q_i) give A_Ch(q_i) = mean_i V - V(q_i) (eq. 3).
    """
    mask = _mask(rewards, mask)
    centred = (rewards - masked_group_mean(rewards, mask)) * mask
    # A group whose valid rewards are all equal carries no signal: exactly 0, not float rounding
    # noise (r - mean can be ~1e-8), which a std normalisation would blow up to O(0.01-1).
    inf = torch.full_like(rewards, float("inf"))
    highest = torch.where(mask, rewards, -inf).amax(-1, keepdim=True)
    constant = highest == torch.where(mask, rewards, inf).amin(-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(centred), centred)


@register(ADVANTAGE_ESTIMATORS, "group_std")
def group_std_advantage(rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3): A = (r - mean_group r) / (std_group r + eps).

    std is unbiased (torch.std, as TRL/verl); a group whose valid rewards are all equal gets A = 0.
    """
    mask = _mask(rewards, mask)
    return group_mean_advantage(rewards, mask) / (masked_group_std(rewards, mask) + eps)


@register(ADVANTAGE_ESTIMATORS, "rloo")
def rloo_advantage(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): leave-one-out baseline over the n valid members,
    A_j = r_j - 1/(n-1) sum_{k != j} r_k = n/(n-1) (r_j - mean r); 0 in a group with n < 2."""
    mask = _mask(rewards, mask)
    n = mask.to(rewards.dtype).sum(-1, keepdim=True)
    scale = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return scale * group_mean_advantage(rewards, mask)


@register(ADVANTAGE_ESTIMATORS, "batch_norm")
def batch_norm_advantage(rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025), global normalisation: c = r - mean_group r, then
    A = c / (std_batch c + eps), std (unbiased) over every valid member of the batch.

    The batch mean of c over valid members is exactly 0, so whitening c (as verl/OpenRLHF do) needs
    no re-centring. Note the std is of the centred rewards, not of the raw rewards.
    """
    mask = _mask(rewards, mask)
    centred = group_mean_advantage(rewards, mask)
    return centred / (masked_group_std(centred.flatten(), mask.flatten()) + eps)
