"""Synthetic (query, answer) pairs for the toy world: judge training examples and labelled sets.

Queries mix problems of the world, expressions outside its bounds and malformed strings (what a
drifting Challenger writes); answers mix right, teacher-wrong, near-miss, random, non-canonical
and garbage answers (what a Solver writes).
"""
from __future__ import annotations

import random

from lsp_exp.judge.templates import TEMPLATES
from lsp_exp.tasks.arith import steps_judge
from lsp_exp.tasks.arith.judge_queries import SYMBOLS, sample_query
from lsp_exp.tasks.arith.rubric import believed_value, expression_value, grade, judgement_text
from lsp_exp.tasks.arith.world import (
    Problem, WorldConfig, encode_answer, left_to_right_value, teacher_flawed,
)


def sample_answer(rng: random.Random, query: str, expected: int | None) -> str:
    """A Solver-like answer to `query` whose grader expects `expected`."""
    true = expression_value(query)
    pick = rng.random()
    if expected is None or pick >= 0.85:
        if rng.random() < 0.5:
            return "".join(rng.choice(SYMBOLS) for _ in range(rng.randint(0, 6)))
        return encode_answer(rng.randint(-200, 300))
    if pick < 0.3:
        return encode_answer(expected)
    if pick < 0.45:
        return encode_answer(true if true is not None else expected)
    if pick < 0.7:
        return encode_answer(expected + rng.choice([-1, 1]) * rng.randint(1, 12))
    if pick < 0.75:
        return encode_answer(-expected if expected else 1)
    return encode_answer(expected) + "0" * rng.randint(1, 2)  # a non-canonical form of a number


def judge_example(rng: random.Random, world: WorldConfig, exclude: set[str]) -> tuple[str, str]:
    """(judge prompt, the judgement the teacher would write), graded with the teacher's beliefs
    (worked answers: the rubric of steps_judge.py)."""
    if world.answer_format == "steps":
        return steps_judge.judge_example(rng, world, exclude)
    query = sample_query(rng, world, exclude)
    expected = believed_value(query, world, rng)
    answer = sample_answer(rng, query, expected)
    criteria = grade(query, answer, world, expected)
    return TEMPLATES["toy"].render(query, answer), judgement_text(criteria, expected)


def labelled_pairs(problems: list[Problem], world: WorldConfig, n: int, seed: int) -> list[tuple[str, str, bool]]:
    """A fixed labelled set (query, answer, correct?) on held-out problems, half right, half wrong;
    wrong answers are the teacher's wrong answer on the flawed class, else near misses (worked
    answers: steps_judge.labelled_pairs, without its kinds)."""
    if world.answer_format == "steps":
        return [pair[:3] for pair in steps_judge.labelled_pairs(problems, world, n, seed)]
    rng = random.Random(f"labelled-{seed}")
    pairs = []
    for i in range(n):
        problem = problems[rng.randrange(len(problems))]
        if i % 2 == 0:
            pairs.append((problem.text, encode_answer(problem.answer), True))
            continue
        if teacher_flawed(problem, world) and world.flaw == "precedence" and rng.random() < 0.5:
            wrong = left_to_right_value(problem.text)
        else:
            wrong = problem.answer + rng.choice([-1, 1]) * rng.randint(1, 12)
        pairs.append((problem.text, encode_answer(wrong), False))
    return pairs
