"""Advantage estimators. Input: rewards [groups, members] and a mask of members that count.

Masked members are left out of every baseline and statistic, and get advantage 0. For the Solver
a group is one query's G answers ([N, G]); for the Challenger it is the step's N queries ([1, N]).
Standard deviations are the unbiased (Bessel, n - 1) estimate, as torch.std in TRL and verl; a
group with fewer than two valid members has std 0 (instead of NaN).

An estimator is a function, or a class whose instances are (stateful) estimators: `RoleBaseline`
keeps a running baseline across steps, and each role gets its own instance (`role_estimator`).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from lsp_exp.nodes import unwrapped
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


@register(ADVANTAGE_ESTIMATORS, "role_baseline")
class RoleBaseline:
    """SPIRAL's role-conditioned advantage (Liu et al. 2025): A = (r - b_t) m, with one running baseline
    for the role, the exponential moving average of its mean counted reward (docs/method.md §17.3).

    SPIRAL starts b at 0; here b_t is bias-corrected as Adam's moments, b_t / (1 - decay^t) with t the
    steps seen, so the first step's baseline is that step's mean instead of (1 - decay) times it. A step
    with no counted member leaves b and t as they are and gives A = 0. Build one instance per role
    (`role_estimator`) and call it once per step; its state goes into the checkpoint."""

    def __init__(self, decay: float = 0.95):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.ema = 0.0    # b_t before bias correction (b_0 = 0)
        self.steps = 0    # t: the steps with a counted member

    @property
    def baseline(self) -> float | None:
        """The bias-corrected baseline of the last step, b_t / (1 - decay^t) (None before the first)."""
        return self.ema / (1 - self.decay ** self.steps) if self.steps else None

    def __call__(self, rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _mask(rewards, mask)
        if not bool(mask.any()):
            return torch.zeros_like(rewards)
        mean = float(rewards.double()[mask].mean())
        # docs/method.md §17.3: b_t = decay * b_{t-1} + (1 - decay) * mean_t, then A = (r - b_t / (1 - decay^t)) m
        self.ema = self.decay * self.ema + (1 - self.decay) * mean
        self.steps += 1
        return torch.where(mask, rewards - self.baseline, torch.zeros_like(rewards)).detach()

    def state_dict(self) -> dict:
        return {"ema": self.ema, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.steps = float(state["ema"]), int(state["steps"])


def role_estimator(estimator: Callable) -> Callable:
    """One role's own advantage estimator: a function as it is; a class (a stateful estimator such as
    `RoleBaseline`, or a `_partial_: true` node of one, its hyper-parameters bound) built anew, so the
    Solver's and the Challenger's states stay apart."""
    return estimator() if inspect.isclass(unwrapped(estimator)) else estimator


def is_stateful(estimator: Callable) -> bool:
    """Whether an estimator keeps state across steps (`state_dict` and `load_state_dict`: checkpointed)."""
    return callable(getattr(estimator, "state_dict", None)) and callable(getattr(estimator, "load_state_dict", None))
