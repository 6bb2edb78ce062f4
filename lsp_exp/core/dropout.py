"""Dropout off in the policy, so that sampling, the reference pass and the update all see one
distribution (docs/method.md §9): the policy samples and scores in training mode, where a dropout
layer (of the model or of a LoRA adapter) would perturb every forward differently, and the
adapter-disabled reference would run without the adapter's dropout. TRL's policy does the same.

Two kinds are switched off: `torch.nn.Dropout*` modules (p = 0) and the float rates that attention
modules pass to their attention function in training mode (attributes whose name holds "dropout",
e.g. Llama's `attention_dropout`). The model's config is left as it is (the saved model keeps it).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def disable_dropout(model) -> dict[str, float]:
    """Every dropout of `model` set to 0; returns {what: the largest rate turned off} and logs one
    line when any was above 0."""
    found: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            key = _short(name, type(module).__name__)
            found[key] = max(found.get(key, 0.0), float(module.p))
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if "dropout" in key.lower() and isinstance(value, float) and value > 0:
                found[key] = max(found.get(key, 0.0), value)
                setattr(module, key, 0.0)
    if found:
        rates = ", ".join(f"{k} {v:g}" for k, v in sorted(found.items()))
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        log.warning("%s: dropout turned off (%s): sampling, the reference pass and the update score one "
                    "distribution", type(base).__name__, rates)
    return found


def _short(name: str, default: str) -> str:
    """The module's own name without layer numbers or a LoRA adapter's name: `lora_dropout`, `attn_dropout`."""
    parts = [p for p in name.split(".") if not p.isdigit() and p != "default"]
    return parts[-1] if parts else default
