"""The toy world: problems, validity (the Challenger's action space), answers, teacher, splits."""
import random

import pytest

from lsp_exp.tasks.arith.data import make_splits
from lsp_exp.tasks.arith.world import (WorldConfig, decode_answer, encode_answer, left_to_right_value, parse_problem,
                               sample_problem, teacher_answer, teacher_flawed)


@pytest.mark.parametrize("value, text", [(0, "0"), (7, "7"), (120, "021"), (-45, "-54"), (990, "099")])
def test_answer_format_round_trip(value, text):
    assert encode_answer(value) == text
    assert decode_answer(text) == value


@pytest.mark.parametrize("text", ["", "-", "1a", "--1", "1 2", "1234567", "١٢"])
def test_malformed_answers(text):
    assert decode_answer(text) is None


@pytest.mark.parametrize("text, answer, difficulty", [
    ("12+3", 15, "one_op"), ("19*7", 133, "one_op"), ("5-3+2", 4, "two_op"), ("3*4+5", 17, "two_op"),
    ("2+3*4", 14, "precedence"), ("19-3*4", 7, "precedence"),
])
def test_valid_problems(text, answer, difficulty):
    problem = parse_problem(text)
    assert (problem.answer, problem.difficulty) == (answer, difficulty)


@pytest.mark.parametrize("text", [
    "12*34", "7*89", "1*2*3", "(1+2)*3", "-1+2", "1+-2", "07+1", "100+1", "20+1", "1+2+3+4", "12", "1 + 2", "2**3",
    "1+2\n",
])
def test_outside_the_world(text):
    assert parse_problem(text) is None


def test_left_to_right_teacher_value():
    assert left_to_right_value("2+3*4") == 20
    assert left_to_right_value("19-3*4") == 64
    assert left_to_right_value("3*4+5") == 17


def test_sampled_problems_are_valid_and_shares_match():
    rng, world = random.Random(0), WorldConfig()
    problems = [sample_problem(rng, world) for _ in range(4000)]
    assert all(parse_problem(p.text) == p for p in problems)
    share = sum(p.difficulty == "precedence" for p in problems) / len(problems)
    assert abs(share - world.share_precedence) < 0.03


def test_teacher_is_wrong_on_precedence_at_its_flaw_rate():
    rng, world = random.Random(1), WorldConfig(flaw="precedence", flaw_rate=0.6)
    problem = parse_problem("13+16*4")  # left to right: 116, true: 77
    wrong = sum(teacher_answer(problem, rng, world) != problem.answer for _ in range(4000)) / 4000
    assert abs(wrong - 0.6) < 0.03
    assert all(teacher_answer(parse_problem("3*4+5"), rng, world) == 17 for _ in range(100))


def test_splits_are_deterministic_unique_and_disjoint():
    held, train = make_splits(0, WorldConfig(), 300, 1000)
    held2, train2 = make_splits(0, WorldConfig(), 300, 1000)
    assert held == held2 and train == train2
    assert len({p.text for p in held}) == 300 and len({p.text for p in train}) == 1000
    assert not {p.text for p in held} & {p.text for p in train}


def test_sign_teacher_drops_the_minus_sign_at_its_flaw_rate():
    rng, world = random.Random(2), WorldConfig(flaw="sign", flaw_rate=0.6)
    negative, positive = parse_problem("3-17"), parse_problem("17-3")
    assert teacher_flawed(negative, world) and not teacher_flawed(positive, world)
    answers = [teacher_answer(negative, rng, world) for _ in range(4000)]
    assert set(answers) == {-14, 14}
    assert abs(answers.count(14) / 4000 - 0.6) < 0.03
    assert all(teacher_answer(positive, rng, world) == 14 for _ in range(100))


def test_perfect_teacher_and_unknown_flaw():
    rng = random.Random(0)
    assert teacher_answer(parse_problem("3-17"), rng, WorldConfig(flaw="none")) == -14
    with pytest.raises(ValueError, match="world.flaw"):
        teacher_flawed(parse_problem("3-17"), WorldConfig(flaw="typo"))


def test_literals_with_leading_zeros_are_not_problems_of_the_world():
    assert parse_problem("00+5") is None and parse_problem("07*3") is None and parse_problem("5+03") is None
    assert parse_problem("0+5").answer == 5 and parse_problem("10+5").answer == 15 and parse_problem("5+0").answer == 5
