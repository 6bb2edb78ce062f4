"""Log-probs straight from the last hidden states: the output layer (lm_head) applied a few hundred
positions at a time, so the [rows, positions, vocabulary] logits never exist (docs/method.md §15).

    z = h W^T (+ b),  log pi_T(y) = z_y / T - logsumexp(z / T)
    d/dz_v = (1[v = y] - softmax(z / T)_v) / T,   d/dh = dz W,   d/dW = dz^T h,   d/db = sum dz

The backward recomputes each chunk's logits from the saved hidden states and logsumexp. Besides
the hidden states a pass holds O(chunk x V) float32. Used for causal LMs whose logits are exactly
lm_head(last hidden state) (no soft-capping or scaling); others, and a policy sharded with FSDP2,
take the logits path (`logprobs.chosen_logprobs`).
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 2 ** 25    # float32 logits per chunk of positions (128 MB; a pass holds at most two)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def output_layer(model):
    """(the decoder that returns the last hidden states, the output Linear) when the model's logits
    are exactly that Linear of the decoder's output; None otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # a PEFT model
    get_decoder, head = getattr(base, "get_decoder", None), base.get_output_embeddings() \
        if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    config = getattr(base, "config", None)
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in LOGIT_TRANSFORMS):
        return None
    decoder = get_decoder()
    return (decoder, head) if decoder is not None and decoder is not base else None


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
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
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
                grad_w += dz.t() @ hidden[rows].to(dtype)
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
