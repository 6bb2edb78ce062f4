"""One role's loss from its rewards, log-probs and KL estimates (LSP eq. 2-5), for any registered
advantage estimator and policy loss, with the KL term in one of three places."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.rl.losses import kl_penalised, masked_mean


@dataclass
class RoleLoss:
    policy: torch.Tensor      # the policy-gradient loss (includes the KL when placed in the advantage/reward)
    kl: torch.Tensor          # the separate KL loss term (non-zero only for placement="loss")
    advantages: torch.Tensor  # [groups, members], detached
    kl_mean: torch.Tensor     # mean sequence KL estimate over the counted members, detached

    @property
    def total(self) -> torch.Tensor:
        return self.policy + self.kl


def query_values(rewards: torch.Tensor, valid: torch.Tensor, invalid_value: float) -> torch.Tensor:
    """V(q_i) = (1/G) sum_j R(q_i, a_i^j) (LSP eq. 2); an invalid query is worth `invalid_value`."""
    return torch.where(valid, rewards.mean(-1), torch.full_like(rewards[:, 0], invalid_value))


def role_loss(rewards: torch.Tensor, mask: torch.Tensor, logp: torch.Tensor, kl: torch.Tensor, *, beta: float,
              placement: str, advantage_fn: Callable, policy_loss_fn: Callable) -> RoleLoss:
    """rewards/mask [groups, members]; logp/kl [groups * members] (kl with grad for placement="loss").

    - placement="advantage": A <- A - beta * stop_grad(KL)   (LSP_SPEC 3.3 (a), the default);
    - placement="reward":    R <- R - beta * stop_grad(KL) before the group baseline;
    - placement="loss":      L <- L + beta * mean(KL)        (the literal eq. 4-5 form).
    """
    kl_grid = kl.view(rewards.shape)
    if placement == "reward":
        rewards = rewards - beta * kl_grid.detach()
    advantages = advantage_fn(rewards, mask)
    if placement == "advantage":
        advantages = kl_penalised(advantages, kl_grid, beta) * mask
    elif placement not in ("reward", "loss"):
        raise ValueError(f"unknown kl.placement {placement!r}; available: advantage, loss, reward")
    flat_mask = mask.flatten()
    policy = policy_loss_fn(logp, advantages.flatten().detach(), flat_mask)
    kl_mean = masked_mean(kl, flat_mask)
    kl_loss = beta * kl_mean if placement == "loss" else torch.zeros_like(policy)
    return RoleLoss(policy, kl_loss, advantages.detach(), kl_mean.detach())
