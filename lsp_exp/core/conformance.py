"""Whether the policy's architecture trains correctly here, decided at start by running it on a few
tokens, not by a list of names (docs/method.md §15, "Which architectures"):

- **padding and shared prefixes**: rows scored together by `logprobs.token_logprobs` (one
  left-padded, three sharing a prefix) get the log-probs of each row run alone, with prefix sharing
  on and off, and no gradient reaches a pad position;
- **decoding with the KV cache** as `generation._sample` does (a prefill of left-padded prompts, the
  cache repeated per copy or every copy prefilled, `kv_cache.repeat_is_exact`, then one step) gives
  the logits of the full forward, so generation samples what the update scores;
- **training mode**: the forward equals eval mode's (dropout is off since load, core/dropout.py; a
  noise that remains shows here);
- **the output layer**: the fused path when it is exact, else the logits path (core/fused_head.py,
  logged in one line);
- **`generation_config.min_new_tokens`**: refused (core/generation.py).

A failure is a ModelSetupError of one line naming the model, its class and what differs; the
tolerance is `probe.network_tolerance` (about 1e-3 nats in float32 for a tiny model, 1e-2 for a 3B one;
for the pad positions' gradient, relative to the real positions', 64 units of rounding: 8e-6 in float32).
"""
from __future__ import annotations

import torch

from lsp_exp.core.fused_head import output_layer
from lsp_exp.core.generation import check_min_new_tokens
from lsp_exp.core.kv_cache import cache_of, repeat_is_exact, with_cache
from lsp_exp.core.logprobs import LogprobOptions, token_logprobs
from lsp_exp.core.probe import WHOLE_NETWORK_ULPS, mode, network_tolerance, probe_ids, rounding, wide
from lsp_exp.core.special_tokens import ModelSetupError

PREFIX, TAIL, PAD = 8, 4, 4
CHECKS = (  # (key, what is compared, what goes wrong when it differs)
    ("padding", "a left-padded row's log-probs and the row's alone",
     "its layers do not honour the attention mask: padded rows would be scored wrongly"),
    ("padding_gradient", "the gradient at a left-padded row's pad positions (relative to its real positions') and 0",
     "pad tokens would take part in the update"),
    ("padding+prefixes", "rows scored with a shared prefix (its KV cache repeated) and each row alone",
     "set trainer.share_prefixes=false"),
    ("cache", "decoding with the KV cache and the full forward",
     "generation would sample another distribution than the one scored"),
    ("training_mode", "the forward in training mode and in eval mode",
     "something random is on in training mode (a dropout not switched off, a router's jitter noise): sampling and "
     "scoring would differ; set it to 0 in config.json"),
)


def check_architecture(model, tokenizer, name: str) -> dict[str, float | bool]:
    """Run the checks above on `model` (eval mode for the duration, no gradients); returns {check:
    largest difference in nats, "tolerance", "fused": whether the fused output layer is used,
    "repeat_cache": whether caches are repeated}, or raises ModelSetupError. Run it before sharding
    (every rank makes the same forwards)."""
    check_min_new_tokens(model, name)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    found: dict[str, float | bool] = {}
    with torch.no_grad(), mode(model, training=False):
        rows = [torch.cat([probe_ids(model, PREFIX), probe_ids(model, TAIL, k)]) for k in (1, 2, 3)]
        rows.append(probe_ids(model, PREFIX + TAIL - PAD, 4))
        logits = model(input_ids=rows[0][None]).logits
        found["tolerance"] = network_tolerance(model, logits)
        found["padding+prefixes"] = _padding(model, rows, pad, share=True)
        found["padding"] = _padding(model, rows, pad, share=False)
        found["padding_gradient"] = _padding_gradient(model, rows, pad)
        found["gradient_tolerance"] = WHOLE_NETWORK_ULPS * rounding(model)   # (a ratio)
        found["repeat_cache"] = repeat_is_exact(model)
        found["cache"], failure = _cache(model, [probe_ids(model, PREFIX, 5), probe_ids(model, PREFIX - PAD, 6)],
                                         probe_ids(model, 4, 7), pad, repeat=found["repeat_cache"])
        with mode(model, training=True):
            train = model(input_ids=rows[0][None]).logits
        found["training_mode"] = float((wide(train) - wide(logits)).abs().max())
        for key, what, why in CHECKS:
            value, tol = found[key], found["gradient_tolerance" if key == "padding_gradient" else "tolerance"]
            if not value <= tol:   # NaN (it could not run) fails too
                unit = "" if key == "padding_gradient" else " nats"
                shown = (f"differ by {value:.3g}{unit} (tolerance {tol:.2g})" if value == value
                         else f"could not run ({failure})")
                end = "" if key == "padding+prefixes" else ": this architecture cannot be trained here"
                raise ModelSetupError(f"model {name!r} ({type(_base(model)).__name__}): {what} {shown}; {why}{end}")
        found["fused"] = output_layer(model) is not None
    return found


