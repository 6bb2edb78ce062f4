"""Worked-step answers of the toy world (`world.answer_format: steps`, docs/method.md §12).

An answer is the computation written out, one step per operator, steps joined by ``,``::

    3+4*5   ->  4*5=02,3+20=32        (the final value is the last step's result: 23)

- a step is ``x op y=z``: ``x`` and ``y`` as a person writes numbers (a step's own result reused as
  the next operand is written this way too, ``-4``), ``z`` as the world writes results: sign first,
  then the digits least-significant first (``-45`` -> ``-54``), which a tiny model learns far more
  easily than most-significant first;
- the *order* of the steps is the answer's decision: ``3+4*5`` done left to right is
  ``3+4=7,7*5=53`` (35), the precedence mistake the flawed teacher makes.

Model text is only matched with a regular expression and `int()`: it is never evaluated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_STEP = re.compile(r"(-?\d{1,4})([+\-*])(-?\d{1,4})=(-?\d{1,5})")
MAX_STEPS = 4


def encode_result(value: int) -> str:
    """Sign first, then digits least-significant first: 120 -> '021', -45 -> '-54'."""
    return ("-" if value < 0 else "") + str(abs(value))[::-1]


def decode_result(text: str) -> int | None:
    """Inverse of `encode_result`; None for anything that is not a well-formed result."""
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        return None
    value = int(digits[::-1])
    return -value if text.startswith("-") else value


@dataclass(frozen=True)
class Step:
    """One written step ``x op y=z``; `result` is what was written, not necessarily ``x op y``."""

    x: int
    op: str
    y: int
    result: int

    @property
    def right(self) -> bool:
        """Whether the written result is the value of ``x op y`` (the step's arithmetic)."""
        return _OPS[self.op](self.x, self.y) == self.result

    def text(self) -> str:
        return f"{self.x}{self.op}{self.y}={encode_result(self.result)}"


def write_steps(steps: list[Step]) -> str:
    return ",".join(s.text() for s in steps)


def parse_steps(text: str) -> list[Step] | None:
    """The steps of a worked answer, or None when `text` is not 1..`MAX_STEPS` well-formed steps.

    Well-formed also means canonical: numbers without leading zeros, results as `encode_result`
    writes them, nothing else in the text (the round trip `write_steps(parse_steps(t)) == t`)."""
    text = text.strip()
    parts = text.split(",")
    if not text or len(parts) > MAX_STEPS:
        return None
    steps = []
    for part in parts:
        match = _STEP.fullmatch(part)
        if match is None:
            return None
        result = decode_result(match.group(4))
        if result is None:
            return None
        steps.append(Step(int(match.group(1)), match.group(2), int(match.group(3)), result))
    return steps if write_steps(steps) == text else None


def final_value(text: str) -> int | None:
    """The answer's value: the last step's written result (None when the answer is not well-formed)."""
    steps = parse_steps(text)
    return steps[-1].result if steps else None


def step_value(x: int, op: str, y: int) -> int:
    return _OPS[op](x, y)
