"""The worked-steps world: the answer format, the right and the teacher's derivations, the judge's
rubric and data, and the first world kept as it was (its cache key and shipped base)."""
import random
from collections import Counter

import pytest
from omegaconf import OmegaConf

from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.tasks.arith import derivation, steps_judge
from lsp_exp.tasks.arith.answers import answer_value, heldout_slices, is_flawed, reference_answer, teacher_text
from lsp_exp.tasks.arith.build import world_key
from lsp_exp.tasks.arith.data import make_splits
from lsp_exp.tasks.arith.steps import (
    Step, decode_result, encode_result, final_value, parse_steps, step_value, write_steps,
)
from lsp_exp.tasks.arith.shipped import manifest
from lsp_exp.tasks.arith.task import ArithTask
from lsp_exp.tasks.arith.world import WorldConfig, parse_problem, sample_problem

STEPS = WorldConfig(answer_format="steps", share_one_op=0.25, share_two_op=0.15, share_precedence=0.3, share_chain=0.3,
                    flaw_rate=0.6, chain_flaw_rate=0.7, sign_slip_rate=0.6, train_shares=[0.3, 0.2, 0.47, 0.03])


def task_config(name: str):
    return OmegaConf.load(PROJECT_ROOT / "conf" / "task" / f"{name}.yaml")


# ---- the format ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, text", [(0, "0"), (120, "021"), (-45, "-54"), (7, "7")])
def test_results_are_written_sign_first_then_digits_least_significant_first(value, text):
    assert encode_result(value) == text and decode_result(text) == value


def test_worked_answers_parse_and_round_trip():
    text = "4*5=02,3+20=32"
    assert parse_steps(text) == [Step(4, "*", 5, 20), Step(3, "+", 20, 23)]
    assert write_steps(parse_steps(text)) == text and final_value(text) == 23
    # a negative result carried on as an operand, and a negative right operand
    assert parse_steps("3-7=-4,-4+2=-2") == [Step(3, "-", 7, -4), Step(-4, "+", 2, -2)]
    assert parse_steps("13--15=82") == [Step(13, "-", -15, 28)]


@pytest.mark.parametrize("text", ["", "23", "4*5=20", "4*5=02,", "4*5=02,3+20=32,1+1=2,1+1=2,1+1=2", "04*5=02",
                                  "4*5=020", "4*5=02x", "4/5=1", "4*5==02", "a*5=02", "4*5=-0", "4*5=02 ,3+20=32"])
def test_malformed_or_non_canonical_worked_answers_are_none(text):
    assert parse_steps(text) is None and final_value(text) is None


def test_a_step_knows_whether_its_arithmetic_is_right():
    assert Step(4, "*", 5, 20).right and not Step(3, "-", 7, 4).right and Step(3, "-", 7, -4).right


# ---- derivations --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, right, flawed", [
    ("3+4*5", "4*5=02,3+20=32", "3+4=7,7*5=53"),          # precedence: * first; the teacher goes left to right
    ("12-5+3", "12-5=7,7+3=01", "5+3=8,12-8=4"),          # chain: left to right; the teacher goes right to left
    ("3-7-2", "3-7=-4,-4-2=-6", "7-2=5,3-5=-2"),
    ("2*8-15", "2*8=61,16-15=1", None),                   # two_op: no order flaw
    ("10-19", "10-19=-9", None),
])
def test_right_and_flawed_derivations_by_hand(text, right, flawed):
    problem = parse_problem(text, STEPS)
    assert derivation.right_answer(problem) == right and final_value(right) == problem.answer
    plan = derivation.flawed_plan(problem)
    nums, _ = derivation.terms(text)
    assert (write_steps(derivation.carry_out(plan, nums)) if plan else None) == flawed


def test_the_teacher_drops_signs_and_carries_the_slip_on():
    problem = parse_problem("3-7+2", STEPS)
    never = WorldConfig(**{**STEPS.__dict__, "chain_flaw_rate": 0.0, "sign_slip_rate": 1.0})
    assert teacher_text(problem, random.Random(0), never) == "3-7=4,4+2=6"
    perfect = WorldConfig(**{**STEPS.__dict__, "flaw_rate": 0.0, "chain_flaw_rate": 0.0, "sign_slip_rate": 0.0})
    assert teacher_text(problem, random.Random(0), perfect) == reference_answer(problem, perfect) == "3-7=-4,-4+2=-2"


