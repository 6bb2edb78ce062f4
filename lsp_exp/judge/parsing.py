"""Reading a judge's reply (docs/method.md §8): `<Score>` first, the `<Calculation>` sum as a fallback.

A reply that does not parse is data, not an error: `parse_judgement` says where the score came
from, and the caller scores the rest with the configured fallback and counts them.
Model text is only matched with regular expressions and `int()`; it is never evaluated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SCORE = 7
_SCORE = re.compile(r"<Score>\s*([+-]?\d{1,3})\s*</Score>")
_TERM = re.compile(r"\s*(\d{1,2})\s*")


@dataclass(frozen=True)
class Judgement:
    score: float | None                    # in [0, MAX_SCORE], None when nothing parsed
    source: str                            # "score" | "calculation" | "none"
    criteria: tuple[int, ...] | None = None  # the calculation's 0/1 terms when there are exactly 7


def parse_calculation(text: str) -> tuple[int, tuple[int, ...]] | None:
    """The sum of the terms left of '=' in e.g. '1+0+1+1+0+1+0=4', with the terms; None if malformed."""
    left = text.split("=", 1)[0]
    terms = []
    for part in left.split("+"):
        match = _TERM.fullmatch(part)
        if match is None:
            return None
        terms.append(int(match.group(1)))
    return sum(terms), tuple(terms)


def last_calculation(text: str) -> str | None:
    """The text of the last `<Calculation>...</Calculation>` (the nearest opening tag before the last
    closing one), found with two reverse searches: linear in the reply's length, whatever it holds."""
    end = text.rfind("</Calculation>")
    start = text.rfind("<Calculation>", 0, end) if end >= 0 else -1
    return text[start + len("<Calculation>"):end] if start >= 0 else None


def parse_judgement(text: str, max_score: int = MAX_SCORE) -> Judgement:
    """The judge's score: the last `<Score>` tag if it holds an integer in [0, max_score]; else the
    sum of the last `<Calculation>` if it is in range; else no score (`source="none"`)."""
    calculation = last_calculation(text)
    parsed = parse_calculation(calculation) if calculation is not None else None
    criteria = parsed[1] if parsed and len(parsed[1]) == max_score and set(parsed[1]) <= {0, 1} else None
    scores = _SCORE.findall(text)
    if scores and 0 <= int(scores[-1]) <= max_score:
        return Judgement(float(int(scores[-1])), "score", criteria)
    if parsed is not None and 0 <= parsed[0] <= max_score:
        return Judgement(float(parsed[0]), "calculation", criteria)
    return Judgement(None, "none", criteria)
