"""A run's stored config as lsp-eval reads it (run/trained_config.py): what it takes from the run, what
the command line overrides, what the command line may not contradict, and a store without it."""
from __future__ import annotations

import mlflow
import pytest
from omegaconf import OmegaConf

from lsp_exp.run.saved_state import UnsafeSavedStateError
from lsp_exp.run.trained_config import (MissingRunConfigError, RunConfigError, as_trained, onto_run_nodes,
                                         stored_config)
from tests.helpers.tiny_run import TINY_WORLD, compose_config

RUN = "0" * 32


def stored(*overrides: str):
    """A train config as lsp-train logs it (composed, resolved) and reads back."""
    return OmegaConf.create(OmegaConf.to_container(compose_config("train", list(overrides)), resolve=True))


def evaluated(trained, *overrides: str):
    return as_trained(compose_config("eval", list(overrides)), trained, RUN, list(overrides))


def test_the_run_gives_task_model_reward_and_answer_length():
    trained = stored(*TINY_WORLD, "model.lora.enabled=true", "game.max_answer_tokens=7")
    cfg = evaluated(trained, "win_rate.max_prompts=5")
    for node in ("task", "model", "reward"):
        assert OmegaConf.to_container(cfg[node], resolve=True) == OmegaConf.to_container(trained[node])
    assert cfg.task.world.n_heldout == 40 and cfg.model.lora.enabled is True
    assert cfg.heldout.max_new_tokens == cfg.win_rate.max_new_tokens == 7 and cfg.win_rate.max_prompts == 5


def test_an_override_changes_only_the_key_it_names():
    trained = stored(*TINY_WORLD, "game.max_answer_tokens=7")
    cfg = evaluated(trained, "reward=tiny_rm", "task.heldout_path=/data/heldout.jsonl", "heldout.max_new_tokens=3",
                    "model.dtype=bfloat16")
    assert cfg.reward.name == "tiny_rm" and cfg.task.heldout_path == "/data/heldout.jsonl"
    assert cfg.task.world.n_heldout == 40 and cfg.model.dtype == "bfloat16" and cfg.model.name == "tiny_arith"
    assert (cfg.heldout.max_new_tokens, cfg.win_rate.max_new_tokens) == (3, 7)


def test_a_key_the_default_option_lacks_goes_onto_the_runs_node(tmp_path):
    """`reward.path=...` on a reward_model run: lsp-eval's default reward (arithmetic) has no `path`, so the
    command line's key is forced (`++`) and lands on the run's reward node; with a directory it is left alone."""
    trained = stored("task=prompts", "reward=reward_model", "reward.path=/models/rm", "model.path=/models/llama")
    argv = onto_run_nodes([f"run={RUN}", "reward.path=/models/rm2", "+tags.arm=x", "heldout.max_problems=3"])
    assert argv == [f"run={RUN}", "++reward.path=/models/rm2", "+tags.arm=x", "heldout.max_problems=3"]
    cfg = as_trained(compose_config("eval", argv), trained, RUN, argv)
    assert (cfg.reward.name, cfg.reward.path, cfg.model.path) == ("reward_model", "/models/rm2", "/models/llama")
    assert cfg.heldout.max_problems == 3 and cfg.task.name == "prompts"
    assert onto_run_nodes([f"run={tmp_path}", "reward.path=/x"]) == [f"run={tmp_path}", "reward.path=/x"]


@pytest.mark.parametrize("trained_with, override, named", [
    (["model.lora.enabled=true"], "model.lora.enabled=false", "model.lora.enabled=True"),
    (["model.lora.enabled=true"], "model.lora.r=4", "model.lora.r=8"),
    (["model.lora.enabled=true"], "model.lora.target_modules=[q_proj]",
     "model.lora.target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj']"),
    ([], "model.lora.enabled=true", "model.lora.enabled=False"),
    ([], "model=qwen2_5_0_5b_instruct", "model.path=None"),
    ([], "task.world.max_operand=9", "task.world.max_operand=19"),   # the task's own base model: another world
], ids=["lora_off", "lora_r", "lora_targets", "lora_on", "another_model", "another_world"])
def test_an_override_that_loads_other_weights_is_one_line(trained_with, override, named):
    with pytest.raises(RunConfigError, match=rf"^run='{RUN}' was trained with ") as err:
        evaluated(stored(*trained_with), override)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_stored_target_off_the_allowlist_is_refused():
    trained = stored()
    trained.reward._target_ = "os.system"
    with pytest.raises(UnsafeSavedStateError, match=r"reward._target_='os.system'"):
        evaluated(trained)


def test_a_run_without_a_stored_config_is_one_line(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("old", artifact_location=str(tmp_path / "art"))).info.run_id
    with pytest.raises(MissingRunConfigError, match=rf"^run='{run_id}': its store holds no config/resolved.yaml"):
        stored_config(client, run_id)
    client.log_text(run_id, "task: [unclosed", "config/resolved.yaml")
    with pytest.raises(RunConfigError, match=r"its config/resolved.yaml is not YAML"):
        stored_config(client, run_id)
    client.log_text(run_id, OmegaConf.to_yaml(stored(*TINY_WORLD)), "config/resolved.yaml")
    assert stored_config(client, run_id).task.world.n_heldout == 40
