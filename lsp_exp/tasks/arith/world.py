"""The toy arithmetic world: problems, their difficulty, the flawed teacher and the answer format.

Problems are short expressions such as ``37+4*12``: one or two binary operators over literals
0..`max_operand`, at most one ``*``, whose right factor has one digit (``37*4``, not ``4*37``), so
that every product, the teacher's included, is a product by one digit. The world's bounds are
also the Challenger's action space: a query outside them is invalid (see `parse_problem`).

Difficulty levels:
- ``one_op``: ``a+b``, ``a-b``, ``a*b``;
- ``two_op``: two operators where left-to-right order gives the right value (``a+b-c``, ``a*d+c``);
- ``precedence``: ``a+b*d`` or ``a-b*d``, where left-to-right evaluation gives a wrong value;
- ``chain`` (only in a world with `share_chain > 0`; else these are ``two_op``): ``a-b+c`` and
  ``a-b-c``, where right-to-left evaluation (``a-(b+c)``) gives a wrong value.

The base model is taught by an *imperfect teacher* with a systematic flaw (`WorldConfig.flaw`),
applied to `flaw_rate` of the examples it concerns; the verifier is always right. RL has a real
flaw to repair, and an adversarial Challenger has a real weakness to find (docs/method.md §12):
- ``precedence`` (default): the teacher evaluates ``a+b*d`` / ``a-b*d`` left to right;
- ``sign``: the teacher drops the minus sign of a negative result (``3-7`` -> ``4``);
- ``none``: a perfect teacher.

Answers (`answer_format`):
- ``direct`` (the first world, kept so its results stay reproducible): the value, written sign
  first, then digits least-significant first (``-123`` -> ``-321``), which a tiny model learns far
  more easily (docs/method.md §12);
- ``steps`` (the default world): the worked computation, one step per operator (steps.py); the
  teacher's flaws are then decisions the base samples: the order of the steps (``precedence`` at
  `flaw_rate`, ``chain`` at `chain_flaw_rate`) and, at `sign_slip_rate`, a negative step result
  written without its sign. The RL training split may be drawn with other shares than the world
  (`train_shares`): a data set that covers one flawed class well and another rarely.
"""
from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from lsp_exp.tasks.arith.verifier import InvalidExpression, VerifierLimits, evaluate_tree, parse_expression

@dataclass
class WorldConfig:
    """The world's bounds, the problem distribution and the teacher's flaw (the `world` config schema
    extends it with the data splits)."""

    max_operand: int = 19
    max_small_operand: int = 9
    share_one_op: float = 0.3
    share_two_op: float = 0.3
    share_precedence: float = 0.4
    flaw: str = "precedence"
    flaw_rate: float = 0.6
    answer_format: str = "direct"
    share_chain: float = 0.0
    chain_flaw_rate: float = 0.0
    sign_slip_rate: float = 0.0
    # one_op, two_op, precedence, chain of the training split (None: the world's)
    train_shares: list[float] | None = None


# The default world of the functions that take one (shared, never changed).
DEFAULT_WORLD = WorldConfig()


# Fields the first world did not have, at the values that reproduce it: left out of cache keys there.
LEGACY_VALUES = {"answer_format": "direct", "share_chain": 0.0, "chain_flaw_rate": 0.0, "sign_slip_rate": 0.0,
                 "train_shares": None}
DIFFICULTIES = ("one_op", "two_op", "precedence", "chain")


@dataclass(frozen=True)
class Problem:
    text: str
    answer: int
    difficulty: str


def encode_answer(value: int) -> str:
    """Sign first, then digits least-significant first: 120 -> '021', -45 -> '-54'."""
    sign = "-" if value < 0 else ""
    return sign + str(abs(value))[::-1]


def decode_answer(text: str) -> int | None:
    """Inverse of `encode_answer`; None for anything that is not a well-formed answer."""
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        return None
    value = int(digits[::-1])
    return -value if text.startswith("-") else value


def _literal(node: ast.expr) -> int | None:
    return node.value if isinstance(node, ast.Constant) else None


def classify(tree: ast.expr, chains: bool = False) -> tuple[int, str] | None:
    """(number of operators, difficulty) of a canonical problem tree, or None if outside the world.
    With `chains`, ``a-b+c`` / ``a-b-c`` are ``chain`` (else ``two_op``)."""
    if isinstance(tree, ast.Constant):
        return None
    ops, mults = 0, 0
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            ops += 1
            if isinstance(node.op, ast.Mult):
                mults += 1
                left, right = _literal(node.left), _literal(node.right)
                if left is None or right is None:
                    return None  # '*' must join two literals, e.g. not (a+b)*c
        elif isinstance(node, ast.UnaryOp):
            return None
    if ops > 2 or mults > 1:
        return None
    if ops == 1:
        return 1, "one_op"
    # Two operators: precedence matters exactly when the '*' is the right operand of the top node.
    top = tree
    if isinstance(top.right, ast.BinOp) and isinstance(top.right.op, ast.Mult):
        return 2, "precedence"
    if chains and isinstance(top.left, ast.BinOp) and isinstance(top.left.op, ast.Sub):
        return 2, "chain"
    return 2, "two_op"


