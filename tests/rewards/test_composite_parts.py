"""A composite reward's parts take every form a top-level reward takes (lsp_exp/rewards/__init__.py
`build_reward`): a class, a plain function (`_partial_: true`) and a target that takes the run's task."""
import mlflow
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lsp_exp.cli.train import train
from lsp_exp.errors import ConfigError
from lsp_exp.rewards import CompositeReward, FunctionReward, Scores, build_reward
from lsp_exp.tasks.base import Task

from tests.helpers.tiny_run import compose_config, run_of_this_test, tiny_overrides

HERE = __name__   # the module a `_target_` names: the functions and classes below


class Exact:
    """A reward class: 1 when the answer is `answer`."""

    bounds = (0.0, 1.0)

    def __init__(self, answer: str = "7"):
        self.answer = answer

    def score(self, queries, answers):
        return Scores(torch.tensor([float(a == self.answer) for a in answers]), torch.ones(len(answers), dtype=bool))


def short(queries, answers, max_chars=2):
    """A plain-function reward: 1 for an answer of at most `max_chars` characters."""
    return [1.0 if len(a.strip()) <= max_chars else 0.0 for a in answers]


short.bounds = (0.0, 1.0)


class OkTask(Task):
    """A task whose ground truth is an answer of exactly `ok`."""

    name = "ok"

    def ground_truth(self):
        return Exact("ok")


PARTS = {"exact": {"_target_": f"{HERE}.Exact", "answer": "7"},
         "short": {"_target_": f"{HERE}.short", "_partial_": True, "max_chars": 1},
         "truth": {"_target_": "lsp_exp.rewards.task_ground_truth"}}


def composite(parts=None, weights=None):
    return OmegaConf.create({"_target_": "lsp_exp.rewards.composite.CompositeReward", "name": "mixed",
                             "weights": weights or {"exact": 1.0, "short": 0.5, "truth": 2.0},
                             "parts": parts or PARTS})


def test_each_part_is_built_as_a_top_level_reward_and_summed():
    task = OkTask()
    reward = build_reward(composite(), task=task)
    assert isinstance(reward, CompositeReward)
    kinds = {name: type(part) for name, (_, part) in reward.parts.items()}
    assert kinds == {"exact": Exact, "short": FunctionReward, "truth": Exact}
    assert reward.parts["truth"][1].answer == "ok"   # the task's own verifier: the task reached the part
    queries, answers = ["q"] * 4, ["7", "ok", "long", "x"]
    scores = reward.score(queries, answers)
    parts = {name: values.tolist() for name, values in scores.parts.items()}
    assert parts == {"exact": [1.0, 0.0, 0.0, 0.0], "short": [1.0, 0.0, 0.0, 1.0], "truth": [0.0, 1.0, 0.0, 0.0]}
    assert scores.values.tolist() == [1.5, 2.0, 0.0, 0.5] and scores.valid.all()
    assert reward.bounds == (0.0, 3.5)   # every part's declared bounds, the plain function's included
    for name, node in PARTS.items():   # the same values as each node built on its own, as a top-level reward
        alone = build_reward(OmegaConf.create(node), task=task).score(queries, answers)
        assert alone.values.tolist() == parts[name]


@pytest.mark.parametrize("name", sorted(PARTS))
def test_a_composite_of_one_part_of_each_form(name):
    reward = build_reward(composite({name: PARTS[name]}, {name: 3.0}), task=OkTask())
    scores = reward.score(["q", "q"], ["7", "ok"])
    expected = {"exact": [1.0, 0.0], "short": [1.0, 0.0], "truth": [0.0, 1.0]}[name]
    assert scores.parts[name].tolist() == expected and scores.values.tolist() == [3.0 * v for v in expected]
    assert reward.bounds == (0.0, 3.0)


def test_a_part_that_cannot_be_built_names_its_key():
    with pytest.raises(ConfigError, match=r"^reward\.parts\.truth \(lsp_exp\.rewards\.task_ground_truth\): .*task"):
        build_reward(composite())   # no task to give the task-taking part
    bad = {**PARTS, "short": {**PARTS["short"], "max_char": 1}}
    with pytest.raises(ConfigError, match=rf"^reward\.parts\.short\.max_char: not a parameter of {HERE}\.short "
                                          r"\(parameters: max_chars\)$"):
        build_reward(composite(bad), task=OkTask())
    with pytest.raises(ConfigError, match=r"^reward\.parts\.exact: needs a `_target_`"):
        build_reward(composite({**PARTS, "exact": {"answer": "7"}}), task=OkTask())
    with pytest.raises(ValueError, match=r"reward\.parts\.f: a function has no score"):
        CompositeReward({"f": short})   # built by hand: a part must be a reward already


FAST = ["game=lsp_zero", "trainer.max_steps=1", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0",
        "eval.sample_table_every=0", "trainer.checkpoint_every=0", "trainer.num_threads=1"]


def test_a_tiny_run_trains_on_a_composite_of_every_form(shared_outputs):
    """One step of the toy world with the verifier (a class), a plain function and the task's own
    ground truth (the task-taking `task_ground_truth`: the same verifier) as parts."""
    cfg = compose_config("train", tiny_overrides(shared_outputs, *FAST, "+tags.probe=composite_forms"))
    with open_dict(cfg):
        cfg.reward = {"_target_": "lsp_exp.rewards.composite.CompositeReward", "name": "mixed",
                      "weights": {"short": 0.5},
                      "parts": {
                          "verifier": {"_target_": "lsp_exp.tasks.arith.rewards.verifier", "world": "${task.world}"},
                          "short": {"_target_": f"{HERE}.short", "_partial_": True, "max_chars": 4},
                          "truth": {"_target_": "lsp_exp.rewards.task_ground_truth"}}}
    train(cfg)
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    run = run_of_this_test(uri, filter_string="tags.probe = 'composite_forms'")
    client = mlflow.MlflowClient(uri)
    metric = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    assert run.info.status == "FINISHED" and run.data.params["reward.parts.short.max_chars"] == "4"
    assert len(metric["train/reward/verifier"]) == len(metric["train/reward/short"]) == 1
    assert metric["train/reward/truth"] == metric["train/reward/verifier"]   # the task's ground truth is its verifier
    assert 0.0 <= metric["train/reward/short"][0] <= 1.0
