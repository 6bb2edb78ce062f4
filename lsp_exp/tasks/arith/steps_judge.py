"""The self-quality rubric and the judge's training data for worked answers (docs/method.md §12).

The toy judge is the frozen base in judge mode. It has the edge a real judge has (checking a
written step is easier than writing it) and no more: it re-computes each written step and grades
the arithmetic reliably, but it **shares the teacher's belief about the order of operations**, so
an answer done in the teacher's wrong order with right arithmetic gets full marks. Seven 0/1
criteria, in the paper's order (1-2 the query, 3-7 the answer):

1. task:     the query states an arithmetic task (an expression the grader can evaluate);
2. clear:    the query is a problem of this world;
3. format:   the answer is well-formed worked steps;
4. relevant: the steps compute the query, in the right order or in the teacher's wrong one;
5. sound:    every written step's arithmetic is right (``x op y=z`` with ``z = x op y``);
6. complete: one step per operator of the query;
7. liked:    relevant, sound and complete.

The judge's reply: for each written step, the result as it re-computes it, the written result and
whether they agree; then whether the steps follow a plan for the query (criterion 4, which with
steps implies 6), then the score, e.g. ``02:02y,32:32y plan:y <Score>7</Score>``; ``none`` when there
are no steps to check. Each verdict is written before the score, so the score digit is the sum of
what the reply says and the judge's doubt is in its written verdicts, not spread over the digits.
The score is read from the probabilities of the digits after ``<Score>``
(`game.judge.score_from=probabilities`, lsp_exp/judge/self_quality.py).

Replies tried and not kept (experiments/toy_judge/README.md): only the checks, without the plan
verdict (the score hedged between 5 and 7 on right answers whose carried operand is a long result,
ranking them below wrong-order ones); only the judge's own results (it did not compare them with
the written ones: AUC .55 on slips); each step's operation re-written before its result (it copied
more written results, not fewer).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from lsp_exp.judge.templates import TEMPLATES
from lsp_exp.tasks.arith import derivation
from lsp_exp.tasks.arith.judge_queries import sample_query
from lsp_exp.tasks.arith.rubric import expression_value
from lsp_exp.tasks.arith.steps import Step, encode_result, final_value, parse_steps, step_value, write_steps
from lsp_exp.tasks.arith.world import Problem, WorldConfig, parse_problem, sample_problem

CRITERIA = ("task", "clear", "format", "relevant", "sound", "complete", "liked")


def _follows(steps: list[Step], plan: list[tuple[str, str, str]], nums: list[int]) -> bool:
    """Whether `steps` carry out `plan` on the literals `nums` (a carried operand is the previous written result)."""
    if len(steps) != len(plan):
        return False
    names = dict(zip("abc", nums, strict=False))  # two or three literals
    for i, (step, (x, op, y)) in enumerate(zip(steps, plan, strict=True)):
        carried = steps[i - 1].result if i else None
        left = carried if x == "X" else names[x]
        right = carried if y == "X" else names[y]
        if (step.x, step.op, step.y) != (left, op, right):
            return False
    return True


def grade(query: str, answer: str, world: WorldConfig) -> tuple[int, ...]:
    """The seven 0/1 criteria of (query, worked answer) as the toy judge grades them."""
    problem = parse_problem(query.strip(), world)
    task = expression_value(query) is not None
    steps = parse_steps(answer)
    relevant = complete = False
    if problem is not None and steps:
        nums, ops = derivation.terms(problem.text)
        plans = [derivation.right_plan(problem), derivation.flawed_plan(problem)]
        relevant = any(plan is not None and _follows(steps, plan, nums) for plan in plans)
        complete = len(steps) == len(ops)
    sound = bool(steps) and all(s.right for s in steps)
    liked = relevant and sound and complete
    return tuple(int(c) for c in (task, problem is not None, steps is not None, relevant, sound, complete, liked))


def step_check(step: Step) -> str:
    """The judge's check of one step: its own result, the written one, and whether they agree
    (`y` / `n`): `4*5=12` -> `02:21n`. Writing both side by side makes the comparison local."""
    own, written = encode_result(step_value(step.x, step.op, step.y)), encode_result(step.result)
    return f"{own}:{written}{'y' if step.right else 'n'}"


def judge_reply(query: str, answer: str, world: WorldConfig) -> str:
    """What the toy judge writes: a check of each step (`step_check`), whether the steps follow a
    plan for the query (`plan:y` / `plan:n`, criterion 4), then the score."""
    steps = parse_steps(answer)
    criteria = grade(query, answer, world)
    if not steps:
        return f"none <Score>{sum(criteria)}</Score>"
    relevant = "y" if criteria[CRITERIA.index("relevant")] else "n"
    return f"{','.join(step_check(s) for s in steps)} plan:{relevant} <Score>{sum(criteria)}</Score>"


SLIP_SIZES = (1, 1, 2, 10)  # how far a slip is off, drawn uniformly (the labelled set's, the reward model's)


@dataclass(frozen=True)
class AnswerMix:
    """Shares of clean, dropped-sign and slipped answers in `solver_like_answer` (the rest, half
    incomplete and half out of place) and the sizes of its slips."""
    clean: float = 0.45
    signs: float = 0.2
    slip: float = 0.25
    slip_sizes: tuple[int, ...] = SLIP_SIZES


REWARD_MODEL_MIX = AnswerMix()
# The judge stage's: half the answers slipped, a third of the slips in the tens digit. A judge
# trained on 25% slips of sizes (1, 1, 2, 10) caught .80 of them, one on 40% of sizes
# (1, 2, 10, 10) .905, one on 50% of sizes (1, 2, 10) .94-.97: what it misses, it misses by writing
# the written result as its own (experiments/toy_judge/README.md).
JUDGE_MIX = AnswerMix(clean=0.3, signs=0.12, slip=0.5, slip_sizes=(1, 2, 10))


def near_miss(rng: random.Random, sizes: tuple[int, ...] = SLIP_SIZES):
    """A `write` that gets one step (drawn at its first call) wrong by a small amount (one of `sizes`)."""
    state = {}

    def write(i, value):
        if "step" not in state:
            state["step"] = i if rng.random() < 0.5 else i + 1
        return value + rng.choice([-1, 1]) * rng.choice(sizes) if i == state["step"] else value
    return write


def _slipped(problem: Problem, plan, rng: random.Random, sizes: tuple[int, ...] = SLIP_SIZES) -> str:
    nums, _ = derivation.terms(problem.text)
    steps = derivation.carry_out(plan, nums, near_miss(rng, sizes))
    if all(s.right for s in steps):  # the drawn step was past the last one: slip the last
        steps = derivation.carry_out(plan, nums, lambda i, v: v + 1 if i == len(plan) - 1 else v)
    return write_steps(steps)


def solver_like_answer(rng: random.Random, query: str, world: WorldConfig, mix: AnswerMix = REWARD_MODEL_MIX) -> str:
    """A Solver-like worked answer to `query`. The order (right, or the teacher's wrong one where the
    class has one, half and half) is drawn independently of the arithmetic (clean, dropped signs,
    a slip in one step), so nothing but the arithmetic tells a judge trained on these what to grade:
    it learns to check the steps and not the order. Also incomplete answers, steps out of place,
    another problem's steps and garbage."""
    problem = parse_problem(query.strip(), world)
    if problem is None or rng.random() < 0.1:
        if rng.random() < 0.5:
            return "".join(rng.choice("0123456789+-*=,") for _ in range(rng.randint(0, 12)))
        return derivation.right_answer(sample_problem(rng, world))
    flawed = derivation.flawed_plan(problem)
    plan = flawed if flawed is not None and rng.random() < 0.5 else derivation.right_plan(problem)
    nums, _ = derivation.terms(problem.text)
    pick = rng.random()
    if pick < mix.clean:
        return write_steps(derivation.carry_out(plan, nums))
    if pick < mix.clean + mix.signs:
        return write_steps(derivation.carry_out(plan, nums, derivation.dropped_signs(lambda: rng.random() < 0.7)))
    if pick < mix.clean + mix.signs + mix.slip:
        return _slipped(problem, plan, rng, mix.slip_sizes)
    steps = derivation.carry_out(plan, nums)
    if pick < (1 + mix.clean + mix.signs + mix.slip) / 2 and len(steps) > 1:
        return write_steps(steps[:-1])  # incomplete
    return write_steps(steps[::-1]) if len(steps) > 1 else _slipped(problem, plan, rng, mix.slip_sizes)  # out of place