def _padding(model, rows, pad: int, share: bool) -> float:
    """Largest |batched - alone| log-prob over the real positions (temperature 1)."""
    ids, mask = _left_padded(rows, pad)
    width = ids.shape[1]
    batched = token_logprobs(model, ids, mask, options=LogprobOptions(share_prefixes=share))
    diff = 0.0
    for i, row in enumerate(rows):
        alone = wide(model(input_ids=row[None]).logits[0, :-1]).log_softmax(-1).gather(-1, row[1:, None])[:, 0]
        diff = max(diff, float((batched[i, width - len(row):] - alone).abs().max()))
    return diff


def _padding_gradient(model, rows, pad: int) -> float:
    """max |d(sum of the real positions' log-probs) / d(pad positions' input embeddings)| over the same
    at the real positions: 0 when pad tokens take no part (every masked architecture here), > 0 when
    they leak into the computation (RecurrentGemma's convolution, whatever the log-probs' values)."""
    ids, mask = _left_padded(rows, pad)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.enable_grad():
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        logp = wide(model(inputs_embeds=embeds, attention_mask=mask,
                          position_ids=position).logits[:, :-1]).log_softmax(-1)
        counted = (mask[:, :-1] * mask[:, 1:]).bool()
        (grad,) = torch.autograd.grad(logp.gather(-1, ids[:, 1:, None])[..., 0][counted].sum(), embeds)
    return float(grad[mask == 0].abs().max()) / max(float(grad[mask == 1].abs().max()), 1e-30)


def _left_padded(rows, pad: int):
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r.new_full((width - len(r),), pad), r]) for r in rows])
    mask = torch.stack([torch.cat([r.new_zeros(width - len(r)), r.new_ones(len(r))]) for r in rows])
    return ids, mask


def _cache(model, prompts, steps, pad: int, repeat: bool) -> tuple[float, str]:
    """(largest |decoded - full| log-prob of one step after a prefill of left-padded prompts, each
    with 2 copies (generation._sample's calls), ""); (NaN, the error) when the model returns no usable cache."""
    ids, mask = _left_padded(prompts, pad)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    if not repeat:
        ids, mask, position = (t.repeat_interleave(2, 0) for t in (ids, mask, position))
    try:
        cache = cache_of(model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True,
                               logits_to_keep=1))
        if repeat:
            cache.batch_repeat_interleave(2)
            mask, position = mask.repeat_interleave(2, 0), position.repeat_interleave(2, 0)
        out = model(input_ids=steps[:, None], attention_mask=torch.cat([mask, mask.new_ones(len(mask), 1)], 1),
                    position_ids=position[:, -1:] + 1, use_cache=True, **with_cache(cache))
    except Exception as err:  # noqa: BLE001  (no cache, or one that cannot continue: generation cannot run)
        return float("nan"), f"{type(err).__name__}: {str(err).splitlines()[0][:150] if str(err) else ''}"
    decoded = wide(out.logits[:, -1]).log_softmax(-1)
    diff = 0.0
    for i in range(len(steps)):
        full = wide(model(input_ids=torch.cat([prompts[i // 2], steps[i:i + 1]])[None]).logits[0, -1])
        diff = max(diff, float((decoded[i] - full.log_softmax(-1)).abs().max()))
    return diff, ""


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model
