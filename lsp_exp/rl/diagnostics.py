"""Detached diagnostics of an update (for logging; no gradient flows through them)."""
from __future__ import annotations

import torch

from lsp_exp.rl.advantages import masked_group_std


@torch.no_grad()
def token_entropy(logits: torch.Tensor, mask: torch.Tensor, chunk: int = 1024,
                  temperature: float = 1.0) -> torch.Tensor:
    """Mean over counted tokens of H(p_t) = -sum_v p_tv log p_tv = logsumexp(z_t) - sum_v p_tv z_tv,
    with z_t = logits_t / temperature (the distribution that was sampled).

    logits [B, T, V], mask [B, T]. Computed in float32 over chunks of `chunk` counted positions, so
    the extra memory is O(chunk * V) whatever the batch and dtype of the logits. 0 if nothing counts.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    index = mask.reshape(-1).bool().nonzero().squeeze(-1)
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for start in range(0, index.numel(), chunk):
        z = rows[index[start:start + chunk]].float()       # indexing copies: the only copy of the chunk
        if temperature != 1.0:
            z.div_(temperature)
        z.clamp_(min=torch.finfo(torch.float32).min)        # -inf logits: p = 0 and p * z = 0, not NaN
        p = torch.softmax(z, -1)
        total += (torch.logsumexp(z, -1) - (p * z).sum(-1)).sum()
    return total / max(index.numel(), 1)


@torch.no_grad()
def zero_std_fraction(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Among groups with >= 1 valid member, the fraction whose valid rewards are all equal (max == min):
    those groups give a zero group-relative advantage, i.e. no learning signal. 0 if no group counts."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    rewards = rewards.float()
    inf = torch.full_like(rewards, float("inf"))
    high = torch.where(mask, rewards, -inf).amax(-1)
    low = torch.where(mask, rewards, inf).amin(-1)
    counted = mask.any(-1)
    return ((high == low) & counted).sum().float() / counted.sum().clamp(min=1).float()


@torch.no_grad()
def advantage_stats(advantages: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the advantages over the valid entries; std unbiased (n - 1), 0 when n < 2."""
    mask = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask.bool()
    flat, m = advantages.flatten(), mask.flatten()
    mean = (flat * m).sum() / m.sum().clamp(min=1)
    return mean, masked_group_std(flat, m).squeeze(-1)
