"""The queries of the toy world's judge data: problems of the world, expressions outside its bounds
and malformed strings (what a drifting Challenger writes)."""
from __future__ import annotations

import random

from lsp_exp.tasks.arith.world import WorldConfig, sample_problem

SYMBOLS = "0123456789+-*"


def outside_query(rng: random.Random) -> str:
    """An arithmetic expression outside the world's bounds (big operands, 3 operators, parentheses)."""
    kind = rng.random()
    if kind < 0.4:
        return f"{rng.randint(20, 99)}{rng.choice('+-*')}{rng.randint(0, 99)}"
    if kind < 0.7:
        ops = [rng.choice("+-") for _ in range(3)]
        nums = [rng.randint(0, 19) for _ in range(4)]
        return "".join(f"{n}{o}" for n, o in zip(nums, ops, strict=False)) + str(nums[-1])  # one number more
    return f"({rng.randint(0, 19)}{rng.choice('+-')}{rng.randint(0, 19)})*{rng.randint(0, 9)}"


def malformed_query(rng: random.Random, world: WorldConfig) -> str:
    """A string that states no task: a truncated problem or random symbols."""
    if rng.random() < 0.5:
        text = sample_problem(rng, world).text
        return text[: rng.randint(0, len(text) - 1)] + rng.choice(["", "+", "*", "-"])
    return "".join(rng.choice(SYMBOLS) for _ in range(rng.randint(1, 10)))


def sample_query(rng: random.Random, world: WorldConfig, exclude: set[str]) -> str:
    """A query not in `exclude`: a problem of the world (60%), an expression outside it (20%) or a
    malformed string (20%)."""
    pick = rng.random()
    if pick < 0.6:
        while True:
            text = sample_problem(rng, world).text
            if text not in exclude:
                return text
    return outside_query(rng) if pick < 0.8 else malformed_query(rng, world)
