"""The world's answers in either format (`world.answer_format`): read, reference, teacher, slices.

The one place that dispatches on the format, so the verifier, the held-out set, SFT and the reward
model's data read and write answers the same way.
"""
from __future__ import annotations

import random

from lsp_exp.tasks.arith import derivation
from lsp_exp.tasks.arith.steps import final_value
from lsp_exp.tasks.arith.world import (Problem, WorldConfig, decode_answer, encode_answer, teacher_answer,
                                       teacher_flawed)

FORMATS = ("direct", "steps")


def answer_value(text: str, world: WorldConfig) -> int | None:
    """The value an answer states (None when it is not a well-formed answer of this format)."""
    return final_value(text) if world.answer_format == "steps" else decode_answer(text.strip())


def reference_answer(problem: Problem, world: WorldConfig) -> str:
    """The right answer as the model should write it."""
    return derivation.right_answer(problem) if world.answer_format == "steps" else encode_answer(problem.answer)


def teacher_text(problem: Problem, rng: random.Random, world: WorldConfig) -> str:
    """What the flawed teacher writes for `problem` (SFT's target)."""
    if world.answer_format == "steps":
        return derivation.teacher_text(problem, rng, world)
    return encode_answer(teacher_answer(problem, rng, world))


def is_flawed(problem: Problem, world: WorldConfig) -> bool:
    """Whether one of the teacher's flaws can change the value of its answer to `problem`."""
    if world.answer_format == "steps":
        return derivation.order_flawed(problem, world) or derivation.sign_flawed(problem, world)
    return teacher_flawed(problem, world)


def heldout_slices(world: WorldConfig):
    """A problem's held-out slices: its difficulty, flawed or unflawed, and (worked steps) which
    flaw: `order` (the teacher's order changes the value), `sign` (a step of the right derivation is negative)."""
    def slices(p: Problem) -> list[str]:
        labels = [p.difficulty, "flawed" if is_flawed(p, world) else "unflawed"]
        if world.answer_format == "steps":
            labels += ["order"] * derivation.order_flawed(p, world) + ["sign"] * derivation.sign_flawed(p, world)
        return labels
    return slices
