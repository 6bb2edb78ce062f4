"""One role's part of the update: its playouts (the Solver's answers or the Challenger's queries),
rewards and reference log-probs, and the forward and backward of its loss over micro-batches.

One code path for one micro-batch or several (docs/method.md §15). The loss is linear in the
per-token losses once its normalisers are fixed, and those come from the whole batch's masks before
any forward pass: the aggregation's token weights W = d agg / d l (at the full mask), and the KL
term's 1 / (counted members). A micro-batch contributes sum_t W_t l_t (+ beta * sum_i KL_i / members),
its gradient is taken at once, and the contributions add up to the full loss. The advantages' group
and batch statistics are also taken before: A(R), or for placement="reward" A(R - beta * KL), which
needs every member's KL (a no-grad pass over all rows); inside a micro-batch only member i's own KL
penalty is added (placement="advantage").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.core.generation import Rollout
from lsp_exp.core.logprobs import LogprobOptions
from lsp_exp.core.micro_batch import chunk_logprobs, row_chunks
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import sequence_kl
from lsp_exp.rl.role_loss import RoleLoss, member_advantages, role_advantages, role_loss


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
                  logprob_options: LogprobOptions, backward: Callable[[torch.Tensor], None]) -> RoleLoss:
    """`backward(scale * L_role)` over micro-batches of at most `logprob_options.micro_batch_size` rows
    (None: all at once); returns the role's loss terms, detached. At the first epoch the policy is the playout
    policy: its log-probs become `old_logp` (ratio 1, no extra forward pass) and the advantages are fixed."""
    chunks = row_chunks(batch.rollout.input_ids.shape[0], logprob_options.micro_batch_size)
    members = batch.member_mask.flatten()
    mask = batch.token_mask * members[:, None].to(batch.token_mask.dtype)
    first = batch.advantages is None
    if first:  # the group and batch part of the advantages (rl/role_loss.py)
        kl_all = _sequence_kl(batch, policy, estimator, chunks, logprob_options) if placement == "reward" else None
        base = role_advantages(batch.rewards, batch.member_mask,
                               advantage_fn=batch.advantage_fn or algorithm.advantage_fn,
                               beta=batch.beta, kl=kl_all).flatten()
    else:
        base = batch.advantages.flatten()
    weights = algorithm.token_weights(mask, batch.max_tokens)   # W = d agg / d l of the whole batch
    fix_old = batch.old_logp is None
    old_logp, advantages = [], []
    totals = dict.fromkeys(("policy", "kl", "kl_mean", "clip", "approx_kl", "entropy"), 0.0)  # summed on the device
    counted_tokens = mask.sum().clamp(min=1)
    counted_members = members.sum().clamp(min=1)
    for part in chunks:
        if first:
            logp, entropy_sum = chunk_logprobs(policy, batch.rollout, part, entropy_mask=batch.token_mask,
                                               options=logprob_options)
            totals["entropy"] += entropy_sum.detach()
        else:
            logp = chunk_logprobs(policy, batch.rollout, part, options=logprob_options)
        kl = sequence_kl(estimator, logp, batch.ref_logp[part], batch.token_mask[part])
        if fix_old:
            old_logp.append(logp.detach())
        adv = member_advantages(base[part], kl, members[part], beta=batch.beta, placement=placement) if first \
            else base[part]
        advantages.append(adv)
        old = logp.detach() if fix_old else batch.old_logp[part]
        terms = role_loss(logp, old, batch.token_mask[part], adv, members[part], kl, beta=batch.beta,
                          placement=placement, algorithm=algorithm, token_weights=weights[part])
        kl_term = terms.kl * (members[part].sum().clamp(min=1) / counted_members)  # 1 for one micro-batch
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
        batch.advantages = torch.cat(advantages).view(batch.rewards.shape)

    def value(key: str) -> torch.Tensor:  # one sync per figure, when logged
        return torch.as_tensor(totals[key]).detach()

    return RoleLoss(value("policy"), value("kl"), value("kl_mean"), value("clip"), value("approx_kl"))


@torch.no_grad()
def _sequence_kl(batch: RoleBatch, policy, estimator, chunks, logprob_options: LogprobOptions) -> torch.Tensor:
    """Every member's sequence KL [B] from a no-grad pass over the micro-batches (placement="reward":
    A(R - beta * KL) needs them all before any micro-batch's loss)."""
    logp = torch.cat([chunk_logprobs(policy, batch.rollout, part, options=logprob_options) for part in chunks])
    return sequence_kl(estimator, logp, batch.ref_logp, batch.token_mask)
