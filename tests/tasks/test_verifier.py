"""The safe verifier: valid, invalid and hostile inputs; nothing raises, nothing is evaluated early."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_exp.tasks.arith import verifier
from lsp_exp.tasks.arith.verifier import VerifierLimits, safe_value


@pytest.mark.parametrize("text, value", [
    ("1+2", 3), ("2+3*4", 14), ("(2+3)*4", 20), ("-5+3", -2), ("10-20-30", -40), ("7*-3", -21), (" 42 ", 42),
    ("((1))", 1), ("99*9+99", 990),
])
def test_valid_expressions(text, value):
    assert safe_value(text) == value


@pytest.mark.parametrize("text", [
    "", "   ", "1+", "2**8", "2/3", "7//2", "5%3", "1.5+2", "1e3", "0x10", "1_000", "a+1", "abs(-1)",
    "__import__('os').system('echo hi')", "().__class__", "[1,2]", "lambda: 1", "1 if 1 else 2", "1==1",
    "+3", "~3", "1;2", "1\n+2",
])
def test_invalid_and_hostile_expressions(text):
    assert safe_value(text) is None


def test_bounds_on_literals_and_results():
    assert safe_value("1000000") == 10**6
    assert safe_value("1000001") is None
    assert safe_value("999999*999999*999999") is None  # result magnitude
    assert safe_value("9" * 65) is None  # longer than max_chars


def test_oversized_or_deep_input_is_rejected_before_any_arithmetic(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("arithmetic was attempted")

    monkeypatch.setattr(verifier, "evaluate_tree", fail)
    limits = VerifierLimits()
    deep = "(" * 40 + "1" + ")" * 40                # fits in 82 chars? no: rejected on length first
    nested = "-" * 20 + "1"                         # 21 chars, unary depth 21 > max_depth
    many_nodes = "+".join(["1"] * 20)               # 39 nodes > max_nodes
    for text in ["1" * 10_000, "(" * 100_000, deep, nested, many_nodes]:
        with pytest.raises(verifier.InvalidExpression):
            verifier.parse_expression(text, limits)
        assert verifier.safe_value(text) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_text_raises(text):
    result = safe_value(text)
    assert result is None or isinstance(result, int)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*() ", max_size=80))
def test_no_arithmetic_text_raises(text):
    result = safe_value(text)
    assert result is None or abs(result) <= VerifierLimits().max_magnitude
