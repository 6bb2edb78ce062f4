"""One role's loss (LSP eq. 2-5 and the algorithms of algorithms.py): advantages from rewards, a
token-level policy loss, and the KL term in one of three places."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.rl.algorithms import AlgorithmSpec
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


def role_advantages(rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor, *, beta: float, placement: str,
                    advantage_fn: Callable) -> torch.Tensor:
    """Detached advantages [groups, members] from rewards and the sequence KL estimates [groups * members]:

    - placement="advantage": A <- A(R) - beta * stop_grad(KL)   (docs/method.md §7, the default);
    - placement="reward":    A <- A(R - beta * stop_grad(KL))   (the KL shares the group baseline);
    - placement="loss":      A <- A(R), and beta * mean(KL) is added to the loss (the literal eq. 4-5).
    """
    kl_grid = kl.detach().view(rewards.shape)
    if placement == "reward":
        rewards = rewards - beta * kl_grid
    elif placement not in ("advantage", "loss"):
        raise ValueError(f"unknown kl.placement {placement!r}; available: advantage, loss, reward")
    advantages = advantage_fn(rewards, mask)
    if placement == "advantage":
        advantages = kl_penalised(advantages, kl_grid, beta)
    return (advantages * mask).detach()


def role_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, token_mask: torch.Tensor, advantages: torch.Tensor,
              member_mask: torch.Tensor, kl: torch.Tensor, *, beta: float, placement: str, algorithm: AlgorithmSpec,
              max_tokens: int | None = None, aggregation: Callable | None = None) -> RoleLoss:
    """logp/old_logp/token_mask [B, T]; advantages, member_mask, kl [B] (kl with grad for placement="loss").
    Members outside `member_mask` (e.g. answers to invalid queries) count nowhere. `aggregation`: in
    place of the algorithm's (AlgorithmSpec.loss)."""
    mask = token_mask * member_mask[:, None].to(token_mask.dtype)
    out = algorithm.loss(logp, old_logp, advantages, mask, max_tokens=max_tokens, aggregation=aggregation)
    kl_mean = masked_mean(kl, member_mask)
    kl_loss = beta * kl_mean if placement == "loss" else torch.zeros_like(out.loss)
    return RoleLoss(out.loss, kl_loss, kl_mean.detach(), out.clip_frac, out.approx_kl)
