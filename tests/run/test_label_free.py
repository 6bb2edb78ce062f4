"""The label-free arms (reward=majority_vote, docs/method.md §17.1) use no verifier and no label in
training: the reward never calls the verifier nor reads a problem's answer, and a run trains the same
whether the verifier logged beside it is the real one or one returning random values."""
import random

import pytest
import torch

from lsp_exp.cli.train import run_job
from lsp_exp.nodes import build
from lsp_exp.rewards import MajorityVoteReward, Scores, build_reward
from lsp_exp.run import step_logging
from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.run.step_logging import StepMetricsLogger
from lsp_exp.tasks.arith import task as arith_task, verifier_reward
from lsp_exp.tasks.arith.verifier_reward import ArithmeticReward

from tests.helpers.tiny_run import TINY_WORLD, compose_config

FIGURES, PSEUDO_LABEL_METRICS = StepMetricsLogger.figures, step_logging.pseudo_label_metrics  # the real ones
GAMES = ["lsp_zero", "grpo_data",
         pytest.param("rzero", marks=pytest.mark.skipif(not (PROJECT_ROOT / "conf/game/rzero.yaml").exists(),
                                                        reason="no conf/game/rzero.yaml"))]


def _refuse(*args, **kwargs):
    raise AssertionError("a label-free reward read the ground truth")


@pytest.mark.parametrize("game", GAMES)
def test_the_reward_never_reads_the_ground_truth(game, monkeypatch):
    cfg = compose_config("train", [f"game={game}", "reward=majority_vote", "game.group_size=3", *TINY_WORLD])
    task = build(cfg.task, "task")
    reward = build_reward(cfg.reward, task=task)
    assert isinstance(reward, MajorityVoteReward) and reward.group_size == 3
    for target, name in ((ArithmeticReward, "score"), (verifier_reward, "parse_problem"),
                         (arith_task, "parse_problem"), (type(task), "ground_truth"), (type(task), "problems")):
        monkeypatch.setattr(target, name, _refuse)
    queries = ["3+4*5"] * 3 + ["2*7"] * 3 + ["no problem"] * 3
    answers = ["4*5=02,3+20=32", "3+4=7,7*5=53", "4*5=02,3+20=32", "2*7=41", "?", "2*7=41", "1+1=2", "", "x"]
    scores = reward.score(queries, answers)
    assert scores.values.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert scores.valid.tolist() == [True] * 9


def _random_verifier(seed: int):
    rng = random.Random(seed)   # its own generator: the run's random streams stay as they are

    def score(self, queries, answers):
        return Scores(torch.tensor([float(rng.random() < 0.5) for _ in answers]),
                      torch.tensor([rng.random() < 0.8 for _ in answers]))
    return score


def _trained(outputs, game: str, monkeypatch, verifier=None):
    """A few tiny steps with reward=majority_vote: each step's record, the pseudo-label figures of
    each step, the last step's figures and the final weights."""
    records, figures = [], []
    monkeypatch.setattr(StepMetricsLogger, "figures",
                        lambda self, record, module: records.append((record, module)) or FIGURES(self, record,
                                                                                                        module))
    monkeypatch.setattr(step_logging, "pseudo_label_metrics",
                        lambda *args: figures.append(PSEUDO_LABEL_METRICS(*args)) or figures[-1])
    if verifier is not None:
        monkeypatch.setattr(ArithmeticReward, "score", verifier)
    # eval.judge_pairs > 0: judging the judges at start must leave the group reward out (it has no per-pair verdict)
    # the tiny model writes no well-formed answer yet: a coarse reading gives the vote something to count
    monkeypatch.setattr(arith_task.ArithTask, "final_answer", lambda self, answer: len(answer.strip()) % 3 or None)
    result = run_job(compose_config("train", TINY_WORLD + [
        f"game={game}", "reward=majority_vote", "trainer.max_steps=3", "game.n_queries=3", "game.group_size=4",
        "logger=none", "eval.every_n_steps=0", "eval.samples=0", "eval.judge_pairs=8", "eval.max_problems=4",
        "eval.sample_table_every=0", "trainer.enable_progress_bar=false", "trainer.num_threads=1",
        "trainer.checkpoint_every=0", "optim.lr=1e-2", f"paths.outputs={outputs}"]))
    weights = {k: v.detach().clone() for k, v in records[-1][1].policy.state_dict().items()}
    return [r for r, _ in records], figures, result.last_step, weights


@pytest.mark.parametrize("game", ["lsp_zero", "grpo_data"])
def test_training_is_the_same_whatever_the_logged_verifier_says(game, shared_outputs, monkeypatch):
    real = _trained(shared_outputs, game, monkeypatch)
    noisy = _trained(shared_outputs, game, monkeypatch, verifier=_random_verifier(0))
    (records, figures, last, weights), (records_r, figures_r, last_r, weights_r) = real, noisy
    assert len(records) == len(records_r) == 3 and len(figures) == len(figures_r) == 3   # logged every step
    assert any(bool(r.graded.rewards.std(-1).gt(0).any()) for r in records)   # the vote rewarded some, not all
    for a, b in zip(records, records_r, strict=True):
        assert a.playout.queries.texts == b.playout.queries.texts
        assert a.playout.answers.texts == b.playout.answers.texts
        assert torch.equal(a.graded.rewards, b.graded.rewards) and torch.equal(a.rewards.solver, b.rewards.solver)
    assert any(not torch.equal(a.graded.truth.values, b.graded.truth.values)
               for a, b in zip(records, records_r, strict=True))
    assert last["train/solver/reward"] == last_r["train/solver/reward"]
    assert weights.keys() == weights_r.keys() and all(torch.equal(weights[k], weights_r[k]) for k in weights)
