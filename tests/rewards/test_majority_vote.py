"""The majority-vote reward (reward=majority_vote, docs/method.md §17.1) against hand-computed votes:
the pseudo-label, ties, unreadable answers, invalid groups, the group checks and the task contract."""
import pytest
import torch
from omegaconf import OmegaConf

from lsp_exp.errors import ConfigError
from lsp_exp.rewards import MajorityVoteReward, build_reward
from lsp_exp.rewards.majority_vote import pseudo_label
from lsp_exp.rl.role_rewards import check_objective
from lsp_exp.tasks.arith.task import ArithTask
from lsp_exp.tasks.base import Task


class Letters(Task):
    """A task whose final answer is an answer's last character, unreadable when it is not a letter."""

    name = "letters"

    def final_answer(self, answer: str):
        return answer[-1] if answer and answer[-1].isalpha() else None


def scored(answers, group_size, ties="first", queries=None):
    queries = queries or [f"q{i // group_size}" for i in range(len(answers))]
    scores = MajorityVoteReward(Letters(), group_size, ties).score(queries, answers)
    return scores.values.tolist(), scores.valid.tolist()


def test_the_pseudo_label_is_the_most_common_readable_value():
    assert pseudo_label(["a", "b", "b", "c"]) == "b"
    assert pseudo_label([None, None, "c", "a", "c"]) == "c"        # unreadable answers cast no vote
    assert pseudo_label([None, None]) is None and pseudo_label([]) is None
    assert pseudo_label([3, 3, 4]) == 3 and pseudo_label([(1, 2), (1, 2), 5]) == (1, 2)   # any hashable value


def test_ties_go_to_the_first_tied_value_read_or_to_none():
    assert pseudo_label(["b", "a", "a", "b", "c"], "first") == "b"   # a and b tie at 2: b is read first
    assert pseudo_label(["c", "a", "b"], "first") == "c"
    assert pseudo_label(["b", "a", "a", "b", "c"], "none") is None
    assert pseudo_label(["b", "a", "a", "c"], "none") == "a"          # no tie at the top: a tie below is no matter
    assert pseudo_label(["x"], "none") == "x"
    with pytest.raises(ValueError, match="reward.ties='most'"):
        pseudo_label(["a"], "most")


def test_rewards_by_hand():
    # group 0: b wins 2-1 (the unreadable '1' gets 0); group 1: no readable answer -> invalid, all 0
    values, valid = scored(["xa", "xb", "yb", "1", "2", "3", "#", "?"], group_size=4)
    assert values == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert valid == [True] * 4 + [False] * 4


def test_a_tie_rewards_the_first_value_or_makes_the_query_invalid():
    answers = ["xb", "xa", "ya", "yb", "q", "r", "r", "9"]
    assert scored(answers, 4, "first") == ([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0], [True] * 8)
    assert scored(answers, 4, "none") == ([0.0] * 4 + [0.0, 1.0, 1.0, 0.0], [False] * 4 + [True] * 4)


def test_one_answer_per_query_is_its_own_pseudo_label():
    assert scored(["a", "7"], group_size=1) == ([1.0, 0.0], [True, False])


def test_group_checks():
    reward = MajorityVoteReward(Letters(), 3)
    with pytest.raises(ValueError, match="not groups of reward.group_size=3"):
        reward.score(["q"] * 4, ["a"] * 4)
    with pytest.raises(ValueError, match="not groups of reward.group_size=3"):
        reward.score(["q"] * 3, ["a"] * 2)
    with pytest.raises(ValueError, match=r"answers 3\.\.5 are not one query's group"):
        reward.score(["q", "q", "q", "r", "r", "s"], ["a"] * 6)
    with pytest.raises(ValueError, match="reward.group_size=0: must be at least 1"):
        MajorityVoteReward(Letters(), 0)
    with pytest.raises(ValueError, match="reward.ties='last'"):
        MajorityVoteReward(Letters(), 2, ties="last")
    assert MajorityVoteReward(Letters(), 2).bounds == (0.0, 1.0) and MajorityVoteReward.pseudo_labels
    for objective in ("uncertainty", "learnability", "neg_value"):   # V in [0, 1]: every Challenger objective
        check_objective(objective, MajorityVoteReward.bounds)
    with pytest.raises(ValueError, match="needs a reward in"):   # which an unbounded reward would not pass
        check_objective("uncertainty", None)


def test_a_task_without_final_answer_is_refused_at_build_time():
    node = OmegaConf.create({"_target_": "lsp_exp.rewards.majority_vote.MajorityVoteReward", "name": "majority_vote",
                             "group_size": 4, "ties": "first"})
    with pytest.raises(ConfigError, match=r"reward=majority_vote: .*Task\.final_answer") as err:
        build_reward(node, task=Task())
    assert "\n" not in str(err.value)
    assert isinstance(build_reward(node, task=Letters()), MajorityVoteReward)
    with pytest.raises(ConfigError, match="reward.ties='?'"):
        build_reward(OmegaConf.merge(node, {"ties": "?"}), task=Letters())


def test_the_arithmetic_task_reads_final_values_and_slices():
    task = ArithTask(world={"answer_format": "steps"})   # the last step's result, least-significant digit first
    assert task.final_answer("4*5=02,3+20=32") == 23 and task.final_answer("4*5=02,3+20") is None
    assert task.final_answer("23") is None
    assert task.query_slices(["3+4*5", "12-5+9", "hello"]) == [["precedence", "flawed", "order"],
                                                                ["two_op", "unflawed"], []]
    direct = ArithTask()   # the first world: the value's digits reversed
    assert direct.query_slices(["3+4*5", "hello"]) == [["precedence", "flawed"], []]
    assert direct.final_answer("41") == 14 and direct.final_answer("-7") == -7 and direct.final_answer("x") is None
    reward = MajorityVoteReward(direct, 3)
    scores = reward.score(["3+4*5"] * 3, ["32", "53", "32"])
    assert scores.values.tolist() == [1.0, 0.0, 1.0] and bool(scores.valid.all())
    assert scores.values.dtype == torch.float32


def test_a_group_reward_is_not_judged_per_pair_at_start():
    """Judging the judges scores independent (query, answer, correct?) pairs: a vote over a query's G
    answers has no verdict on one pair, so its eval/reward/* are left out (the judge's are not)."""
    from lsp_exp.judge.judging_the_judges import judge_the_judges
    from lsp_exp.rewards.majority_vote import MajorityVoteReward

    class Readable:
        name = "readable"

        def final_answer(self, text):
            return text

    pairs = [("1+1", "2", True), ("2+2", "5", False), ("3+3", "6", True)]
    reward = MajorityVoteReward(Readable(), group_size=8)
    assert reward.grades_groups
    assert judge_the_judges(pairs, reward) == {}
