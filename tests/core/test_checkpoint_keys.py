"""A resume loads exactly this run's weights: a checkpoint of another shape (LoRA vs full, other target
modules) is refused in one line, never loaded in part (lsp_exp/core/checkpoint_keys.py). Under FSDP2
(trainer=fsdp_cpu) a LoRA run with the judge resumes, and a mismatched resume is refused."""
import subprocess
import sys

import mlflow
import pytest
import torch

from lsp_exp.core.checkpoint_keys import CheckpointMismatchError, check_checkpoint_keys

from tests.helpers.tiny_run import SHARDING_SETUP, tiny_overrides


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.body = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(1))


def test_a_full_checkpoint_may_name_a_tied_weight_once():
    model = Tied()
    check_checkpoint_keys(set(model.state_dict()), model)
    check_checkpoint_keys({"embed.weight", "body.weight", "body.bias", "scale"}, model)   # FSDP's gathered dict
    check_checkpoint_keys({"head.weight", "body.weight", "body.bias", "scale"}, model)


def test_a_checkpoint_of_another_shape_is_refused_in_one_line():
    model = Tied()
    with pytest.raises(CheckpointMismatchError) as err:
        check_checkpoint_keys({"embed.weight", "body.weight", "scale", "body.lora_A.weight"}, model)
    message = str(err.value)
    assert "1 missing: body.bias" in message and "1 unexpected: body.lora_A.weight" in message and "\n" not in message
    with pytest.raises(CheckpointMismatchError, match="1 missing: scale"):
        check_checkpoint_keys({"embed.weight", "body.weight", "body.bias"}, model)


def test_with_frozen_weights_only_the_trainable_ones_are_expected():
    model = Tied()
    model.embed.requires_grad_(False)
    check_checkpoint_keys({"body.weight", "body.bias"}, model)
    with pytest.raises(CheckpointMismatchError, match="2 unexpected: embed.weight, scale"):
        check_checkpoint_keys({"body.weight", "body.bias", "embed.weight", "scale"}, model)


def _cli(shared_outputs, store, *extra):
    args = [*tiny_overrides(shared_outputs, *SHARDING_SETUP, *extra), f"logger.tracking_uri=sqlite:///{store}/mlflow.db",
            f"logger.artifact_location={store}/artifacts", "trainer=fsdp_cpu"]
    return subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *args], capture_output=True, text=True,
                          timeout=600)


def test_fsdp_lora_with_the_judge_resumes_and_a_full_resume_of_it_is_refused(shared_outputs, tmp_path):
    lora = ["game=lsp", "game.judge.max_new_tokens=8", "model.lora.enabled=true", "trainer.checkpoint_every=1",
            f"trainer.checkpoint_dir={tmp_path}/ckpt"]
    first = _cli(shared_outputs, tmp_path, *lora, "trainer.max_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = next((tmp_path / "ckpt").rglob("step_0000001.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])   # only the adapter
    resumed = _cli(shared_outputs, tmp_path, *lora, "trainer.max_steps=2", f"resume={ckpt}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lsp-exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/judge/score")) == [0, 1]

    last = next((tmp_path / "ckpt").rglob("step_0000002.ckpt"))   # (the resume kept only its newest)
    refused = _cli(shared_outputs, tmp_path, *lora, "model.lora.enabled=false", "trainer.max_steps=3",
                   f"resume={last}")
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert "the checkpoint's weights are not this run's model" in lines[0] and "missing" in lines[0], lines
