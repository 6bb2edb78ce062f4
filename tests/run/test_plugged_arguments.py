"""A function plugged in with `_partial_: true` is called only in a training step, so its keys are checked
against its signature at start (`validate` -> `check_targets` -> `nodes.check_arguments`): one line naming
the key, before any model loads. One case per kind of plugged function."""
import pytest
from omegaconf import open_dict

from lsp_exp.cli.train import train
from lsp_exp.errors import ConfigError
from lsp_exp.run.validation import validate

from tests.helpers.tiny_run import compose_config

HERE = __name__


def short(queries, answers, max_chars=2):
    """A plain-function reward."""
    return [1.0 if len(a) <= max_chars else 0.0 for a in answers]


def shifted(values, shift=0.0):
    """A Challenger objective."""
    return shift - values


def short_node(key):
    return {"_target_": f"{HERE}.short", "_partial_": True, key: 1}


def with_reward(node, *overrides):
    cfg = compose_config("train", list(overrides))
    with open_dict(cfg):
        cfg.reward = node
    return cfg


def reward(key):
    return with_reward({**short_node(key), "name": "short"})


def composite_part(key):
    return with_reward({"_target_": "lsp_exp.rewards.composite.CompositeReward", "name": "mixed",
                        "parts": {"verifier": {"_target_": "lsp_exp.tasks.arith.rewards.verifier"},
                                  "short": short_node(key)}}, "reward=composite")


def advantage(key):
    return compose_config("train", [
        f"algorithm.advantage={{_target_: lsp_exp.rl.advantages.group_std_advantage, _partial_: true, {key}: 0.1}}"])


def policy_loss(key):
    return compose_config("train", [
        f"algorithm.policy_loss={{_target_: lsp_exp.rl.losses.clipped_loss, _partial_: true, {key}: 0.3}}"])


def objective(key):
    return compose_config("train", [
        f"game.challenger_objective={{_target_: {HERE}.shifted, _partial_: true, {key}: 1}}"])


# kind: (the config with a key, the misspelt key, the right one, the line the misspelt key gives)
CASES = {
    "reward": (reward, "max_char", "max_chars", f"reward.max_char: not a parameter of {HERE}.short "
                                               "(parameters: max_chars)"),
    "composite part": (composite_part, "max_char", "max_chars", "reward.parts.short.max_char: not a parameter of "
                                                              f"{HERE}.short (parameters: max_chars)"),
    "advantage": (advantage, "esp", "eps", "algorithm.advantage.esp: not a parameter of "
                                          "lsp_exp.rl.advantages.group_std_advantage (parameters: mask, eps)"),
    "policy loss": (policy_loss, "clip_hi", "clip_high", "algorithm.policy_loss.clip_hi: not a parameter of "
                                                         "lsp_exp.rl.losses.clipped_loss (parameters: token_weights, "
                                                         "clip_low, clip_high"),
    "challenger objective": (objective, "shfit", "shift", "game.challenger_objective.shfit: not a parameter of "
                                                          f"{HERE}.shifted (parameters: shift)"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_key_that_is_not_a_parameter_fails_at_start_naming_it(kind):
    make, typo, right, message = CASES[kind]
    with pytest.raises(ConfigError) as err:
        validate(make(typo))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    validate(make(right))   # the same node with the right key passes


def test_the_run_stops_before_any_model_loads(tmp_path):
    """A model path that does not exist would fail next (preflight); the typo is reported first."""
    cfg = compose_config("train", [f"paths.outputs={tmp_path}", "logger=none", f"model.path={tmp_path}/no_model",
                                   "algorithm.advantage={_target_: lsp_exp.rl.advantages.group_std_advantage, "
                                   "_partial_: true, esp: 0.1}"])
    with pytest.raises(ConfigError, match=r"^algorithm\.advantage\.esp: not a parameter of "):
        train(cfg)
