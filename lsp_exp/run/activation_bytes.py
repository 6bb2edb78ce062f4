"""Measured activation memory: the bytes autograd saves for the backward per token and decoder layer
of a real-width Llama, counted with `torch.autograd.graph.saved_tensors_hooks` on a CPU (random
weights, nothing downloaded). It checks `memory.py`'s per-token formula (tests/run/test_memory_estimate.py,
experiments/memory_estimate/).

A one-layer model runs a left-padded batch (so attention runs with a mask, as in training), its
embeddings' output requiring grad as a later layer's input does; the tensors saved inside the
layer are counted once per storage, leaving out those given to every layer (the rotary tables,
the mask). The slope between two token counts leaves out what does not grow with tokens (weights,
autocast's bf16 copies of them).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# (LoRA, compute dtype) of the precision policy's configurations (core/precision.py)
CONFIGS = {
    "bf16 full": (False, torch.bfloat16),     # float32 weights under bf16 autocast
    "bf16 LoRA": (True, torch.bfloat16),      # bf16 frozen base, float32 adapter, bf16 autocast
    "32-true full": (False, torch.float32),
    "32-true LoRA": (True, torch.float32),
}


def llama_layers(hidden: int, intermediate: int, heads: int, kv_heads: int, layers: int = 1):
    """A randomly initialised Llama of `layers` real-width decoder layers (a 256-token vocabulary), float32."""
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def with_lora(model, rank: int = 16, targets=LORA_TARGETS):
    """`model` under a LoRA adapter (peft, as core/models.py builds it), the adapter in float32."""
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                            target_modules=list(targets), task_type="CAUSAL_LM"))


def base_in(model, dtype: torch.dtype):
    """The frozen base of a LoRA `model` cast to `dtype`, the adapter kept in float32 (in place)."""
    for param in model.parameters():
        param.data = param.data.to(torch.float32 if param.requires_grad else dtype)
    return model


def saved_bytes(model, rows: int, tokens: int, compute: torch.dtype, device: str = "cpu") -> int:
    """Bytes autograd saves inside the model's last decoder layer, for `rows` left-padded rows of
    `tokens` positions (the first row 3 tokens shorter), leaving out the tensors every layer is
    given (the rotary tables, the mask)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer = base.model.layers[-1]
    ids = torch.randint(0, base.config.vocab_size, (rows, tokens), device=device)
    mask = torch.ones(rows, tokens, dtype=torch.long, device=device)
    mask[0, :3] = 0
    seen: dict[int, int] = {}        # storage pointer: bytes
    shared: set[int] = set()
    inside = [False]

    def enter(_, args, kwargs):
        inside[0] = True
        for value in [*args[1:], *kwargs.values()]:
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    shared.add(t.untyped_storage().data_ptr())

    def pack(t: torch.Tensor):
        if inside[0]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def needing_grad(_, __, out: torch.Tensor):   # the layer's input requires grad, as a later layer's does
        return out if out.requires_grad else out.detach().requires_grad_(True)

    handles = [layer.register_forward_pre_hook(enter, with_kwargs=True),
               layer.register_forward_hook(lambda *_: inside.__setitem__(0, False)),
               base.model.embed_tokens.register_forward_hook(needing_grad)]
    autocast = torch.autocast(torch.device(device).type, dtype=compute) if compute != torch.float32 else nullcontext()
    try:
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = base.model(input_ids=ids, attention_mask=mask).last_hidden_state   # its graph keeps them alive
    finally:
        for handle in handles:
            handle.remove()
    del out
    return sum(n for ptr, n in seen.items() if ptr not in shared)


def bytes_per_token(model, compute: torch.dtype, rows: int = 2, tokens: tuple[int, int] = (16, 32),
                    device: str = "cpu") -> float:
    """The saved bytes per token of one decoder layer: the slope between two token counts."""
    low, high = (saved_bytes(model, rows, t, compute, device) for t in tokens)
    return (high - low) / (rows * (tokens[1] - tokens[0]))


def measure(hidden: int, intermediate: int, heads: int, kv_heads: int, rank: int = 16,
            configs=tuple(CONFIGS), **kwargs) -> dict[str, float]:
    """{config name: saved bytes per token and decoder layer} of one Llama shape (CONFIGS' names)."""
    torch.manual_seed(0)
    model = llama_layers(hidden, intermediate, heads, kv_heads).to(kwargs.get("device", "cpu"))
    out = {name: bytes_per_token(model, CONFIGS[name][1], **kwargs)
           for name in ("32-true full", "bf16 full") if name in configs}
    if "32-true LoRA" in configs or "bf16 LoRA" in configs:
        model = with_lora(model, rank)
        for name, base_dtype in (("32-true LoRA", torch.float32), ("bf16 LoRA", torch.bfloat16)):
            if name in configs:
                out[name] = bytes_per_token(base_in(model, base_dtype), CONFIGS[name][1], **kwargs)
    return out
