"""Run health: a condition under which no step can learn, held k steps in a row, prints one line,
tags the MLflow run and is repeated at the end of the run; a healthy run says nothing."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from lsp_exp.cli.train import train
from lsp_exp.run.config import HealthSchema
from lsp_exp.run.run_health import HealthWatch, RunHealth

from tests.helpers.tiny_run import compose_config, run_of, tiny_overrides

VALID, UNFINISHED_Q, UNFINISHED_A, ZERO_STD = ("train/query_valid_frac", "train/query_unfinished_frac",
                                               "train/answer_unfinished_frac", "train/zero_std_frac")
HEALTHY = {VALID: 0.5, UNFINISHED_Q: 0.1, UNFINISHED_A: 0.2, ZERO_STD: 0.25}


def steps(watch: HealthWatch, *figures: dict, start: int = 0) -> list[list]:
    """The events of each step, the healthy figures with `figures`' changes."""
    return [[(e.condition, e.started) for e in watch.observe(start + i, {**HEALTHY, **f})]
            for i, f in enumerate(figures)]


def test_a_condition_is_reported_once_after_k_steps_in_a_row_and_when_it_stops():
    watch = HealthWatch(steps=3)
    assert steps(watch, {VALID: 0.0}, {VALID: 0.05}, {VALID: 0.0}, {VALID: 0.0}, {VALID: 0.5}) == [
        [], [], [("queries_invalid", True)], [], [("queries_invalid", False)]]
    assert watch.reports == {"queries_invalid": (
        "run health: train/query_valid_frac 0.00 to 0.05 < 0.1 (trainer.health.min_query_valid_frac) for 4 steps "
        "in a row from step 0: almost no query is valid, so almost no answer is trained on; change "
        "game.max_query_tokens, game.temperature, the model (one that can write the task's queries) or the task "
        "-- it stopped at step 4")}


def test_a_streak_that_breaks_starts_again_and_a_missing_or_nan_figure_breaks_it():
    watch = HealthWatch(steps=3)
    assert steps(watch, {VALID: 0.0}, {VALID: 0.0}, {VALID: 0.2}, {VALID: 0.0}, {VALID: 0.0},
                 {VALID: math.nan}, {VALID: 0.0}) == [[]] * 7
    data_game = {k: v for k, v in HEALTHY.items() if k != UNFINISHED_Q}   # a data game has no query length
    assert all(watch.observe(step, data_game) == [] for step in range(10))
    assert watch.reports == {} and watch.at_end() == {}


@pytest.mark.parametrize("key, bad, fine, name", [
    (UNFINISHED_Q, 0.95, 0.9, "queries_unfinished"),    # above max_unfinished_frac (0.9)
    (UNFINISHED_A, 1.0, 0.9, "answers_unfinished"),
    (ZERO_STD, 1.0, 0.99, "no_reward_spread"),          # every group (zero_std_frac 1.0, at or above)
    (VALID, 0.09, 0.1, "queries_invalid"),              # below min_query_valid_frac (0.1)
])
def test_each_threshold(key, bad, fine, name):
    assert steps(HealthWatch(steps=2), {key: bad}, {key: fine}, {key: bad}, {key: bad}) == [
        [], [], [], [(name, True)]]


def test_the_thresholds_and_k_are_options():
    watch = HealthWatch(steps=1, min_query_valid_frac=0.6, max_unfinished_frac=0.05, zero_std_frac=0.2)
    assert sorted(steps(watch, {})[0]) == sorted(
        [("queries_invalid", True), ("queries_unfinished", True), ("answers_unfinished", True),
         ("no_reward_spread", True)])


def test_the_end_gives_each_condition_with_its_whole_streak_and_a_resumed_watch_goes_on():
    watch = HealthWatch(steps=2)
    steps(watch, {ZERO_STD: 1.0, UNFINISHED_A: 1.0}, {ZERO_STD: 1.0, UNFINISHED_A: 1.0}, {ZERO_STD: 1.0})
    resumed = HealthWatch(steps=2)
    resumed.load(watch.state())
    assert steps(resumed, {ZERO_STD: 1.0}, start=3) == [[]]   # no second report after a resume
    end = resumed.at_end()
    assert list(end) == ["answers_unfinished", "no_reward_spread"]   # in the order first reported
    assert end["no_reward_spread"].startswith("run health: train/zero_std_frac 1.00 >= 1 (trainer.health.zero_std_frac)"
                                              " for 4 steps in a row from step 0: ")
    assert end["no_reward_spread"].endswith("change the reward (one that tells answers apart), game.group_size or "
                                            "game.temperature -- still at the end")
    assert end["answers_unfinished"].endswith("game.max_answer_tokens, game.temperature or the model -- it stopped at "
                                              "step 2")


class TagsSeen:
    """An MLflow client's `set_tag`, recorded."""

    def __init__(self):
        self.tags = {}

    def set_tag(self, run_id, key, value):
        self.tags[key] = value


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_counts_only_rank_zero_prints_and_tags(rank, capsys):
    client = TagsSeen()
    trainer = SimpleNamespace(is_global_zero=rank == 0, logger=SimpleNamespace(run_id="r", experiment=client))
    health = RunHealth(OmegaConf.structured(HealthSchema(steps=2)), SimpleNamespace(last={**HEALTHY, ZERO_STD: 1.0}))
    for step in range(3):
        health.on_train_batch_end(trainer, None, {"step": SimpleNamespace(step=step)}, None, step)
    health.on_train_end(trainer, None)
    out = capsys.readouterr().out.splitlines()
    assert health.summary() == [f"warning: {health.watch.at_end()['no_reward_spread']}"]   # (rank 0 prints it)
    assert "for 3 steps in a row from step 0" in health.summary()[0]
    if rank:
        assert out == [] and client.tags == {}
    else:
        assert len(out) == 1 and "for 2 steps in a row from step 0" in out[0]
        assert client.tags == {"health": "no_reward_spread",
                               "health.no_reward_spread": health.summary()[0].removeprefix("warning: ")}


