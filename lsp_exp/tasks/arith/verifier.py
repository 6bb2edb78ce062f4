"""A safe arithmetic verifier: model text is parsed with `ast`, never `eval`ed.

Only integer literals, binary ``+ - *``, unary minus and parentheses are allowed. Size limits are
checked on the raw text *before* parsing and on the tree *before* any arithmetic, and every
intermediate result is bounded, so no input can make the verifier run long or allocate much.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

_BINARY_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


@dataclass(frozen=True)
class VerifierLimits:
    """Bounds that make every verification cheap; anything beyond them is invalid."""

    max_chars: int = 64
    max_nodes: int = 32
    max_depth: int = 12
    max_literal: int = 10**6
    max_magnitude: int = 10**12


class InvalidExpression(ValueError):
    """The text is not a whitelisted arithmetic expression within the limits."""


def parse_expression(text: str, limits: VerifierLimits = VerifierLimits()) -> ast.expr:
    """Parse `text` into a whitelisted, size-checked AST (no arithmetic is done here)."""
    if not isinstance(text, str):
        raise InvalidExpression("not a string")
    if len(text) > limits.max_chars:
        raise InvalidExpression(f"longer than {limits.max_chars} characters")
    if not text.strip():
        raise InvalidExpression("empty")
    # The character whitelist runs before the parser, so nothing but these reach `ast.parse`.
    if any(ch not in "0123456789+-*() " for ch in text):
        raise InvalidExpression("character outside the whitelist")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise InvalidExpression(f"does not parse: {type(err).__name__}") from None
    nodes = 0
    stack = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise InvalidExpression(f"more than {limits.max_nodes} nodes")
        if depth > limits.max_depth:
            raise InvalidExpression(f"deeper than {limits.max_depth}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            if node.value > limits.max_literal:
                raise InvalidExpression(f"literal larger than {limits.max_literal}")
        else:
            raise InvalidExpression(f"node {type(node).__name__} is not allowed")
    return tree.body


def evaluate_tree(node: ast.expr, limits: VerifierLimits = VerifierLimits()) -> int:
    """Evaluate a tree accepted by `parse_expression`, bounding every intermediate value."""
    if isinstance(node, ast.Constant):
        value = node.value
    elif isinstance(node, ast.UnaryOp):
        value = -evaluate_tree(node.operand, limits)
    else:
        value = _BINARY_OPS[type(node.op)](evaluate_tree(node.left, limits), evaluate_tree(node.right, limits))
    if abs(value) > limits.max_magnitude:
        raise InvalidExpression(f"a value exceeds {limits.max_magnitude}")
    return value


def safe_value(text: str, limits: VerifierLimits = VerifierLimits()) -> int | None:
    """The integer value of `text`, or None when it is not a valid bounded expression. Never raises."""
    try:
        return evaluate_tree(parse_expression(text, limits), limits)
    except InvalidExpression:
        return None