_LEADING_ZERO = re.compile(r"(?<!\d)0\d")


def parse_problem(text: str, world: WorldConfig = DEFAULT_WORLD) -> Problem | None:
    """The problem that `text` states, or None when it is not a valid problem of this world.

    Valid means: only digits and ``+ - *`` (no spaces, parentheses or unary minus), literals within
    the world's bounds without leading zeros, 1-2 operators, at most one ``*`` whose right factor has one digit.
    """
    if not text or len(text) > 16 or not text[0].isdigit() or any(c not in "0123456789+-*" for c in text):
        return None
    if _LEADING_ZERO.search(text):  # `00+5`, `07*3`: Python would parse `00`, the world has no such literal
        return None
    try:
        tree = parse_expression(text, VerifierLimits(max_chars=16, max_nodes=8, max_depth=4))
        shape = classify(tree, chains=world.share_chain > 0)
        if shape is None:
            return None
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value > world.max_operand:
                return None
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                if node.right.value > world.max_small_operand:
                    return None
        return Problem(text, evaluate_tree(tree), shape[1])
    except InvalidExpression:
        return None


def left_to_right_value(text: str) -> int:
    """The flawed teacher's value: operators applied left to right, ignoring precedence."""
    tokens, number, value, op = [], "", None, None
    for ch in text + "+":
        if ch.isdigit():
            number += ch
            continue
        tokens.append(int(number))
        number = ""
        if op is None:
            value = tokens[-1]
        else:
            value = {"+": value + tokens[-1], "-": value - tokens[-1], "*": value * tokens[-1]}[op]
        op = ch
    return value


def sample_problem(rng: random.Random, world: WorldConfig = DEFAULT_WORLD, shares=None) -> Problem:
    """Draw one problem from the world's distribution (the shares of its difficulty levels), or from
    `shares` (one_op, two_op, precedence, chain) instead: the training split's `train_shares`."""
    def big() -> int:
        return rng.randint(0, world.max_operand)

    def small() -> int:
        return rng.randint(0, world.max_small_operand)

    one_op, two_op, _, chain = shares if shares is not None else (
        world.share_one_op, world.share_two_op, world.share_precedence, world.share_chain)
    pick = rng.random()
    if pick < one_op:
        op = rng.choice("+-*")
        text = f"{big()}{op}{small() if op == '*' else big()}"
    elif pick < one_op + two_op:
        forms = ["a+b+c", "a+b-c", "a-b+c", "a-b-c", "a*d+c", "a*d-c"]
        if world.share_chain > 0:  # a-b+c and a-b-c are the chain class of this world
            forms = ["a+b+c", "a+b-c", "a*d+c", "a*d-c"]
        form = rng.choice(forms)
        text = (form.replace("a", str(big())).replace("b", str(big())).replace("c", str(big()))
                .replace("d", str(small())))
    elif pick < 1 - chain:
        text = f"{big()}{rng.choice('+-')}{big()}*{small()}"
    else:
        text = f"{big()}-{big()}{rng.choice('+-')}{big()}"
    problem = parse_problem(text, world)
    assert problem is not None, text
    return problem


FLAWS = ("sign", "precedence", "none")


def teacher_flawed(problem: Problem, world: WorldConfig = DEFAULT_WORLD) -> bool:
    """Whether the teacher's flaw can change the answer to this problem (the 'flawed' class)."""
    if world.flaw == "sign":
        return problem.answer < 0
    if world.flaw == "precedence":
        return problem.difficulty == "precedence" and left_to_right_value(problem.text) != problem.answer
    if world.flaw == "none":
        return False
    raise ValueError(f"unknown world.flaw {world.flaw!r}; available: {', '.join(FLAWS)}")


def teacher_answer(problem: Problem, rng: random.Random, world: WorldConfig = DEFAULT_WORLD) -> int:
    """The imperfect teacher: on the flawed class, wrong with probability `flaw_rate`."""
    if teacher_flawed(problem, world) and rng.random() < world.flaw_rate:
        return abs(problem.answer) if world.flaw == "sign" else left_to_right_value(problem.text)
    return problem.answer
