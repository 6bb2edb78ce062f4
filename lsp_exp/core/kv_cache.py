"""The KV cache's name in transformers' forward and outputs: `cache` from 5.2x on (`past_key_values`
still works there, with a deprecation warning per process, and goes in 5.40), `past_key_values`
before (the GPU image's 5.17). Detected once from the output class."""
from __future__ import annotations

from transformers.modeling_outputs import CausalLMOutputWithPast

NAME = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def cache_of(output):
    """The KV cache a forward with use_cache=True returned."""
    return getattr(output, NAME)


def with_cache(cache) -> dict:
    """The keyword argument that passes `cache` to a forward."""
    return {NAME: cache}
