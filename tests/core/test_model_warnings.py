"""A real-model run is quiet: `lsp-train` with LoRA over a Qwen-style checkpoint and activation
checkpointing, both kinds of warning shown every time (`python -W always::...`), prints no
FutureWarning (Python shows those to every user) and no DeprecationWarning raised at a line of the
project. peft reads transformers' deprecated `is_gradient_checkpointing` while it wraps the model;
core/models.py `peft_wrapping` silences exactly that warning there."""
from __future__ import annotations

import os
import subprocess
import sys

import mlflow

from tests.helpers.real_models import REAL_RUN, save_tiny_model, save_tiny_reward_model


def test_a_lora_run_with_checkpointing_prints_no_deprecation_warning(tmp_path):
    path = save_tiny_model(tmp_path / "qwen", "qwen", chat_trained=True)
    reward = save_tiny_reward_model(tmp_path / "rm", "qwen")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [*REAL_RUN, f"model.path={path}", "model.name=qwen", "game=lsp_zero", "game.prompt=toy",
                 "model.lora.enabled=true", "model.lora.target_modules=[q_proj,v_proj]",
                 "model.gradient_checkpointing=true", "reward=reward_model", f"reward.path={reward}",
                 f"logger.tracking_uri={store}", f"paths.outputs={tmp_path / 'outputs'}", "trainer.num_threads=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-W", "always::FutureWarning", "-W", "always::DeprecationWarning",
                          "-m", "lsp_exp.cli.train", *overrides], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("lsp-exp").experiment_id])[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/kl/solver")]
    assert run.info.status == "FINISHED" and steps == [0, 1]   # both steps ran, under LoRA
    lines = out.stderr.splitlines()   # a warning's line: `<file>:<line>: <category>: <message>`
    futures = [line for line in lines if "FutureWarning" in line]   # shown to every user by default
    ours = [line for line in lines if "DeprecationWarning" in line and "/lsp_exp/" in line.split(":", 1)[0]]
    assert futures == [] and ours == []   # (mlflow's store raises a DeprecationWarning of its own sqlalchemy use)