def judge_example(rng: random.Random, world: WorldConfig, exclude: set[str]) -> tuple[str, str]:
    """(judge prompt, the judge's reply) for the judge stage."""
    query = sample_query(rng, world, exclude)
    answer = solver_like_answer(rng, query, world, JUDGE_MIX)
    return TEMPLATES["toy"].render(query, answer), judge_reply(query, answer, world)


WRONG_KINDS = ("order", "sign", "slip")


def labelled_pairs(problems: list[Problem], world: WorldConfig, n: int, seed: int) -> list[tuple[str, str, bool, str]]:
    """A fixed labelled set on held-out problems: (query, answer, correct?, kind). Half are right
    (the right derivation); the wrong half in equal thirds: the teacher's wrong order (`order`, on
    problems where it changes the value), a dropped sign (`sign`), a slip in one step (`slip`)."""
    rng = random.Random(f"labelled-{seed}")
    by_kind = {"order": [p for p in problems if derivation.order_flawed(p, world)],
               "sign": [p for p in problems if any(s.result < 0 for s in derivation.right_steps(p))]}
    pairs = []
    for i in range(n):
        if i % 2 == 0:
            p = problems[rng.randrange(len(problems))]
            pairs.append((p.text, derivation.right_answer(p), True, "right"))
            continue
        kind = WRONG_KINDS[(i // 2) % 3]
        pool = by_kind.get(kind) or problems
        p = pool[rng.randrange(len(pool))]
        nums, _ = derivation.terms(p.text)
        if kind == "order":
            answer = write_steps(derivation.carry_out(derivation.flawed_plan(p), nums))
        elif kind == "sign":
            answer = write_steps(derivation.carry_out(derivation.right_plan(p), nums,
                                                      derivation.dropped_signs(lambda: True)))
        else:
            answer = _slipped(p, derivation.right_plan(p), rng)
        pairs.append((p.text, answer, final_value(answer) == p.answer, kind))
    return pairs
