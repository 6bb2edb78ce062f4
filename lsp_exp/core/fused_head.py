"""Log-probs straight from the last hidden states: the output layer (lm_head) applied a few hundred
positions at a time, so the [rows, positions, vocabulary] logits never exist (docs/method.md §15).

    z = h W^T (+ b),  log pi_T(y) = z_y / T - logsumexp(z / T)
    d/dz_v = (1[v = y] - softmax(z / T)_v) / T,   d/dh = dz W,   d/dW = dz^T h,   d/db = sum dz

The backward recomputes each chunk's logits from the saved hidden states and logsumexp. Besides
the hidden states a pass holds O(chunk x V) float32. Used for causal LMs whose logits are exactly
lm_head(last hidden state), which is decided by running both paths once per model (`fused_is_exact`:
a soft cap, a scale or a multiplier of the logits shows there, whatever the config calls it); others,
and a policy sharded with FSDP2, take the logits path (`logprobs.chosen_logprobs`).
"""
from __future__ import annotations

import logging

import torch

from lsp_exp.core.probe import mode, probe_ids, tolerance, wide
from lsp_exp.core.sharding import collective_forwards

CHUNK_ELEMENTS = 2 ** 25    # float32 logits per chunk of positions (128 MB; a pass holds at most two)
PROBE_TOKENS = 16           # positions the check compares, each at 3 targets (next token, likeliest, least likely)
ULPS = 4                    # tolerance: units of rounding at the largest logit (core/probe.py:tolerance)
VERDICT = "_lsp_fused_head_exact"   # the check's result, kept on the transformers model
log = logging.getLogger(__name__)


def output_layer(model):
    """(the decoder that returns the last hidden states, the output Linear) when the model's logits
    are exactly that Linear of the decoder's output, as checked the first time this model is asked
    (`fused_is_exact`, the verdict kept on it); None otherwise, and while every forward of the model
    is a collective (FSDP2, not `gathered`: the check could not run the same on every rank)."""
    if collective_forwards(model):
        return None
    found = _decoder_and_head(model)
    if found is None:
        return None
    base = _base(model)
    verdict = base.__dict__.get(VERDICT)
    if verdict is None:
        verdict = fused_is_exact(model, *found)
        setattr(base, VERDICT, verdict)
    return found if verdict else None


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model   # a PEFT model's own


def _decoder_and_head(model):
    """(decoder, output Linear) when the model has both, whatever its logits are made of; None otherwise."""
    base = _base(model)
    get_decoder, head = getattr(base, "get_decoder", None), base.get_output_embeddings() \
        if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    decoder = get_decoder()
    return (decoder, head) if decoder is not None and decoder is not base else None


def fused_is_exact(model, decoder, head) -> bool:
    """Whether the fused path's log-probs equal log_softmax(model(x).logits) (`fused_difference`);
    one log line (the architecture, the difference) when they do not."""
    diff, tol, reason = fused_difference(model, decoder, head)
    exact = diff <= tol   # NaN: not exact
    if not exact:
        reason = reason or (f"the fused output layer's log-probs differ from the logits' by {diff:.3g} nats on "
                            f"{PROBE_TOKENS} probe tokens (tolerance {tol:.2g}): its logits are not "
                            "lm_head(last hidden state)")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_rank() == 0:
            log.warning("%s: log-probs from the model's logits (the plain path): %s",
                        type(_base(model)).__name__, reason)
    return exact


