"""Token log-probabilities of sampled rows: log pi_T(y_t | y_<t) = log_softmax(z_t / T)[y_t]
(docs/method.md §9 and §15), scored the way the rows were generated (position ids from the mask, the
sampling temperature T), for the reference pass and the update.

Two things keep a pass lean, both exact (the same numbers up to float rounding; tests compare them
with the plain computation to 1e-5):
- **no full-vocabulary float32 copy**: the chosen log-prob is z_y / T - logsumexp(z / T), the
  logsumexp computed over a few hundred positions at a time (`chosen_logprobs`); the backward
  rebuilds softmax(z / T) chunk by chunk from the saved logits and logsumexp. Besides the model's
  own logits (kept in the model's dtype) a pass holds O(chunk x V) float32, whatever the batch;
- **shared prefixes**: rows that start with the same tokens (the G answers to one prompt, the N
  queries of one challenger prompt) run that prefix once; the rest of each row attends to the
  prefix's repeated KV cache (gradients flow through it). Off under gradient checkpointing in
  training, where transformers' checkpointed layers drop the cache (the tail would attend to nothing).

`LogprobOptions` (`trainer.share_prefixes`, `trainer.micro_batch_size`) is built once from the config
(`LogprobOptions.of(cfg.trainer)`) and passed to every log-prob pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lsp_exp.core.fused_head import fused_logprobs, output_layer, position_chunks
from lsp_exp.core.kv_cache import cache_of, repeat_is_exact, with_cache
from lsp_exp.core.sharding import collective_forwards
from lsp_exp.rl.diagnostics import token_entropy

MIN_SAVING = 0.25           # share a prefix only when it saves at least this fraction of the tokens


@dataclass(frozen=True)
class LogprobOptions:
    """How log-prob passes run (`trainer.share_prefixes`, `trainer.micro_batch_size`); exact either way."""

    share_prefixes: bool = True          # False: one plain forward pass over every full row
    micro_batch_size: int | None = None  # rows per forward / backward pass (None: the whole batch at once)

    @classmethod
    def of(cls, trainer) -> "LogprobOptions":
        """The options a `trainer` config node sets."""
        return cls(share_prefixes=bool(trainer.share_prefixes), micro_batch_size=trainer.micro_batch_size)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   entropy_mask: torch.Tensor | None = None, temperature: float = 1.0, score_from: int = 0,
                   options: LogprobOptions = LogprobOptions()):
    """log pi_T(token_t | tokens_<t) for t >= 1, shape [B, L - 1] (position ids follow the mask; T:
    the temperature the tokens were sampled at, `Rollout.temperature`).

    `score_from` = f: only positions f .. L - 2 are scored (log-probs of tokens f + 1 ..; those
    before are returned as 0), so a prompt that no mask counts costs no vocabulary projection. With
    `entropy_mask` [B, L - 1] (zero before f), also the mean entropy of the same tempered
    distributions over the masked positions, from the same forward pass: returns (logp, entropy).
    Rows share a prefix when `options.share_prefixes` and the model allows it (one pass over the
    rows otherwise); `options.micro_batch_size` is the caller's (`micro_batch.py`)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # One pass or two depends on the rows: not while every forward is a collective (FSDP2, sharding.py)
    share = options.share_prefixes and not _cache_dropped(model) and not collective_forwards(model) \
        and repeat_is_exact(model)   # (a cache that cannot be repeated row by row: kv_cache.py)
    split = shared_prefix(input_ids, attention_mask) if share else None
    fused = None if collective_forwards(model) else output_layer(model)   # hidden states, never the logits
    t, length = float(temperature), input_ids.shape[1]
    f = min(max(int(score_from), 0), length - 2)
    if split is None:  # the last token predicts nothing: it is not run
        first = f
        scored = _forward(model, fused, input_ids[:, :-1], attention_mask[:, :-1], position_ids[:, :-1],
                          keep=length - 1 - f, use_cache=False)[0]           # positions f .. L-2
    else:
        s, firsts, group = split
        kept = s - min(f, s - 1)  # head positions s - kept .. s - 1 (s - 1 predicts the first tail token)
        first = s - kept
        head, cache = _forward(model, fused, input_ids[firsts, :s], attention_mask[firsts, :s],
                               position_ids[firsts, :s], keep=kept, use_cache=True)
        sizes = torch.bincount(group)
        if bool((sizes == sizes[0]).all()):  # equal groups: a repeat (its backward is a cheap sum)
            cache.batch_repeat_interleave(int(sizes[0]))
        else:
            cache.batch_select_indices(group)
        scored = head[group]                                                  # positions first .. s-1
        if s < length - 1:
            tail = _forward(model, fused, input_ids[:, s:-1], attention_mask[:, :-1], position_ids[:, s:-1],
                            keep=length - 1 - s, use_cache=True, cache=cache)[0]
            scored = torch.cat([scored, tail], 1)                              # positions first .. L-2
    targets, counted = input_ids[:, first + 1:], None if entropy_mask is None else entropy_mask[:, first:]
    if fused is not None:
        chosen, entropy_sum = fused_logprobs(scored, fused[1], targets, t, counted)
    else:
        chosen = chosen_logprobs(scored, targets, t)
        entropy_sum = (None if counted is None
                       else token_entropy(scored.detach(), counted, temperature=t) * counted.sum())
    chosen = F.pad(chosen, (first, 0))
    if entropy_mask is None:
        return chosen
    return chosen, entropy_sum / entropy_mask.sum().clamp(min=1)


