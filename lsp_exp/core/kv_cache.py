"""The KV cache's name in transformers' forward and outputs: `cache` from 5.2x on (`past_key_values`
still works there, with a deprecation warning per process, and goes in 5.40), `past_key_values`
before (the GPU image's 5.17). Detected once from the output class.

And whether the cache can be repeated row by row (`repeat_is_exact`): generation repeats a prompt's
cache for its G copies and log-prob passes repeat a shared prefix's. Some caches keep states their
`batch_repeat_interleave` / `batch_select_indices` leave out (transformers 5.25's hybrid Mamba layers:
Falcon-H1's convolution and SSM states), others keep none (RecurrentGemma); checked once per model by
running it, those then prefill every copy and share no prefix."""
from __future__ import annotations

import logging

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from lsp_exp.core.probe import mode, network_tolerance, probe_ids, wide

NAME = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"
VERDICT = "_lsp_cache_repeat_exact"   # the check's result, kept on the transformers model
log = logging.getLogger(__name__)


def cache_of(output):
    """The KV cache a forward with use_cache=True returned."""
    return getattr(output, NAME)


def with_cache(cache) -> dict:
    """The keyword argument that passes `cache` to a forward."""
    return {NAME: cache}


def repeat_is_exact(model) -> bool:
    """Whether a forward after the cache's rows are repeated or selected gives the logits of running
    the repeated rows in full (checked the first time per model, the verdict kept on it; one log line
    when not). Every rank checks the same: call it where forwards are not collectives."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    verdict = base.__dict__.get(VERDICT)
    if verdict is None:
        diff, tol = repeat_difference(model)
        verdict = diff <= tol   # NaN: the cache could not be repeated
        setattr(base, VERDICT, verdict)
        if not verdict and (not (torch.distributed.is_available() and torch.distributed.is_initialized())
                            or torch.distributed.get_rank() == 0):
            shown = f"differs by {diff:.3g} nats (tolerance {tol:.2g})" if diff == diff else "fails"
            log.warning("%s: decoding after its KV cache is repeated row by row %s: generation prefills every copy "
                        "of a prompt and log-prob passes share no prefix", type(base).__name__, shown)
    return verdict


@torch.no_grad()
def repeat_difference(model) -> tuple[float, float]:
    """(largest |log-prob| difference between one step after a cache repeated x2 or row-selected and the
    full forward of those rows, the tolerance); NaN when the model returns no cache or repeating fails."""
    prompts = torch.stack([probe_ids(model, 4, 1), probe_ids(model, 4, 2)])
    with mode(model, training=False):
        try:
            steps, logits = [], []
            for rows, pick in ((torch.tensor([0, 0, 1, 1]), None), (torch.tensor([1, 0, 1]), "select")):
                rows = rows.to(prompts.device)
                step = probe_ids(model, len(rows), 3)
                cache = cache_of(model(input_ids=prompts, use_cache=True))
                if pick is None:
                    cache.batch_repeat_interleave(2)
                else:
                    cache.batch_select_indices(rows)
                logits.append(wide(model(input_ids=step[:, None], use_cache=True, **with_cache(cache)).logits[:, -1]))
                steps.append((rows, step))
        except Exception:  # noqa: BLE001  (no cache, or one that cannot be repeated: not exact)
            return float("nan"), 0.0
        diff, tol = 0.0, 0.0
        for (rows, step), decoded in zip(steps, logits, strict=True):
            full = wide(model(input_ids=torch.cat([prompts[rows], step[:, None]], 1)).logits[:, -1])
            diff = max(diff, float((decoded.log_softmax(-1) - full.log_softmax(-1)).abs().max()))
            tol = max(tol, network_tolerance(model, full))
    return diff, tol