@torch.no_grad()
def fused_difference(model, decoder, head) -> tuple[float, float, str | None]:
    """(the largest |fused - plain| log-prob, the tolerance, why the fused path could not run or None)
    on PROBE_TOKENS fixed tokens, at 3 targets each (the next token, the likeliest, the least likely).
    The tolerance is ULPS units of rounding of the dtype the forward computes in (core/probe.py) at the
    largest logit. Eval mode, in the caller's autocast context."""
    ids = probe_ids(model, PROBE_TOKENS)[None]
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  position_ids=torch.arange(PROBE_TOKENS, device=ids.device)[None], use_cache=False)
    reason, diff = None, float("nan")
    with mode(model, training=False):
        z = wide(model(**kwargs).logits)[0]                                     # [P, V]
        targets = torch.stack([ids[0].roll(-1), z.argmax(-1), z.argmin(-1)])    # [3, P]
        plain = z.log_softmax(-1).gather(-1, targets.t()).t()
        try:
            hidden = decoder(**kwargs).last_hidden_state[0]
            diff = float((fused_logprobs(hidden.expand(3, *hidden.shape), head, targets)[0] - plain).abs().max())
        except Exception as err:  # noqa: BLE001  (a decoder that cannot run alone: the logits path)
            first_line = str(err).splitlines()[0][:200] if str(err) else ""
            reason = f"its decoder does not run alone ({type(err).__name__}: {first_line})"
    return diff, tolerance(model, z, ULPS), reason


def fused_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, temperature: float = 1.0,
                   entropy_mask: torch.Tensor | None = None):
    """(log pi_T(target) [B, T] in float32, the entropy summed over `entropy_mask` or None) from the
    last hidden states [B, T, h] and the output layer."""
    want_entropy = entropy_mask is not None
    mask = entropy_mask.reshape(-1).bool() if want_entropy else torch.zeros(0, dtype=torch.bool)
    chosen, entropy = _FusedHeadLogprob.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias,
                                              targets.reshape(-1), float(temperature), mask)
    return chosen.view(targets.shape), (entropy if want_entropy else None)


class _FusedHeadLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, entropy_mask):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(hidden.dtype)                     # what lm_head computes in (autocast: the activations' dtype)
        b = None if bias is None else bias.to(hidden.dtype)
        lse = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
        chosen = torch.empty_like(lse)
        entropy = torch.zeros((), dtype=dtype, device=hidden.device)
        for rows in position_chunks(hidden.shape[0], weight.shape[0]):
            z = _logits(hidden[rows], w, b, dtype, temperature)
            lse[rows] = torch.logsumexp(z, -1)
            chosen[rows] = z.gather(-1, targets[rows, None]).squeeze(-1) - lse[rows]
            if entropy_mask.numel() and bool(entropy_mask[rows].any()):  # H = lse - sum_v p_v z_v, counted positions
                p = torch.sub(z, lse[rows, None]).exp_()                     # one more chunk, then in place
                entropy += (lse[rows] - p.mul_(z).sum(-1))[entropy_mask[rows]].sum()
                del p
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), targets, lse)
        ctx.temperature, ctx.has_bias = temperature, bias is not None
        ctx.mark_non_differentiable(entropy)
        return chosen, entropy

    @staticmethod
    def backward(ctx, grad_chosen, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        t, dtype = ctx.temperature, lse.dtype
        w = weight.to(hidden.dtype)
        b = bias.to(hidden.dtype) if ctx.has_bias else None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        g = grad_chosen.to(dtype)
        for rows in position_chunks(hidden.shape[0], weight.shape[0]):
            z = _logits(hidden[rows], w, b, dtype, t)   # a fresh chunk: everything below is in place
            dz = z.sub_(lse[rows, None]).exp_().mul_(-g[rows, None])
            dz.scatter_add_(-1, targets[rows, None], g[rows, None])
            if t != 1.0:
                dz.div_(t)
            if need_h:
                grad_h[rows] = dz.to(hidden.dtype) @ w
            if need_w:
                grad_w.addmm_(dz.t(), hidden[rows].to(dtype))   # in place: no second V x h buffer
            if need_b:
                grad_b += dz.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None)


def _logits(hidden, w, b, dtype, temperature):
    z = torch.nn.functional.linear(hidden, w, b).to(dtype)   # fresh (or its float32 copy): scaled in place
    return z.div_(temperature) if temperature != 1.0 else z


def position_chunks(rows: int, vocab: int):
    """Slices of positions whose [chunk, vocab] float32 logits hold CHUNK_ELEMENTS (both log-prob paths)."""
    size = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, rows, size):
        yield slice(start, start + size)
