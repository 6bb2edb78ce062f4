"""Bad inputs: each is one line naming the key or the file, never a traceback.

The `lsp-train` cases run in one batch (tests/helpers/cli_batch.py, as in test_bad_configs.py), in an empty
working directory that must stay empty; a full disk is a real fault (RLIMIT_FSIZE: every write past
3000 bytes fails). The cases that need a model folder or an MLflow run with stored params are
called at the function that reads them, before any model is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_run import compose_config, tiny_overrides

CLI_BATCH = Path(__file__).resolve().parents[1] / "helpers" / "cli_batch.py"
BAD_UTF8 = b'{"prompt": "1+2", "answer": 3}\n{"prompt": "caf\xe9", "answer": 1}\n'
BINARY = bytes(range(256)) * 16

# (case, the lsp-train arguments after the tiny ones (<root>: this test's folder), what the one line must say)
CASES = [
    ("corrupt_config_json", "init_from=<root>/corrupt_model", "corrupt_model/config.json is not valid JSON"),
    ("resume_text_file", "resume=<root>/notes.txt", "notes.txt cannot be loaded safely"),
    ("outputs_under_a_file", "paths.outputs=<root>/a_file/outputs",
     "paths.outputs='<root>/a_file/outputs': is under a file"),
    ("run_dir_under_a_file", "hydra.run.dir=<root>/a_file/run", "hydra.run.dir='<root>/a_file/run': is under a file"),
    ("outputs_on_a_full_disk", "paths.outputs=<root>/full",
     "paths.outputs='<root>/full': cannot write there ([Errno 27] File too large)"),
    ("heldout_invalid_utf8", "task.heldout_path=<root>/bad_utf8.jsonl", "bad_utf8.jsonl: not a text file"),
    ("heldout_binary", "task.heldout_path=<root>/binary.jsonl", "binary.jsonl: not a text file"),
    ("heldout_infinity", "task.heldout_path=<root>/infinity.jsonl", "infinity.jsonl line 1: not a problem row"),
    ("heldout_deep_json", "task.heldout_path=<root>/deep.json",
     "deep.json line 1: not a problem row (JSON with prompt and an integer answer): JSON nested too deeply"),
    ("prompts_heldout_invalid_utf8", "task=prompts task.heldout_path=<root>/bad_utf8.jsonl",
     "bad_utf8.jsonl: not a UTF-8 text file (byte 46"),
    ("prompts_heldout_deep_json", "task=prompts task.heldout_path=<root>/deep.json",
     "deep.json: not a prompt file (JSON nested too deeply to read)"),
    ("init_from_missing_run_untracked", "logger=none init_from=0123456789abcdef0123456789abcdef",
     "there is no tracking store at sqlite:///<root>/cwd/mlflow.db"),
    ("resume_finished_run", "resume=<root>/finished/step_0000005.ckpt trainer.max_steps=5",
     "is FINISHED at step 5 and trainer.max_steps=5: nothing to train"),
    ("max_operand", "task.world.max_operand=-1", "task.world.max_operand=-1: must be at least 1"),
    ("lora_r", "model.lora.r=0", "model.lora.r=0: must be at least 1"),
]
ROOT = "<root>"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The files and the store the cases name, then every case through lsp-train in one batch."""
    import mlflow

    from lsp_exp.run.tracking import init_sqlite_store

    root = tmp_path_factory.mktemp("bad_inputs")
    outputs, cwd = root / "outputs", root / "cwd"
    cwd.mkdir()
    (root / "corrupt_model").mkdir()
    (root / "corrupt_model" / "config.json").write_text('{"model_type": "llama", ')
    (root / "notes.txt").write_text("hello world\n")
    (root / "a_file").write_text("a file, not a folder\n")
    (root / "bad_utf8.jsonl").write_bytes(BAD_UTF8)
    (root / "binary.jsonl").write_bytes(BINARY)
    (root / "infinity.jsonl").write_text('{"prompt": "1+2", "answer": Infinity, "difficulty": "one_op"}\n')
    (root / "deep.json").write_text("[" * 200_000)
    store = f"sqlite:///{outputs}/mlflow.db"
    init_sqlite_store(store)
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("finished")).info.run_id
    client.set_terminated(run_id, "FINISHED")
    (root / "finished").mkdir()
    torch.save({"global_step": 5, "pytorch-lightning_version": "2.6.6", "state_dict": {},
                "lsp": {"run_id": run_id, "overrides": [], "world_size": 1}}, root / "finished" / "step_0000005.ckpt")
    cases = []
    for name, args, _ in CASES:
        argv = [*tiny_overrides(outputs, arith=not name.startswith("prompts_")), *args.replace(ROOT, str(root)).split()]
        if name == "init_from_missing_run_untracked":  # MLflow's own default store: the working directory's
            argv = [a for a in argv if not a.startswith("logger.tracking_uri=")]
        cases.append({"argv": argv, "env": {"HF_HUB_OFFLINE": "1"}, "fsize": 3000 if "full_disk" in name else None})
    (root / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, str(CLI_BATCH), str(root / "cases.json"), str(root / "results.json")],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = dict(zip((name for name, _, _ in CASES), json.loads((root / "results.json").read_text()), strict=True))
    return {"results": results, "root": root, "cwd": cwd, "client": client, "run_id": run_id}


@pytest.mark.parametrize("name, args, named", CASES, ids=[name for name, _, _ in CASES])
def test_a_bad_input_is_one_line_naming_it(batch, name, args, named):
    res = batch["results"][name]
    lines = [line for line in res["stderr"].splitlines() if line.strip()]
    assert res["rc"] == 2, res["stderr"][-3000:]
    assert "Traceback" not in res["stderr"] and len(lines) == 1, res["stderr"][-3000:]
    assert lines[0].startswith("error: ") and named.replace(ROOT, str(batch["root"])) in lines[0], lines[0]


