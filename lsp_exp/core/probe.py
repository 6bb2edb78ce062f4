"""What the checks that run a model on a few tokens share (core/fused_head.py, core/kv_cache.py,
core/conformance.py): fixed probe tokens, a mode for the duration, and a tolerance that follows the
dtype the forward computes in.

    tolerance = ulps x max(1, largest |logit|) x (eps(coarsest dtype) + sqrt(h) x eps(float32)), at most `cap`

The coarsest dtype is the weights' or, under autocast, the autocast dtype; float32 matmuls on CUDA at
TF32 ('high') or bfloat16 ('medium') precision count as such. The second term is a float32 sum over the
hidden width h summed in another order (another batch shape, another kernel), which matters in float32
only. For one matmul (the output layer, 4 ulps) that is about 1e-5 nats at logits of 20 and h = 32, 5e-4
at h = 3072, half a nat in bfloat16; for a whole network (64 ulps) 16 times more, at most 1 nat. A
transform of the logits, or pad tokens that leak into a state, differ by far more.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

WHOLE_NETWORK_ULPS, WHOLE_NETWORK_CAP = 64, 1.0


def probe_ids(model, length: int, seed: int = 0) -> torch.Tensor:
    """`length` fixed token ids of the model's vocabulary (a different sequence per seed), on its device."""
    vocab, device = model.get_input_embeddings().num_embeddings, next(model.parameters()).device
    return (torch.arange(length, device=device) * 7919 + 104729 * seed + 11).remainder(vocab)


def wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32 (float64 ones as they are) for comparing log-probs."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def rounding(model) -> float:
    """The unit of rounding (eps) of the coarsest dtype the model's forward computes in now."""
    device = next(model.parameters()).device
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if torch.is_autocast_enabled(device.type):
        dtypes.add(torch.get_autocast_dtype(device.type))
    eps = max(torch.finfo(d).eps for d in dtypes)
    if device.type == "cuda" and torch.float32 in dtypes:
        eps = max(eps, {"highest": 0.0, "high": 2.0 ** -10, "medium": 2.0 ** -7}[torch.get_float32_matmul_precision()])
    return eps


def tolerance(model, logits: torch.Tensor, ulps: float, cap: float = float("inf")) -> float:
    """ulps units of rounding (and of a float32 sum over the hidden width) at the largest |logit|
    (at least 1), at most `cap` nats."""
    width = model.get_input_embeddings().embedding_dim
    unit = rounding(model) + width ** 0.5 * torch.finfo(torch.float32).eps
    return min(cap, ulps * unit * max(1.0, float(wide(logits.detach()).abs().max())))


def network_tolerance(model, logits: torch.Tensor) -> float:
    """The tolerance of a comparison of two forwards of the whole network (batched and alone, cached and not)."""
    return tolerance(model, logits, WHOLE_NETWORK_ULPS, WHOLE_NETWORK_CAP)


@contextmanager
def mode(model, training: bool = False):
    """Every submodule in training (or eval) mode for the duration, each one's own mode restored after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, was in saved:
            m.training = was
