"""Name -> function registries, so an algorithm is chosen by config and extended without edits."""
from __future__ import annotations

from typing import Callable

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
TOKEN_POLICY_LOSSES: dict[str, Callable] = {}  # token-level losses with an old policy (losses.py)
AGGREGATIONS: dict[str, Callable] = {}         # [B, T] per-token losses -> scalar (aggregation.py)


def register(registry: dict[str, Callable], name: str):
    """Decorator: `@register(ADVANTAGE_ESTIMATORS, "group_mean")` (functions or classes)."""

    def wrap(fn: Callable) -> Callable:
        if name in registry:
            raise ValueError(f"{name!r} is already registered")
        registry[name] = fn
        return fn

    return wrap


def get(registry: dict[str, Callable], name: str, what: str) -> Callable:
    """Look `name` up, or fail with the list of available names."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; available: {', '.join(sorted(registry))}") from None
