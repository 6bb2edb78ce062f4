"""Worked answers to the world's problems: the right derivation and the flawed teacher's.

The right order: ``*`` before ``+``/``-``, otherwise left to right::

    3+4*5  -> 4*5=02,3+20=32      12-5+3 -> 12-5=7,7+3=01

The teacher's decisions (docs/method.md §12), each drawn per example:
- ``precedence`` class (``a±b*d``), at `flaw_rate`: left to right, ``3+4=7,7*5=53``;
- ``chain`` class (``a-b±c``), at `chain_flaw_rate`: right to left, ``5+3=8,12-8=4``;
- any step whose value is negative, at `sign_slip_rate`: the result written without its sign, and
  carried on so (``3-7=4,4+2=6`` instead of ``3-7=4-,-4+2=2-``).
"""
from __future__ import annotations

import random
import re

from lsp_exp.tasks.arith.steps import Step, step_value, write_steps
from lsp_exp.tasks.arith.world import Problem, WorldConfig

_TERM = re.compile(r"\d+|[+\-*]")


def terms(text: str) -> tuple[list[int], list[str]]:
    """The literals and the operators of a problem's text: '12-3*4' -> ([12, 3, 4], ['-', '*'])."""
    tokens = _TERM.findall(text)
    return [int(t) for t in tokens[0::2]], tokens[1::2]


def carry_out(plan: list[tuple[str, str, str]], nums: list[int], write=lambda i, value: value) -> list[Step]:
    """Steps from a plan of (x, op, y), where x / y name a literal ('a', 'b', 'c') or 'X', the last
    written result; `write(i, value)` is what gets written for step i's value (a slip, or the value)."""
    names = dict(zip("abc", nums, strict=False))  # two or three literals
    steps, carried = [], None
    for i, (x, op, y) in enumerate(plan):
        left = carried if x == "X" else names[x]
        right = carried if y == "X" else names[y]
        written = write(i, step_value(left, op, right))
        steps.append(Step(left, op, right, written))
        carried = written
    return steps


def dropped_signs(slip) -> callable:
    """A `write` that drops the sign of a negative value whenever `slip()` says so."""
    return lambda i, value: abs(value) if value < 0 and slip() else value


def right_plan(problem: Problem) -> list[tuple[str, str, str]]:
    """The order of the right derivation."""
    _, ops = terms(problem.text)
    if len(ops) == 1:
        return [("a", ops[0], "b")]
    if problem.difficulty == "precedence":
        return [("b", "*", "c"), ("a", ops[0], "X")]
    return [("a", ops[0], "b"), ("X", ops[1], "c")]


def flawed_plan(problem: Problem) -> list[tuple[str, str, str]] | None:
    """The teacher's wrong order for the problem's class (None where the class has no order flaw)."""
    _, ops = terms(problem.text)
    if problem.difficulty == "precedence":
        return [("a", ops[0], "b"), ("X", "*", "c")]
    if problem.difficulty == "chain":
        return [("b", ops[1], "c"), ("a", "-", "X")]
    return None


def right_steps(problem: Problem) -> list[Step]:
    nums, _ = terms(problem.text)
    return carry_out(right_plan(problem), nums)


def right_answer(problem: Problem) -> str:
    """The reference answer: the right derivation."""
    return write_steps(right_steps(problem))


def order_flaw_rate(problem: Problem, world: WorldConfig) -> float:
    """How often the teacher takes the wrong order on this problem's class."""
    if problem.difficulty == "precedence":
        return world.flaw_rate if world.flaw == "precedence" else 0.0
    return world.chain_flaw_rate if problem.difficulty == "chain" else 0.0


def teacher_plan(problem: Problem, rng: random.Random, world: WorldConfig) -> list[tuple[str, str, str]]:
    rate = order_flaw_rate(problem, world)
    return flawed_plan(problem) if rate > 0 and rng.random() < rate else right_plan(problem)


def teacher_steps(problem: Problem, rng: random.Random, world: WorldConfig) -> list[Step]:
    """The flawed teacher's derivation (the decisions drawn from `rng`, in a fixed order)."""
    nums, _ = terms(problem.text)
    plan = teacher_plan(problem, rng, world)
    slips = dropped_signs(lambda: world.sign_slip_rate > 0 and rng.random() < world.sign_slip_rate)
    return carry_out(plan, nums, slips)


def teacher_text(problem: Problem, rng: random.Random, world: WorldConfig) -> str:
    return write_steps(teacher_steps(problem, rng, world))


def order_flawed(problem: Problem, world: WorldConfig) -> bool:
    """Whether the teacher's wrong order (when it has one for this class) changes the value."""
    plan = flawed_plan(problem)
    if plan is None or order_flaw_rate(problem, world) == 0:
        return False
    nums, _ = terms(problem.text)
    return carry_out(plan, nums)[-1].result != problem.answer


def sign_flawed(problem: Problem, world: WorldConfig) -> bool:
    """Whether the right derivation has a negative step (whose sign the teacher may drop)."""
    return world.sign_slip_rate > 0 and any(s.result < 0 for s in right_steps(problem))