def _forward(model, fused, input_ids, attention_mask, position_ids, *, keep: int, use_cache: bool, cache=None):
    """(the last `keep` positions' hidden states (fused output layer) or logits, the KV cache)."""
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)
    if cache is not None:
        kwargs.update(with_cache(cache))
    if fused is not None:
        out = fused[0](**kwargs)
        return out.last_hidden_state[:, -keep:], cache_of(out) if use_cache else None
    out = model(**kwargs, logits_to_keep=keep)
    return out.logits, cache_of(out) if use_cache else None


def _cache_dropped(model) -> bool:
    """transformers' checkpointed layers run without a KV cache when they will be replayed in the
    backward (gradient checkpointing on, training mode, gradients enabled)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # a PEFT model's transformers model
    # transformers 5.2x names it is_activation_checkpointing (the old name warns); 5.17 only has the old one
    name = ("is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    checkpointed = getattr(base, name, False)
    return bool(torch.is_grad_enabled() and model.training and checkpointed)


def chosen_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T)[target] per position in float32 (float64 for float64 logits): logits
    [B, T, V], targets [B, T] -> [B, T], without a full-size float32 copy of the logits (docs/method.md §15)."""
    return _ChosenLogprob.apply(logits, targets, float(temperature))


class _ChosenLogprob(torch.autograd.Function):
    """out = z_y / T - logsumexp(z / T), and d out / d z_v = (1[v = y] - softmax(z / T)_v) / T,
    both over chunks of positions in float32; saves the logits (model dtype) and the logsumexp."""

    @staticmethod
    def forward(ctx, logits, targets, temperature):
        flat, index = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, 1)
        lse = torch.empty(flat.shape[0], dtype=_compute_dtype(logits), device=logits.device)
        chosen = torch.empty_like(lse)
        for rows in position_chunks(*flat.shape):
            z = _tempered(flat[rows], temperature)
            lse[rows] = torch.logsumexp(z, -1)
            chosen[rows] = z.gather(-1, index[rows]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return chosen.view(targets.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        flat, index = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, 1)
        g = grad_out.reshape(-1, 1).to(lse.dtype)
        grad = torch.empty_like(flat)
        for rows in position_chunks(*flat.shape):
            p = torch.exp(_tempered(flat[rows], t) - lse[rows, None])
            d = p.mul_(-g[rows]).scatter_add_(-1, index[rows], g[rows])
            grad[rows] = d.div_(t) if t != 1.0 else d
        return grad.view_as(logits), None, None


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 logits


def _tempered(z: torch.Tensor, temperature: float) -> torch.Tensor:
    z = z.to(_compute_dtype(z))  # a copy of the chunk only (or the chunk itself: never modified in place)
    return z / temperature if temperature != 1.0 else z


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(s, first row of each group, group of each row) when consecutive rows sharing their first s
    tokens (and mask) make a forward pass over (groups x s) + (rows x (L - s)) tokens at least
    `MIN_SAVING` cheaper than over rows x L; None otherwise. 1 <= s <= L - 1."""
    rows, length = input_ids.shape
    if rows < 2 or length < 3:
        return None
    same = (input_ids[1:] == input_ids[:-1]) & (attention_mask[1:] == attention_mask[:-1])
    common = same.long().cumprod(-1).sum(-1).clamp(max=length - 1)   # [rows - 1] prefix shared with the row above
    best, best_cost = None, rows * length * (1 - MIN_SAVING)
    for s in torch.unique(common).tolist():
        if s < 1:
            continue
        cost = (1 + int((common < s).sum())) * s + rows * (length - s)
        if cost <= best_cost:
            best, best_cost = s, cost
    if best is None:
        return None
    starts = torch.cat([common.new_ones(1, dtype=torch.bool), common < best])
    return best, starts.nonzero().squeeze(-1), starts.long().cumsum(0) - 1
