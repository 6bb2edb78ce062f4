"""Every option of every group composes; those that run on a CPU instantiate; bad configs fail clearly."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.rewards import build_reward
from lsp_exp.nodes import build
from lsp_exp.errors import ConfigError
from lsp_exp.run.validation import validate

from tests.helpers.tiny_run import compose_config

GROUPS = ["task", "model", "game", "reward", "kl", "algorithm", "trainer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((PROJECT_ROOT / "conf" / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.relative_to(PROJECT_ROOT / "conf" / "experiment").with_suffix("").as_posix()
                     for p in (PROJECT_ROOT / "conf" / "experiment").rglob("*.yaml"))


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config("train", [f"{group}={option}"])
    assert cfg[group].name == option
    validate(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    validate(compose_config("train", [f"experiment={experiment}"]))


def test_bootstrap_config_composes():
    cfg = compose_config("bootstrap")
    assert cfg.model.path is None and cfg.task.world.n_heldout >= 2000  # the task's base model


def test_rewards_instantiate():
    cfg = compose_config("train")
    reward = build_reward(cfg.reward)
    scores = reward.score(["2+3*4", "2+3*4", "nonsense"], ["3*4=21,2+12=41", "2+3=5,5*4=02", "1"])  # worked answers
    assert scores.values.tolist() == [1.0, 0.0, 0.0] and scores.valid.tolist() == [True, True, False]


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException, match="Could not find 'game/lsp_zer0'") as err:
        compose_config("train", ["game=lsp_zer0"])
    assert "lsp_zero" in str(err.value.__cause__ or err.value) or "Available options" in str(err.value)


@pytest.mark.parametrize("override, named", [
    ("game.n_queries=eight", "eight"),              # wrong type
    ("kl.beta=high", "high"),
    ("trainer.max_steps=1.5", "1.5"),
    ("game.n_querys=8", "n_querys"),                # misspelt key
])
def test_wrong_types_and_keys_fail_at_compose_time(override, named):
    with pytest.raises((ValidationError, ConfigKeyError, ConfigAttributeError, ConfigCompositionException)) as err:
        compose_config("train", [override])
    message = str(err.value) + str(err.value.__cause__ or "")
    assert named in message


@pytest.mark.parametrize("override, key", [
    ("game.n_queries=0", "game.n_queries"), ("game.group_size=1", "game.group_size"),
    ("kl.beta=-0.1", "kl.beta"), ("kl.beta_challenger=-1", "kl.beta_challenger"), ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1e-4", "optim.lr"), ("kl.estimator=k9", "kl.estimator"), ("kl.placement=everywhere", "kl.placement"),
    ("algorithm.advantage=magic", "algorithm.advantage"), ("algorithm.policy_loss=magic", "algorithm.policy_loss"),
    ("game.challenger_objective=chaos", "game.challenger_objective"), ("trainer.max_steps=0", "trainer.max_steps"),
    ("game.temperature=0", "game.temperature"), ("model.dtype=float8", "model.dtype"),
    ("game.self_reward_weight=-1", "game.self_reward_weight"), ("game.judge.template=fancy", "game.judge.template"),
    ("game.judge.temperature=-1", "game.judge.temperature"),
    ("game.judge.fallback_score=8", "game.judge.fallback_score"),
    ("game.judge.max_new_tokens=0", "game.judge.max_new_tokens"), ("eval.judge_pairs=-1", "eval.judge_pairs"),
    ("reward._target_=lsp_exp.rewards.NoSuchReward", "reward._target_"),
    ("task._target_=nowhere.Task", "task._target_"),
])
def test_out_of_range_values_name_the_key(override, key):
    cfg = compose_config("train", [override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("override, key", [
    ("task.world.flaw=typo", "task.world.flaw"), ("task.world.flaw_rate=1.5", "task.world.flaw_rate"),
    ("task.world.share_one_op=0.9", "task.world.share_one_op"), ("task.world.n_heldout=lots", "task.world"),
    ("+task.world.colour=blue", "task.world"), ("+task.colour=blue", "task"),
])
def test_a_task_checks_its_own_arguments_when_built_naming_the_key(override, key):
    """The task node is the task's business: its class checks it (no schema in the framework)."""
    cfg = compose_config("train", [override])
    validate(cfg)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(cfg.task, "task")


def readme_options() -> dict[str, list[str]]:
    """The options each group lists in the README's configuration table (`| `group` | `a` (default), `b` | ...`)."""
    import re

    out = {}
    for line in (PROJECT_ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and re.fullmatch(r"`\w+`", cells[1]) and cells[1].strip("`") in GROUPS:
            out[cells[1].strip("`")] = sorted(re.findall(r"`([\w]+)`", cells[2]))
    return out


def test_the_options_on_disk_are_the_ones_the_readme_promises():
    """Not the glob against itself: the README's table is the independent list. A removed, renamed or
    undocumented option fails here (and OPTIONS above then runs every one of them)."""
    promised = readme_options()
    assert sorted(promised) == sorted(GROUPS)
    for group in GROUPS:
        found = sorted(p.stem for p in Path(PROJECT_ROOT / "conf" / group).glob("*.yaml") if p.stem != "schema")
        assert found == promised[group], group


def test_every_number_of_the_framework_groups_has_a_declared_range():
    """No numeric key is forgotten: each int or float field of the strict schemas (nested ones
    included) has an entry in RANGES, which validation checks (or a rule of its own: NOT_RANGED)."""
    import dataclasses
    import typing

    from lsp_exp.run import config as schemas

    def numeric(cls, prefix):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            args = set(typing.get_args(hint)) - {type(None)} or {hint}
            if dataclasses.is_dataclass(hint):
                yield from numeric(hint, f"{prefix}{f.name}.")
            elif args & {int, float} and bool not in args:
                yield f"{prefix}{f.name}"

    keys = {"seed"} | {k for group in ("game", "kl", "algorithm", "trainer") for k in
                       numeric(schemas.GROUP_SCHEMAS[group], f"{group}.")}
    keys |= set(numeric(schemas.OptimSchema, "optim.")) | set(numeric(schemas.EvalSchema, "eval."))
    missing = keys - set(schemas.RANGES) - schemas.NOT_RANGED
    assert not missing, f"numeric keys without a range in lsp_exp/run/config.py RANGES: {sorted(missing)}"
    assert set(schemas.RANGES) <= keys | {"trainer.devices"}, set(schemas.RANGES) - keys   # no stale entry