def test_the_teacher_takes_each_decision_at_its_rate():
    rng, counts = random.Random(0), Counter()
    precedence, chain, negative = (parse_problem(t, STEPS) for t in ("3+4*5", "12-5+3", "2-9"))
    for _ in range(4000):
        counts["precedence"] += teacher_text(precedence, rng, STEPS).startswith("3+4")
        counts["chain"] += teacher_text(chain, rng, STEPS).startswith("5+3")
        counts["sign"] += teacher_text(negative, rng, STEPS) == "2-9=7"
    assert counts["precedence"] / 4000 == pytest.approx(0.6, abs=0.03)
    assert counts["chain"] / 4000 == pytest.approx(0.7, abs=0.03)
    assert counts["sign"] / 4000 == pytest.approx(0.6, abs=0.03)


def test_slices_name_the_flaws_that_change_the_value():
    slices = heldout_slices(STEPS)
    assert slices(parse_problem("3+4*5", STEPS)) == ["precedence", "flawed", "order"]
    assert slices(parse_problem("3+4*1", STEPS)) == ["precedence", "unflawed"]        # left to right is right here
    assert slices(parse_problem("3-7-2", STEPS)) == ["chain", "flawed", "order", "sign"]
    assert slices(parse_problem("12+5", STEPS)) == ["one_op", "unflawed"]
    assert is_flawed(parse_problem("2-9", STEPS), STEPS)


def test_the_training_split_follows_its_own_shares_and_the_heldout_the_worlds():
    heldout, train = make_splits(0, STEPS, 1000, 3000)
    held, data = Counter(p.difficulty for p in heldout), Counter(p.difficulty for p in train)
    assert held["chain"] / 1000 == pytest.approx(0.3, abs=0.05)
    # a split of unique problems: a class with few distinct problems (one_op) ends up below its share
    assert data["chain"] / 3000 == pytest.approx(0.03, abs=0.015) and data["precedence"] > data["one_op"]
    assert not {p.text for p in heldout} & {p.text for p in train}


def test_the_verifier_reads_the_last_step():
    from lsp_exp.tasks.arith.verifier_reward import ArithmeticReward
    scores = ArithmeticReward(STEPS).score(["3+4*5"] * 4 + ["99+1"],
                                           ["4*5=02,3+20=32", "3+4=7,7*5=53", "32", "", "001"])
    assert scores.values.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0] and scores.valid.tolist() == [True] * 4 + [False]
    assert answer_value("4*5=02,3+20=32", STEPS) == 23


# ---- the judge's rubric -------------------------------------------------------------------------
@pytest.mark.parametrize("query, answer, criteria", [
    ("3+4*5", "4*5=02,3+20=32", (1, 1, 1, 1, 1, 1, 1)),  # right
    ("3+4*5", "3+4=7,7*5=53", (1, 1, 1, 1, 1, 1, 1)),    # the teacher's order: the judge shares the belief
    ("3-7+2", "3-7=4,4+2=6", (1, 1, 1, 1, 0, 1, 0)),     # a dropped sign: caught
    ("3+4*5", "4*5=12,3+21=42", (1, 1, 1, 1, 0, 1, 0)),  # a slip in step 1 (carried on): caught
    ("3+4*5", "4*5=02", (1, 1, 1, 0, 1, 0, 0)),          # incomplete
    ("3+4*5", "1+1=2", (1, 1, 1, 0, 1, 0, 0)),           # right arithmetic, another problem
    ("3+4*5", "32", (1, 1, 0, 0, 0, 0, 0)),              # no steps
    ("99+1", "99+1=001", (1, 0, 1, 0, 1, 0, 0)),         # outside the world
    ("+*", "x", (0, 0, 0, 0, 0, 0, 0)),
])
def test_rubric_criteria_by_hand(query, answer, criteria):
    assert steps_judge.grade(query, answer, STEPS) == criteria


def test_judge_reply_recomputes_each_written_step():
    assert steps_judge.judge_reply("3-7+2", "3-7=4,4+2=6", STEPS) == "-4:4n,6:6y plan:y <Score>5</Score>"
    assert steps_judge.judge_reply("3+4*5", "oops", STEPS) == "none <Score>2</Score>"


def test_judge_reply_writes_the_plan_verdict_before_the_score():
    # the right order and the teacher's wrong one both follow a plan (the judge shares the belief)
    assert steps_judge.judge_reply("3+4*5", "4*5=02,3+20=32", STEPS) == "02:02y,32:32y plan:y <Score>7</Score>"
    assert steps_judge.judge_reply("3+4*5", "3+4=7,7*5=53", STEPS) == "7:7y,53:53y plan:y <Score>7</Score>"
    # steps out of place: sound and complete but no plan (4 relevant, 7 liked: 0)
    assert steps_judge.judge_reply("3+4*5", "3+20=32,4*5=02", STEPS) == "32:32y,02:02y plan:n <Score>5</Score>"
    # another problem's steps
    assert steps_judge.judge_reply("3+4*5", "2+2=4", STEPS) == "4:4y plan:n <Score>4</Score>"