def test_the_bad_inputs_touched_nothing(batch):
    """No mlflow.db (nor anything else) in the working directory; the FINISHED run has no second
    logged model and is still FINISHED; the full disk's folder holds no partial file."""
    assert list(batch["cwd"].iterdir()) == []
    client, run_id = batch["client"], batch["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.search_logged_models([client.get_run(run_id).info.experiment_id]) == []
    assert [p.name for p in (batch["root"] / "full").iterdir()] == []


class Payload:
    """A pickle that touches a marker file when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_weights_that_are_a_pickle_payload_are_one_line_and_never_run(tmp_path):
    """A model folder whose pytorch_model.bin, or a LoRA adapter whose adapter_model.bin, is a pickle
    that would run a command: torch's weights_only load refuses it (nothing runs), one line names it."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsp_exp.core.models import HFModel, ModelLoadError

    marker = tmp_path / "pwned"
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    model.save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "evil")
    (tmp_path / "evil" / "model.safetensors").unlink()
    torch.save({"weight": Payload(marker)}, tmp_path / "evil" / "pytorch_model.bin")
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    torch.save({"weight": Payload(marker)}, tmp_path / "adapter" / "adapter_model.bin")
    for args, file in (((str(tmp_path / "evil"),), tmp_path / "evil" / "pytorch_model.bin"),
                       ((str(tmp_path / "base"), tmp_path / "adapter"), tmp_path / "adapter" / "adapter_model.bin")):
        with pytest.raises(ModelLoadError, match=f"model weights {file} cannot be loaded safely") as err:
            HFModel().policy(*args)
        assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("content, named", [
    (BAD_UTF8, "bad_utf8.jsonl: not a UTF-8 text file (byte 46: invalid continuation byte)"),
    (BINARY, "bad_utf8.jsonl: not a UTF-8 text file (byte 128: invalid start byte)"),
    (b"[" * 200_000, "bad_utf8.jsonl: not a prompt file (JSON nested too deeply to read)"),
    (b'{"prompt": "x"}\n' + b"[" * 200_000 + b"\n", "bad_utf8.jsonl line 2: not a prompt row (JSON nested too deeply"),
], ids=["invalid_utf8", "binary", "deep_json_list", "deep_jsonl_row"])
def test_a_bad_prompt_file_is_one_line_naming_it(tmp_path, content, named):
    """game.prompts_path and lsp-eval's prompt files (read before the model in lsp-eval; lsp-train
    turns the ValueError into its one line)."""
    from lsp_exp.core.prompts import read_prompt_rows

    path = tmp_path / "bad_utf8.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"^" + str(tmp_path).replace("/", r"\/")) as err:
        read_prompt_rows(path)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_lsp_eval_of_a_run_with_corrupt_params_fails_before_evaluating(tmp_path, monkeypatch):
    """A run whose stored game.group_size is not a number: lsp-eval run=<id> stops in one line naming
    the run and the param before the task or any model is built (it used to evaluate for minutes first)."""
    import mlflow

    import lsp_exp.cli.evaluate as evaluate
    from lsp_exp.run.chaining import InitFromError
    from lsp_exp.run.tracking import init_sqlite_store

    store = f"sqlite:///{tmp_path}/mlflow.db"
    init_sqlite_store(store)
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("corrupt", artifact_location=str(tmp_path / "art"))).info.run_id
    client.log_param(run_id, "game.challenger", "True")
    client.log_param(run_id, "game.group_size", "eight")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    client.log_artifacts(run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run_id)
    built = []
    cfg = compose_config("eval", [f"run={run_id}", f"logger.tracking_uri={store}", f"paths.outputs={tmp_path}"])
    real_build = evaluate.build
    monkeypatch.setattr(evaluate, "build", lambda *a, **k: built.append(a) or real_build(*a, **k))
    with pytest.raises(InitFromError, match=rf"run='{run_id}': its stored param game.group_size='eight' is not a "
                                            r"whole number >= 1 \(the run's params are corrupt\)") as err:
        evaluate.evaluate(cfg)
    assert built == [] and "\n" not in str(err.value)   # nothing built, no model loaded


@pytest.fixture
def full_disk(tmp_path):
    """A real full disk: a 64 KiB tmpfs filled to the last byte (needs root and mount; skipped otherwise)."""
    mount = tmp_path / "full_tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        fill = os.open(mount / "fill", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fill, b"\0" * 512):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fill)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("key", ["paths.outputs", "hydra.run.dir"])
def test_a_run_folder_on_a_real_full_disk_is_one_line(tmp_path, full_disk, capsys, key):
    """The check Hydra's callback runs before the run folder is made (lsp_exp/run/output_dirs.py), on
    a tmpfs with no byte left: one line naming the key, exit 2, and no folder of the run's left there."""
    from omegaconf import OmegaConf

    from lsp_exp.run.output_dirs import OutputFolders

    folders = {"paths.outputs": str(tmp_path / "outputs"), "hydra.run.dir": str(tmp_path / "outputs" / "run")}
    folders[key] = str(full_disk / "run")
    config = OmegaConf.create({"paths": {"outputs": folders["paths.outputs"]},
                               "hydra": {"run": {"dir": folders["hydra.run.dir"]}}})
    with pytest.raises(SystemExit) as exit_:
        OutputFolders().on_run_start(config)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {key}={str(full_disk / 'run')!r}: cannot write there ([Errno 28] No space left on device)"]
    assert sorted(p.name for p in full_disk.iterdir()) == (["fill", "run"] if key == "paths.outputs" else ["fill"])
