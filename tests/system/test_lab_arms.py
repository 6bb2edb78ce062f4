"""The self-play lab's leaderboard arms (conf/experiment/lab, experiments/selfplay_lab): each composes, is
tagged for `lsp-report`, shares the lab's budget, and the label-free arms name no verifier for training."""
from pathlib import Path

import pytest

from lsp_exp.run.config import PROJECT_ROOT
from tests.helpers.tiny_run import compose_config

LAB = PROJECT_ROOT / "conf" / "experiment" / "lab"
ARMS = sorted(p.stem for p in LAB.glob("*.yaml") if p.stem != "common")
LABEL_FREE = {"rzero", "lsp_zero_vote"}


def test_the_leaderboard_has_the_issue_s_seven_arms():
    assert set(ARMS) == {"data_rl", "lsp_zero", "lsp", "lsp_learnability", "rzero", "lsp_zero_vote", "lsp_zero_rae"}
    script = (PROJECT_ROOT / "experiments" / "selfplay_lab" / "run.sh").read_text()
    default_arms = script.split("ARMS=${ARMS:-", 1)[1].split("}", 1)[0].split(",")
    assert sorted(default_arms) == ARMS


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_composes_with_the_lab_s_budget_and_tags(arm):
    cfg = compose_config(overrides=[f"experiment=lab/{arm}"])
    assert cfg.tags.arm == arm and cfg.tags.table == "selfplay_lab"
    assert cfg.trainer.max_steps == 500 and cfg.game.n_queries == 8 and cfg.game.group_size == 8
    assert cfg.logger.experiment_name == "selfplay-lab" and cfg.eval.every_n_steps == 100
    assert cfg.game.challenger == (arm != "data_rl")
    target = cfg.reward._target_
    if arm in LABEL_FREE:  # trained on the Solver's own majority vote: no verifier, no label
        assert target.endswith("MajorityVoteReward") and "verifier" not in target
    else:
        assert target == "lsp_exp.tasks.arith.rewards.verifier"
    assert Path(LAB / f"{arm}.yaml").read_text().startswith("# @package _global_")
