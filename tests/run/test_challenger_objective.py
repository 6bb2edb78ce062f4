"""A Challenger objective of the user's, as the README's Extending section writes it (`my_objectives.py`
and `my_conf/game/targeted.yaml`): it composes, passes the checks at start and is the f(V) a step uses."""
import re
import sys

import mlflow
import pytest
import torch

from lsp_exp.cli.train import train
from lsp_exp.errors import ConfigError
from lsp_exp.nodes import build
from lsp_exp.rl.role_rewards import challenger_objective, check_objective
from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.run.validation import validate

from tests.helpers.tiny_run import compose_config, run_of_this_test, tiny_overrides

FILES = ("my_objectives.py", "my_conf/game/targeted.yaml")


@pytest.fixture
def readme_objective(tmp_path, monkeypatch):
    """The README's objective example, written out as shown: the module on sys.path; the searchpath override."""
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), flags=re.S)
    for name in FILES:
        (body,) = [b for b in blocks if b.splitlines()[0].strip() == f"# {name}"]
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    sys.modules.pop("my_objectives", None)


def test_the_readme_objective_composes_and_passes_the_checks(readme_objective):
    cfg = compose_config("train", [readme_objective, "game=targeted"])
    validate(cfg)
    assert cfg.game.name == "targeted" and cfg.game.self_reward   # full LSP, its objective replaced
    assert cfg.game.challenger_objective._target_ == "my_objectives.target_rate"
    assert cfg.game.challenger_objective.target == 0.3
    typo = compose_config("train", [readme_objective, "game=targeted", "+game.challenger_objective.taget=0.2"])
    with pytest.raises(ConfigError, match=r"^game\.challenger_objective\.taget: not a parameter of "
                                          r"my_objectives\.target_rate \(parameters: target\)$"):
        validate(typo)


FAST = ["trainer.max_steps=1", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0",
        "eval.sample_table_every=0", "trainer.checkpoint_every=0", "trainer.num_threads=1"]


def test_a_step_uses_the_readme_objective(readme_objective, shared_outputs, monkeypatch):
    """One step of LSP-Zero with the README's objective: the Challenger's reward is its f(V) (no judge)."""
    import my_objectives

    seen, original = [], my_objectives.target_rate

    def recorded(values, target=0.5):
        out = original(values, target)
        seen.append((values.detach().clone(), target, out.detach().clone()))
        return out

    recorded.needs_unit_interval = original.needs_unit_interval
    monkeypatch.setattr(my_objectives, "target_rate", recorded)
    cfg = compose_config("train", tiny_overrides(shared_outputs, readme_objective, "game=targeted",
                                                 "game.self_reward=false", *FAST, "+tags.probe=targeted"))
    train(cfg)
    assert len(seen) == 1   # one step, one f(V)
    values, target, out = seen[0]
    assert target == 0.3   # the YAML's key reached the function
    torch.testing.assert_close(out, -(values - 0.3).abs())
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    run = run_of_this_test(uri, filter_string="tags.probe = 'targeted'")
    (reward,) = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "train/challenger/reward")
    assert reward.value == pytest.approx(float(out.mean()), abs=1e-6)   # r_ch = f(V), logged as its mean
    assert run.data.params["game.challenger_objective._target_"] == "my_objectives.target_rate"


def test_the_readme_objective_needs_a_bounded_reward(readme_objective):
    """`needs_unit_interval = True` on the user's function: the bounded-reward check of the built-ins applies."""
    cfg = compose_config("train", [readme_objective, "game=targeted"])
    objective = challenger_objective(cfg.game.challenger_objective, build)
    check_objective(objective, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"^game.challenger_objective=my_objectives.target_rate needs a reward in "
                                         r"\[0, 1\], but the reward's range is None$"):
        check_objective(objective, None)
