"""Rows in micro-batches: a forward (and backward) pass over at most `LogprobOptions.micro_batch_size`
rows (`trainer.micro_batch_size`) at a time, so activations and logits are bounded by the micro-batch whatever N x G is.

Each micro-batch is cut to the columns where any of its rows has a real token (generation parts are
padded to the widest part, `generation.join_rollouts`) and scored from its first completion token
on (the prompt gets no vocabulary projection); its log-probs are padded back to the full width with
zeros, positions that no mask counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lsp_exp.core.generation import Rollout
from lsp_exp.core.logprobs import LogprobOptions, token_logprobs


def row_chunks(rows: int, size: int | None) -> list[slice]:
    """Consecutive slices of at most `size` rows covering 0 .. rows - 1 (one slice when size is None)."""
    if not size or size >= rows:
        return [slice(0, rows)]
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def chunk_logprobs(model, rollout: Rollout, rows: slice, entropy_mask: torch.Tensor | None = None,
                   options: LogprobOptions = LogprobOptions()):
    """log pi_T of rows `rows` of the rollout, [rows, L - 1] (token_logprobs on the columns the rows
    use, zeros elsewhere). With `entropy_mask` [B, L - 1]: (logp, entropy sum over the masked positions)."""
    ids, mask = rollout.input_ids[rows], rollout.attention_mask[rows]
    used = mask.any(0).nonzero().squeeze(-1)
    first, last = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, ids.shape[1])
    last = max(last, first + 2)  # at least one predicted position
    width = ids.shape[1] - 1
    scored = rollout.completion_mask[rows, first + 1:last].any(0).nonzero()   # logp[:, j] scores token j + 1
    out = token_logprobs(model, ids[:, first:last], mask[:, first:last], temperature=rollout.temperature,
                         entropy_mask=None if entropy_mask is None else entropy_mask[rows, first:last - 1],
                         score_from=int(scored[0]) if scored.numel() else 0, options=options)
    logp = out if entropy_mask is None else out[0]
    logp = F.pad(logp, (first, width - (last - 1)))   # logp[:, t] scores token t + 1
    if entropy_mask is None:
        return logp
    return logp, out[1] * entropy_mask[rows, first:last - 1].sum()


@torch.no_grad()
def logprobs_in_chunks(model, rollout: Rollout, options: LogprobOptions = LogprobOptions()) -> torch.Tensor:
    """log pi_T of every row [B, L - 1], at most `options.micro_batch_size` rows per forward pass (the
    reference pass)."""
    chunks = row_chunks(rollout.input_ids.shape[0], options.micro_batch_size)
    return torch.cat([chunk_logprobs(model, rollout, rows, options=options) for rows in chunks])
