"""One role's part of the update: its playouts (the Solver's answers or the Challenger's queries),
rewards and reference log-probs, and its loss terms at each inner epoch over the same playouts."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lsp_exp.core.generation import Rollout
from lsp_exp.core.logprobs import token_logprobs
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import sequence_kl
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

    @property
    def token_mask(self) -> torch.Tensor:
        return self.rollout.completion_mask[:, 1:].float()


def role_terms(batch: RoleBatch, policy, *, estimator, placement: str, algorithm: AlgorithmSpec) -> RoleLoss:
    """The role's loss under the current policy. At the first epoch the policy is the playout policy:
    its log-probs become `old_logp` (ratio 1, no extra forward pass) and the advantages are fixed."""
    first = batch.advantages is None
    if first:
        logp, entropy = token_logprobs(policy, batch.rollout.input_ids, batch.rollout.attention_mask,
                                       entropy_mask=batch.token_mask, temperature=batch.rollout.temperature)
        batch.entropy = float(entropy)
    else:
        logp = token_logprobs(policy, batch.rollout.input_ids, batch.rollout.attention_mask,
                              temperature=batch.rollout.temperature)
    kl = sequence_kl(estimator, logp, batch.ref_logp, batch.token_mask)
    if first:
        batch.advantages = role_advantages(batch.rewards, batch.member_mask, kl, beta=batch.beta, placement=placement,
                                           advantage_fn=algorithm.advantage_fn)
        batch.old_logp = logp.detach()
    return role_loss(logp, batch.old_logp, batch.token_mask, batch.advantages.flatten(), batch.member_mask.flatten(),
                     kl, beta=batch.beta, placement=placement, algorithm=algorithm, max_tokens=batch.max_tokens)