def test_a_run_with_the_checks_off_says_nothing(capsys):
    health = RunHealth(OmegaConf.structured(HealthSchema(steps=1, enabled=False)),
                       SimpleNamespace(last={**HEALTHY, VALID: 0.0}))
    health.on_train_batch_end(SimpleNamespace(is_global_zero=True, logger=None), None,
                              {"step": SimpleNamespace(step=0)}, None, 0)
    assert capsys.readouterr().out == "" and health.summary() == []


# ---- tiny runs that cannot learn --------------------------------------------------------------
def no_spread(queries, answers, world=None):
    """A reward that gives every answer 0: every group has zero spread."""
    return [0.0] * len(answers)


no_spread.bounds = (0.0, 1.0)

FAST = ["eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0", "eval.max_problems=4",
        "eval.sample_table_every=0", "trainer.max_steps=3", "trainer.health.steps=2"]


def run_health(outputs, capsys, case: str, *overrides: str):
    """A 3-step tiny run with k = 2: what it printed, its MLflow tags."""
    capsys.readouterr()
    train(compose_config("train", tiny_overrides(outputs, *FAST, *overrides, f"+tags.failcase={case}")))
    run, _, _ = run_of(outputs, case)
    assert run.info.status == "FINISHED"   # a run that cannot learn still ends, now with its reason said
    lines = capsys.readouterr().out.splitlines()
    return [line for line in lines if "run health" in line], run.data.tags


def check(lines, tags, name: str, figure: str):
    """`name` printed once after 2 steps, tagged, and repeated at the end with its 3 steps; `figure`:
    how each line starts (the key, its value, the threshold)."""
    start = f"warning: run health: {figure}"
    during = [line for line in lines if line.startswith(start) and "for 2 steps in a row from step 0" in line]
    end = [line for line in lines if line.startswith(start) and "for 3 steps in a row from step 0" in line
           and line.endswith("-- still at the end")]
    assert len(during) == 1 and len(end) == 1, lines
    assert name in tags["health"].split(",")
    assert tags[f"health.{name}"] == end[0].removeprefix("warning: ")   # the tag: the whole streak at the end


def test_queries_of_one_token_are_unfinished_and_invalid(shared_outputs, capsys):
    lines, tags = run_health(shared_outputs, capsys, "health_queries", "game=lsp_zero", "game.max_query_tokens=1")
    check(lines, tags, "queries_unfinished", "train/query_unfinished_frac 1.00 > 0.9 ")
    check(lines, tags, "queries_invalid", "train/query_valid_frac 0.00 < 0.1 ")
    assert "change game.max_query_tokens" in tags["health.queries_unfinished"]


def test_answers_of_one_token_are_unfinished(shared_outputs, capsys):
    """(A 1-token answer that is the end token is finished: 5 of 6 unfinished is a step's worst here.)"""
    lines, tags = run_health(shared_outputs, capsys, "health_answers", "game=grpo_data", "game.max_answer_tokens=1",
                             "trainer.health.max_unfinished_frac=0.5")
    check(lines, tags, "answers_unfinished", "train/answer_unfinished_frac ")
    assert all(" > 0.5 (trainer.health.max_unfinished_frac) " in line for line in lines if "answer_unfinished" in line)
    assert "change game.max_answer_tokens" in tags["health.answers_unfinished"]


def test_a_constant_reward_has_no_spread(shared_outputs, capsys):
    lines, tags = run_health(shared_outputs, capsys, "health_spread", "game=grpo_data",
                             f"reward._target_={__name__}.no_spread", "+reward._partial_=true")
    check(lines, tags, "no_reward_spread", "train/zero_std_frac 1.00 >= 1 ")
    assert tags["health"] == "no_reward_spread" and len(lines) == 2
    assert "change the reward" in tags["health.no_reward_spread"]


def test_a_healthy_run_says_nothing(shared_outputs, capsys):
    """A data game (every query valid) with a reward by a checksum of the text (answers differ)."""
    lines, tags = run_health(shared_outputs, capsys, "health_ok", "game=grpo_data",
                             "reward._target_=tests.helpers.parity_reward.ParityReward")
    assert lines == [] and not any(k.startswith("health") for k in tags)


def test_a_resumed_run_goes_on_counting_and_says_it_once(shared_outputs, capsys):
    """Stopped at step 2 with the condition reported, resumed to 4: no second report, and the end
    (printed and tagged) counts the whole streak, from step 0."""
    spread = ["game=grpo_data", f"reward._target_={__name__}.no_spread", "+reward._partial_=true",
              "trainer.checkpoint_every=2"]
    run_health(shared_outputs, capsys, "health_resume", *spread, "trainer.max_steps=2")
    run_id = run_of(shared_outputs, "health_resume")[0].info.run_id
    lines, tags = run_health(shared_outputs, capsys, "health_resume", *spread, "trainer.max_steps=4",
                             f"resume={run_id}")
    assert lines == ["warning: run health: train/zero_std_frac 1.00 >= 1 (trainer.health.zero_std_frac) for 4 steps "
                     "in a row from step 0: the answers in every group get the same reward: zero advantages, no "
                     "learning signal; change the reward (one that tells answers apart), game.group_size or "
                     "game.temperature -- still at the end"]
    assert tags["health.no_reward_spread"] == lines[0].removeprefix("warning: ")