def _slip_sizes(mix: steps_judge.AnswerMix, n: int) -> list[int]:
    """How far off the wrong step of each slipped answer is (a slip: the one wrong step is off by a
    slip size and is not a dropped sign)."""
    rng, sizes = random.Random(1), []
    for _ in range(n):
        problem = sample_problem(rng, STEPS)
        steps = parse_steps(steps_judge.solver_like_answer(rng, problem.text, STEPS, mix))
        wrong = [s for s in (steps or []) if not s.right]
        if len(wrong) == 1:
            off = abs(wrong[0].result - step_value(wrong[0].x, wrong[0].op, wrong[0].y))
            if wrong[0].result != -step_value(wrong[0].x, wrong[0].op, wrong[0].y) and off in (1, 2, 10):
                sizes.append(off)
    return sizes


def test_the_judge_stage_sees_more_slips_and_more_in_the_tens_digit_than_the_reward_model():
    n = 4000
    judge, rm = _slip_sizes(steps_judge.JUDGE_MIX, n), _slip_sizes(steps_judge.REWARD_MODEL_MIX, n)
    # slips: 50% (judge) and 25% (reward model) of the 90% of answers drawn from the problem, plus
    # the one-step answers "out of place" falls back to a slip for
    assert 0.9 * 0.5 <= len(judge) / n < 0.52 and 0.9 * 0.25 <= len(rm) / n < 0.28
    # tens-digit slips: a third and a quarter of the drawn sizes, less the +1 fallback (the drawn step past the last)
    tens_judge, tens_rm = judge.count(10) / len(judge), rm.count(10) / len(rm)
    assert 0.25 < tens_judge <= 1 / 3 and 0.15 < tens_rm <= 0.25 and tens_judge > 1.3 * tens_rm


def test_judge_examples_and_labelled_pairs_agree_with_the_rubric_and_the_verifier():
    rng = random.Random(0)
    for _ in range(300):
        prompt, reply = steps_judge.judge_example(rng, STEPS, set())
        query = prompt.split("<Instruction>")[1].split("</Instruction>")[0]
        answer = prompt.split("<Response>")[1].split("</Response>")[0]
        assert reply == steps_judge.judge_reply(query, answer, STEPS)
    heldout, _ = make_splits(0, STEPS, 300, 10)
    pairs = steps_judge.labelled_pairs(heldout, STEPS, 60, 0)
    assert sum(p[2] for p in pairs) == 30
    assert Counter(p[3] for p in pairs if not p[2]) == {"order": 10, "sign": 10, "slip": 10}
    assert all((answer_value(a, STEPS) == parse_problem(q, STEPS).answer) == ok for q, a, ok, _ in pairs)


# ---- the first world stays as it was ------------------------------------------------------------
def test_the_first_world_keeps_its_cache_key_and_shipped_base():
    direct = task_config("arith_direct")
    assert world_key(direct.world, direct.bootstrap) == "326b44729999"
    assert manifest()["worlds"]["arith_direct"]["base_model"]["key"] == "326b44729999"   # still shipped
    steps = task_config("arith")
    assert world_key(steps.world, steps.bootstrap) != "326b44729999"


def test_the_first_world_samples_the_same_problems_as_before():
    rng = random.Random(0)
    # as the first world drew them
    assert [sample_problem(rng).text for _ in range(5)] == ["13+8*8", "15-11+18", "4-3+19", "17+9*1", "10-17*1"]


def test_a_steps_only_setting_in_the_direct_world_is_refused():
    with pytest.raises(ValueError, match="task.world.answer_format"):
        ArithTask(world={"answer_format": "direct", "sign_slip_rate": 0.5})
    with pytest.raises(ValueError, match="task.world.train_shares"):
        ArithTask(world={"answer_format": "steps", "train_shares": [0.5, 0.5]})


def test_query_metrics_give_the_share_of_each_class():
    task = ArithTask(world=task_config("arith").world)
    assert task.query_metrics(["3+4*5", "12-5+3", "1+1", "99+1"]) == {
        "one_op_frac": 0.25, "two_op_frac": 0.0, "precedence_frac": 0.25, "chain_frac": 0.25}
    assert "chain_frac" not in ArithTask(world=task_config("arith_direct").world).query_metrics(["1+1"])
