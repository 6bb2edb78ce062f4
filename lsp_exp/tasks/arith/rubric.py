"""The self-quality rubric (docs/method.md §8) made programmatic for the toy world.

Seven binary criteria, +1 each, in the paper's order: 1-2 grade the query, 3-7 the answer.

1. task:      the query states an arithmetic task (the verifier can parse and evaluate it);
2. clear:     the query is a well-formed problem of this world (within its bounds);
3. number:    the answer is a number the user can read (a well-formed answer);
4. plausible: the answer has the sign and the number of digits of the expected value;
5. correct:   the answer equals the expected value;
6. concise:   the answer is written in canonical form (no redundant zeros, no stray characters);
7. liked:     correct and canonical.

"Expected value" is what the grader believes is right. The toy judge is trained on examples graded
with the *teacher's* belief (`believed_value`), so it inherits the teacher's flaw: it is an
imperfect judge, as the paper's judge (the frozen base model) is.
"""
from __future__ import annotations

import random

from lsp_exp.tasks.arith.verifier import InvalidExpression, VerifierLimits, evaluate_tree, parse_expression
from lsp_exp.tasks.arith.world import WorldConfig, decode_answer, encode_answer, parse_problem, teacher_answer

CRITERIA = ("task", "clear", "number", "plausible", "correct", "concise", "liked")
QUERY_CRITERIA = 2  # criteria 1-2 grade the query
_LIMITS = VerifierLimits(max_chars=32, max_nodes=16, max_depth=8, max_literal=10**4, max_magnitude=10**6)


def expression_value(text: str) -> int | None:
    """The value of any small arithmetic expression (digits, + - * and parentheses), else None."""
    text = text.strip()
    if not text or any(c not in "0123456789+-*() " for c in text):
        return None
    try:
        return evaluate_tree(parse_expression(text, _LIMITS), _LIMITS)
    except InvalidExpression:
        return None


def believed_value(query: str, world: WorldConfig, rng: random.Random | None) -> int | None:
    """The grader's expected value: the teacher's answer (flawed at `flaw_rate`, drawn from `rng`)
    for a problem of the world, the true value for any other expression, None for a non-task.
    With `rng=None` the grader is the verifier (always right)."""
    problem = parse_problem(query.strip(), world)
    if problem is not None:
        return teacher_answer(problem, rng, world) if rng is not None else problem.answer
    return expression_value(query)


def _same_shape(a: int, b: int) -> bool:
    return (a < 0) == (b < 0) and len(str(abs(a))) == len(str(abs(b)))


def grade(query: str, answer: str, world: WorldConfig, expected: int | None) -> tuple[int, ...]:
    """The seven 0/1 criteria for (query, answer), given the grader's expected value."""
    task = expression_value(query) is not None
    clear = parse_problem(query.strip(), world) is not None
    value = decode_answer(answer)
    number = value is not None
    plausible = number and expected is not None and _same_shape(value, expected)
    correct = number and expected is not None and value == expected
    concise = number and answer == encode_answer(value)
    liked = correct and concise
    return tuple(int(c) for c in (task, clear, number, plausible, correct, concise, liked))


def justification(criteria: tuple[int, ...], expected: int | None) -> str:
    """A short justification (the paper asks for at most 100 words; the toy judge uses a few): the
    query's quality, the value the judge expects (written like an answer: it works the problem out
    before comparing, a short chain of thought), and the verdict on the answer."""
    task, clear, number, _, correct, *_ = criteria
    query = "query ok" if clear else ("query unclear" if task else "no task")
    expect = f" expect {encode_answer(expected)}," if expected is not None else ""
    answer = "answer right" if correct else ("answer wrong" if number else "no number")
    return f"{query},{expect} {answer}."


def judgement_text(criteria: tuple[int, ...], expected: int | None) -> str:
    """The judge's full output: justification, <Calculation> and <Score> (docs/method.md §8)."""
    calculation = "+".join(map(str, criteria)) + f"={sum(criteria)}"
    return f"{justification(criteria, expected)} <Calculation>{calculation}</Calculation><Score>{sum(criteria)}</Score>"
