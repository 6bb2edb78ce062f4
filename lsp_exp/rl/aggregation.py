"""Loss aggregation: per-token losses l [B, T] and a token mask m [B, T] -> one scalar.

With T_i = sum_t m_it the counted tokens of sequence i and B' the number of sequences with
T_i > 0 (sequences with no counted token are left out of every mean, never produce NaN; padding
positions are zeroed with `where`, so a NaN/inf there cannot leak into the loss):
- seq_mean_token_mean:      1/B' sum_i (1/T_i) sum_t l_it        GRPO (Shao et al. 2024)
- token_mean:               sum_it l_it / sum_i T_i               DAPO (Yu et al. 2025), TRL "bnpo"-like
- seq_mean_token_sum_norm:  1/B' sum_i sum_t l_it / max_tokens    Dr. GRPO (Liu et al. 2025)
- seq_mean_token_sum:       1/B' sum_i sum_t l_it                 LSP eq. 4-5 (sequence-level log pi)
All take (loss [B, T], mask [B, T], max_tokens=None); only seq_mean_token_sum_norm needs max_tokens,
a constant (e.g. the generation's max_new_tokens), so the scale does not depend on the batch.

Each is linear in l once the mask is fixed, so the policy losses aggregate as sum_t W_t l_t with the
token weights W = d agg(l, mask) / d l (`token_weights`, `weighted_sum`; docs/method.md §15): the
same gradient whether the batch is scored at once or in micro-batches.
"""
from __future__ import annotations

import torch

from lsp_exp.rl.registry import AGGREGATIONS, get, register


def _token_sums(loss: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_t l_it [B], T_i [B], B' scalar >= 1)."""
    m = mask.to(loss.dtype)
    sums = (torch.where(m != 0, loss, torch.zeros_like(loss)) * m).sum(-1)
    tokens = m.sum(-1)
    return sums, tokens, (tokens > 0).sum().clamp(min=1).to(loss.dtype)


@register(AGGREGATIONS, "seq_mean_token_mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    sums, tokens, n_seq = _token_sums(loss, mask)
    return (sums / tokens.clamp(min=1)).sum() / n_seq


@register(AGGREGATIONS, "token_mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    sums, tokens, _ = _token_sums(loss, mask)
    return sums.sum() / tokens.sum().clamp(min=1)


@register(AGGREGATIONS, "seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    if max_tokens is None or max_tokens <= 0:
        raise ValueError("seq_mean_token_sum_norm (Dr. GRPO) needs max_tokens, a positive constant "
                         "such as the max completion length")
    sums, _, n_seq = _token_sums(loss, mask)
    return sums.sum() / (n_seq * max_tokens)


@register(AGGREGATIONS, "seq_mean_token_sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    sums, _, n_seq = _token_sums(loss, mask)
    return sums.sum() / n_seq


def token_weights(aggregation: str, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    """W = d agg(l, mask) / d l [B, T] (docs/method.md §15): the weight of each token's loss in the
    batch's aggregate, taken by autograd (so sum_t W_t l_t has exactly the gradient of agg), and
    checked to reproduce agg on a random l (an aggregation that is not linear has no such weights)."""
    agg = get(AGGREGATIONS, aggregation, "aggregation")
    mask = mask if mask.is_floating_point() else mask.float()
    probe = torch.zeros_like(mask, requires_grad=True)
    with torch.enable_grad():
        (weights,) = torch.autograd.grad(agg(probe, mask, max_tokens), probe)
    check = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)).to(mask)
    if not torch.allclose(agg(check, mask, max_tokens), (weights * check).sum(), rtol=1e-4, atol=1e-6):
        raise ValueError(f"aggregation {aggregation!r} is not linear in the per-token losses, so it has no token "
                         "weights W = d agg / d l to aggregate with")
    return weights


def weighted_sum(loss: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t W_t l_t over the counted tokens (mask != 0; an uncounted NaN/inf cannot leak)."""
    return (torch.where(mask != 0, loss, torch.zeros_like(loss)) * weights).sum()
