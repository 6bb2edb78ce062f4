"""One role's part of the update: its playouts (the Solver's answers or the Challenger's queries),
rewards and reference log-probs, and the forward and backward of its loss over micro-batches.

Micro-batches give the full batch's gradient (docs/method.md §15). The loss is linear in the
per-token losses once its normalisers are fixed, and those come from the whole batch's masks:
the aggregation's token weights W = d agg / d l (at the full mask), and the KL term's 1 / (counted
members). A micro-batch contributes sum_t W_t l_t (+ beta * sum_i KL_i / members), its gradient is
taken at once, and the contributions add up to the full loss. Advantages need every member's KL
only when the KL sits inside a group statistic (placement="reward"): then a no-grad pass over all
rows fixes them first; otherwise A = A(R) [- beta * KL_i] is per member and computed in its micro-batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.core.generation import Rollout
from lsp_exp.core.micro_batch import chunk_logprobs, row_chunks
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import sequence_kl
from lsp_exp.rl.registry import AGGREGATIONS, get
from lsp_exp.rl.role_loss import RoleLoss, role_advantages, role_loss


@dataclass
class RoleBatch:
    name: str                    # "solver" | "challenger"
    rollout: Rollout
    rewards: torch.Tensor        # [groups, members]: Solver [N, G]; Challenger [1, N] (the N queries are the group)
    member_mask: torch.Tensor    # [groups, members] bool: members that count (answers to valid queries)
    ref_logp: torch.Tensor       # [B, T] token log-probs under pi_ref, at the rollout's temperature
    beta: float
    max_tokens: int              # the generation limit, Dr. GRPO's constant normaliser
    advantages: torch.Tensor | None = None  # fixed at the first epoch
    old_logp: torch.Tensor | None = None    # the playout policy's token log-probs, fixed at the first epoch
    entropy: float = float("nan")
    advantage_fn: Callable | None = None    # in place of the algorithm's (a Challenger step with no valid query)

    @property
    def token_mask(self) -> torch.Tensor:
        return self.rollout.completion_mask[:, 1:].float()


def role_backward(batch: RoleBatch, policy, *, estimator, placement: str, algorithm: AlgorithmSpec, scale: float,
                  micro_batch_size: int | None, backward: Callable[[torch.Tensor], None]) -> RoleLoss:
    """`backward(scale * L_role)` over micro-batches of at most `micro_batch_size` rows (None: all at
    once); returns the role's loss terms, detached. At the first epoch the policy is the playout
    policy: its log-probs become `old_logp` (ratio 1, no extra forward pass) and the advantages are fixed."""
    rows = batch.rollout.input_ids.shape[0]
    chunks = row_chunks(rows, micro_batch_size)
    members = batch.member_mask.flatten()
    mask = batch.token_mask * members[:, None].to(batch.token_mask.dtype)
    first = batch.advantages is None
    advantage_fn = batch.advantage_fn or algorithm.advantage_fn
    if first and len(chunks) > 1 and placement == "reward":
        _fix_advantages_first(batch, policy, estimator, chunks, advantage_fn, placement)
    base = None
    if first and batch.advantages is None and len(chunks) > 1:  # A(R): per member once the KL is added
        base = role_advantages(batch.rewards, batch.member_mask, torch.zeros(rows, device=mask.device), beta=0.0,
                               placement="loss", advantage_fn=advantage_fn).flatten()
    weights = None if len(chunks) == 1 else _token_weights(algorithm.aggregation, mask, batch.max_tokens)
    fix_old = batch.old_logp is None
    old_logp, advantages = [], []
    totals = dict.fromkeys(("policy", "kl", "kl_mean", "clip", "approx_kl", "entropy"), 0.0)  # summed on the device
    counted_tokens = mask.sum().clamp(min=1)
    counted_members = members.sum().clamp(min=1)
    for part in chunks:
        if first:
            logp, entropy_sum = chunk_logprobs(policy, batch.rollout, part, entropy_mask=batch.token_mask)
            totals["entropy"] += entropy_sum.detach()
        else:
            logp = chunk_logprobs(policy, batch.rollout, part)
        kl = sequence_kl(estimator, logp, batch.ref_logp[part], batch.token_mask[part])
        if fix_old:
            old_logp.append(logp.detach())
        if batch.advantages is not None:
            adv = batch.advantages.flatten()[part]
        elif base is None:  # one micro-batch: the whole batch, as role_advantages defines it
            adv = role_advantages(batch.rewards, batch.member_mask, kl, beta=batch.beta, placement=placement,
                                  advantage_fn=advantage_fn).flatten()
        else:
            adv = base[part] - (batch.beta * kl.detach() if placement == "advantage" else 0.0)
            adv = (adv * members[part]).detach()
        advantages.append(adv)
        old = logp.detach() if fix_old else batch.old_logp[part]
        terms = role_loss(logp, old, batch.token_mask[part], adv, members[part], kl, beta=batch.beta,
                          placement=placement, algorithm=algorithm, max_tokens=batch.max_tokens,
                          aggregation=_share_of(weights, part))
        kl_term = terms.kl * (members[part].sum().clamp(min=1) / counted_members) if len(chunks) > 1 else terms.kl
        backward(scale * (terms.policy + kl_term))
        share = mask[part].sum() / counted_tokens
        totals["policy"] += terms.policy.detach()
        totals["kl"] += kl_term.detach()
        totals["kl_mean"] += terms.kl_mean * members[part].sum() / counted_members
        totals["clip"] += terms.clip_frac * share
        totals["approx_kl"] += terms.approx_kl * share
    if fix_old:
        batch.old_logp = torch.cat(old_logp)
    if first:
        batch.entropy = float(totals["entropy"]) / max(float(batch.token_mask.sum()), 1.0)
        if batch.advantages is None:
            batch.advantages = torch.cat(advantages).view(batch.rewards.shape)
    value = lambda key: torch.as_tensor(totals[key]).detach()  # noqa: E731  (one sync per figure, when logged)
    return RoleLoss(value("policy"), value("kl"), value("kl_mean"), value("clip"), value("approx_kl"))


@torch.no_grad()
def _fix_advantages_first(batch: RoleBatch, policy, estimator, chunks, advantage_fn, placement) -> None:
    """placement="reward": A(R - beta * KL) needs every member's KL before any micro-batch's loss."""
    batch.old_logp = torch.cat([chunk_logprobs(policy, batch.rollout, part) for part in chunks])
    kl = sequence_kl(estimator, batch.old_logp, batch.ref_logp, batch.token_mask)
    batch.advantages = role_advantages(batch.rewards, batch.member_mask, kl, beta=batch.beta, placement=placement,
                                       advantage_fn=advantage_fn)


def _token_weights(aggregation: str, mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """W = d agg(l, mask) / d l [B, T]: the weight of each token's loss in the full batch's aggregate,
    checked to reproduce agg on a random l (an aggregation that is not linear cannot be split)."""
    agg = get(AGGREGATIONS, aggregation, "aggregation")
    probe = torch.zeros_like(mask, requires_grad=True)
    with torch.enable_grad():
        (weights,) = torch.autograd.grad(agg(probe, mask, max_tokens), probe)
    check = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)).to(mask)
    if not torch.allclose(agg(check, mask, max_tokens), (weights * check).sum(), rtol=1e-4, atol=1e-6):
        raise ValueError(f"aggregation {aggregation!r} is not linear in the per-token losses, so a micro-batch cannot "
                         "carry its share of it: set trainer.micro_batch_size=null")
    return weights


def _share_of(weights: torch.Tensor | None, part: slice):
    """This micro-batch's share of the full batch's aggregate, sum_t W_t l_t (None: one micro-batch,
    the algorithm's own aggregation)."""
    if weights is None:
        return None
    w = weights[part]

    def share(loss: torch.Tensor, mask: torch.Tensor, max_tokens=None) -> torch.Tensor:
        return (torch.where(mask != 0, loss, torch.zeros_like(loss)) * w).sum()

    return share
