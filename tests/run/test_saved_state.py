"""Saved state is data, never code: a crafted checkpoint whose saved overrides name
a `_target_` of another package (`pandas.read_pickle`, `builtins.open` with mode=w) or a Hydra key is
refused in one line by `lsp-train resume=...`, directly or through a tagged MLflow run id, and
nothing is touched: the file the target would truncate is unchanged, the pickle it would load never
runs, no lock, no run, no toy world. The CLI cases run in one batch (tests/helpers/cli_batch.py)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsp_exp.run.saved_state import (UnsafeSavedStateError, check_config_targets, check_saved_overrides,
                                     project_targets, targets_named)

from tests.helpers.tiny_run import compose_config, tiny_overrides

CLI_BATCH = Path(__file__).resolve().parents[1] / "helpers" / "cli_batch.py"
VICTIM_TEXT = "precious data\n"


class Payload:
    """A pickle that touches a marker file when it is loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(folder: Path, overrides: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "step_0000005.ckpt"
    torch.save({"global_step": 5, "pytorch-lightning_version": "2.6.6", "state_dict": {},
                "lsp": {"run_id": None, "overrides": overrides, "world_size": 1}}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The crafted checkpoints, a store whose run tags one of them, and every case run through lsp-train."""
    import mlflow

    from lsp_exp.run.tracking import init_sqlite_store

    root = tmp_path_factory.mktemp("saved_state")
    outputs, elsewhere = root / "outputs", root / "elsewhere"
    victim, marker, payload = root / "victim.txt", root / "pwned", root / "payload.pkl"
    victim.write_text(VICTIM_TEXT)
    payload.write_bytes(pickle.dumps(Payload(str(marker))))
    read_pickle = crafted(elsewhere / "read_pickle", ["game.queries._target_=pandas.read_pickle",
                                                      f"+game.queries.filepath_or_buffer={payload}"])
    opener = crafted(elsewhere / "open", ["game.queries._target_=builtins.open", f"+game.queries.file={victim}",
                                          "+game.queries.mode=w"])
    as_dict = crafted(elsewhere / "dict", [f"game.queries={{_target_:builtins.open,file:'{victim}',mode:w}}"])
    searchpath = crafted(elsewhere / "hydra", [f"hydra.searchpath=[file://{root}]"])
    store = f"sqlite:///{root}/store/mlflow.db"   # (a local store's own folder would be trusted: not the crafted ones')
    init_sqlite_store(store)
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("crafted")).info.run_id
    client.set_tag(run_id, "checkpoint_dir", str(opener.parent))  # what anyone who can write the store can set
    cases = {
        "read_pickle": [f"resume={read_pickle}"],
        "open": [f"resume={opener.parent}"],
        "dict": [f"resume={as_dict}"],
        "hydra": [f"resume={searchpath}"],
        "tag": [f"resume={run_id}", f"logger.tracking_uri={store}"],
        "tag_trusted": [f"resume={run_id}", f"logger.tracking_uri={store}", "trust_checkpoint_dir_tag=true"],
    }
    argvs = [{"argv": [*tiny_overrides(outputs), *extra], "env": {"HF_HUB_OFFLINE": "1"}} for extra in cases.values()]
    (root / "cases.json").write_text(json.dumps(argvs))
    batch = subprocess.run([sys.executable, str(CLI_BATCH), str(root / "cases.json"),
                            str(root / "results.json")], capture_output=True, text=True, timeout=300)
    assert batch.returncode == 0, batch.stderr[-3000:]
    results = dict(zip(cases, json.loads((root / "results.json").read_text()), strict=True))
    return {"results": results, "root": root, "outputs": outputs, "elsewhere": elsewhere, "victim": victim,
            "marker": marker, "client": client, "run_id": run_id}


@pytest.mark.parametrize("case, named", [
    ("read_pickle", "sets `_target_` 'pandas.read_pickle', which is not one of the project's own"),
    ("open", "sets `_target_` 'builtins.open', which is not one of the project's own"),
    ("dict", "sets `_target_` 'builtins.open', which is not one of the project's own"),
    ("hydra", "sets a Hydra key, which a run never saves"),
    ("tag", "the run's `checkpoint_dir` tag names"),
    ("tag_trusted", "sets `_target_` 'builtins.open', which is not one of the project's own"),
])
def test_a_crafted_checkpoint_is_refused_in_one_line(world, case, named):
    res = world["results"][case]
    lines = [line for line in res["stderr"].splitlines() if line.strip()]
    assert res["rc"] == 2 and "Traceback" not in res["stderr"], res["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: resume=") and named in lines[0], res["stderr"]


def test_nothing_was_touched(world):
    assert world["victim"].read_text() == VICTIM_TEXT          # builtins.open(mode=w) never ran
    assert not world["marker"].exists()                        # the pickle was never loaded
    assert not (world["outputs"] / "toy_world").exists()       # nothing was built
    assert not list(world["elsewhere"].rglob("run.lock"))      # no checkpoint folder was locked
    run = world["client"].get_run(world["run_id"])
    assert run.info.status == "RUNNING" and "resumed_from_step" not in run.data.tags   # the tagged run untouched


def test_a_saved_target_is_used_only_when_this_command_line_names_it():
    where = "resume='x'"
    saved = ["game=grpo_data", "reward._target_=tests.helpers.step_probe.ProbeReward", "algorithm.advantage=rloo"]
    with pytest.raises(UnsafeSavedStateError,
                       match=r"saved override 'reward._target_=tests.helpers.step_probe.ProbeReward'"):
        check_saved_overrides(saved, ["trainer.max_steps=4"], where)
    # named again: replaced
    check_saved_overrides(saved, ["reward._target_=tests.helpers.step_probe.ProbeReward"], where)
    check_saved_overrides(["reward=tiny_rm", "+tags.arm=lsp", "reward._target_=lsp_exp.tasks.arith.rewards.verifier"],
                          [], where)                                               # the project's own: kept
    with pytest.raises(UnsafeSavedStateError, match="hydra/launcher=x.*sets a Hydra key"):
        check_saved_overrides(["hydra/launcher=x"], [], where)
    with pytest.raises(UnsafeSavedStateError, match="hold a int"):
        check_saved_overrides([3], [], where)


def test_every_target_of_the_recomposed_config_is_checked_without_importing_it():
    """An interpolation that resolves to a foreign target, or one in a list, is caught in the composed
    config; the project's own groups (every option of every group) pass; nothing is imported."""
    assert {"lsp_exp.core.models.HFModel", "lsp_exp.tasks.arith.task.ArithTask",
            "lsp_exp.rl.advantages.rloo_advantage"} <= project_targets()
    where = "resume='x'"
    for overrides in ([], ["game=grpo_data", "reward=composite"], ["reward=reward_model", "task=prompts"]):
        check_config_targets(compose_config("train", overrides), set(), where)
    cfg = compose_config("train", ["+tags.t=nowhere_module_xyz.run", "game.queries._target_=${tags.t}"])
    with pytest.raises(UnsafeSavedStateError, match=r"game.queries._target_='nowhere_module_xyz.run'"):
        check_config_targets(cfg, set(), where)
    assert "nowhere_module_xyz" not in sys.modules
    check_config_targets(cfg, targets_named(["game.queries._target_=nowhere_module_xyz.run"]), where)
    listed = compose_config("train", ["+extra=[{_target_:os.system}]"])
    with pytest.raises(UnsafeSavedStateError, match=r"extra\[0\]._target_='os.system'"):
        check_config_targets(listed, set(), where)


def test_a_model_folder_from_a_store_runs_none_of_its_code(tmp_path):
    """What `init_from=<run id>` and `lsp-eval run=<run id>` load from a run's `model/` artifact is
    weights: a config.json whose `auto_map` names a module in the folder loads as the plain
    architecture (no trust_remote_code) and the module never runs. (A `.bin` that is a pickle:
    tests/cli/test_bad_inputs.py.)"""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsp_exp.core.models import HFModel

    marker, folder = tmp_path / "pwned", tmp_path / "model"
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=64)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"import os\nos.system('touch {marker}')\n"
                                    "from transformers import LlamaConfig as EvilConfig, "
                                    "LlamaForCausalLM as EvilModel\n")
    policy = HFModel().policy(str(folder))
    assert type(policy).__name__ == "LlamaForCausalLM" and not marker.exists()
