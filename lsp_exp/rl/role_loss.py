"""One role's loss (LSP eq. 2-5 and the algorithms of algorithms.py): advantages from rewards, a
token-level policy loss weighted by the batch's token weights, and the KL term in one of three places
(docs/method.md §7):

- placement="advantage": A_i <- A(R)_i - beta * sg[KL_i]    (the default);
- placement="reward":    A_i <- A(R - beta * sg[KL])_i      (the KL shares the group baseline);
- placement="loss":      A_i <- A(R)_i, and beta * mean_i KL_i is added to the loss (the literal eq. 4-5).

The advantages come in two steps, so a batch scored in micro-batches gets the same ones
(docs/method.md §15): `role_advantages` takes the group or batch statistics once, before any
micro-batch (for placement="reward" from every member's KL); `member_advantages` adds what depends
on member i alone (its KL penalty for placement="advantage").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import PLACEMENTS
from lsp_exp.rl.losses import kl_penalised, masked_mean


@dataclass
class RoleLoss:
    policy: torch.Tensor     # the policy-gradient loss (includes the KL when placed in the advantage/reward)
    kl: torch.Tensor         # the separate KL loss term (non-zero only for placement="loss")
    kl_mean: torch.Tensor    # mean sequence KL estimate over the counted members, detached
    clip_frac: torch.Tensor  # fraction of counted tokens on the clipped branch, detached
    approx_kl: torch.Tensor  # approximate KL(old || new) over counted tokens, detached

    @property
    def total(self) -> torch.Tensor:
        return self.policy + self.kl


def role_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, advantage_fn: Callable, beta: float = 0.0,
                    kl: torch.Tensor | None = None) -> torch.Tensor:
    """The advantages' group and batch part [groups, members], detached: A(R) from the rewards
    [groups, members] and the mask of counted members (docs/method.md §5); given every member's
    sequence KL [groups * members] (placement="reward"), A(R - beta * sg[KL]) (§7)."""
    if kl is not None:
        rewards = rewards - beta * kl.detach().view(rewards.shape)
    return advantage_fn(rewards, mask).detach()


def member_advantages(base: torch.Tensor, kl: torch.Tensor, member_mask: torch.Tensor, *, beta: float,
                      placement: str) -> torch.Tensor:
    """The detached advantages [B] of B members from their `role_advantages` [B] and sequence KL [B]:
    A_i = (base_i - beta * sg[KL_i]) m_i for placement="advantage" (`kl_penalised`), base_i m_i
    otherwise; 0 for a member outside `member_mask`."""
    if placement == "advantage":
        base = kl_penalised(base, kl, beta)
    elif placement not in PLACEMENTS:
        raise ValueError(f"unknown kl.placement {placement!r}; available: {', '.join(PLACEMENTS)}")
    return (base * member_mask).detach()


def role_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, token_mask: torch.Tensor, advantages: torch.Tensor,
              member_mask: torch.Tensor, kl: torch.Tensor, *, beta: float, placement: str, algorithm: AlgorithmSpec,
              token_weights: torch.Tensor) -> RoleLoss:
    """logp/old_logp/token_mask [B, T]; advantages, member_mask, kl [B] (kl with grad for placement="loss");
    token_weights [B, T]: W = d agg / d l of the algorithm's aggregation over the whole batch
    (`AlgorithmSpec.token_weights`), so the policy loss is sum_t W_t l_t. Members outside
    `member_mask` (e.g. answers to invalid queries) count nowhere."""
    mask = token_mask * member_mask[:, None].to(token_mask.dtype)
    out = algorithm.loss(logp, old_logp, advantages, mask, token_weights)
    kl_mean = masked_mean(kl, member_mask)
    kl_loss = beta * kl_mean if placement == "loss" else torch.zeros_like(out.loss)
    return RoleLoss(out.loss, kl_loss, kl_mean.detach(), out.clip_frac, out.approx_kl)
