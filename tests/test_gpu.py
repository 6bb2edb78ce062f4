"""On a CUDA device (skipped without one): every game, LoRA and full fine-tune, a judge and a reward
model on the device, bf16 autocast and bf16 weights; evaluation leaves the device's RNG as it was.

`pytest -m gpu` runs these on a GPU machine. `LSP_TEST_DEVICE=cpu pytest -m gpu` runs the same
tests on the CPU, to check the tests themselves where no GPU is at hand."""
from __future__ import annotations

import math
import os

import mlflow
import pytest
import torch

from lsp_exp.cli.train import train

from conftest import compose_config, tiny_overrides
from real_models import save_tiny_model, save_tiny_reward_model
from test_train_e2e import TINY_RM

DEVICE = os.environ.get("LSP_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]
ON_DEVICE = ["trainer.accelerator=" + ("gpu" if DEVICE == "cuda" else "cpu"), "trainer.devices=1",
             "trainer.max_steps=3", "trainer.checkpoint_every=0", "+tags.case=gpu"]


def last_run(store: str):
    client = mlflow.MlflowClient(store)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    return run, {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


@pytest.mark.parametrize("game, lora, precision, reward", [
    ("lsp", False, "bf16-mixed", "arithmetic"), ("lsp", True, "32-true", "tiny_rm"),
    ("lsp_zero", False, "32-true", "arithmetic"), ("lsp_zero", True, "bf16-mixed", "arithmetic"),
    ("grpo_data", False, "bf16-mixed", "tiny_rm"), ("grpo_data", True, "32-true", "arithmetic")])
def test_every_game_runs_on_the_device(shared_outputs, game, lora, precision, reward):
    train(compose_config("train", tiny_overrides(
        shared_outputs, *ON_DEVICE, f"game={game}", f"model.lora.enabled={lora}", f"trainer.precision={precision}",
        f"reward={reward}", *(TINY_RM if reward == "tiny_rm" else []))))
    run, metrics = last_run(f"sqlite:///{shared_outputs}/mlflow.db")
    assert run.info.status == "FINISHED" and run.data.params["game.name"] == game
    assert len(metrics["train/solver/reward"]) == 3 and "eval/accuracy" in metrics
    assert all(math.isfinite(v) for v in metrics["train/grad_norm"]), metrics["train/grad_norm"]
    if game == "lsp":
        assert "train/judge/score" in metrics


def test_a_llama3_style_model_in_bf16_plays_lsp_with_a_reward_model(tmp_path):
    """Real conventions on the device: pad = eos, two end ids, bf16 weights, a raw reward model."""
    path = save_tiny_model(tmp_path / "llama3", "llama3", chat_trained=True)
    reward = save_tiny_reward_model(tmp_path / "rm", "llama3")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    train(compose_config("train", [
        *ON_DEVICE, "task=prompts", f"model.path={path}", "model.name=llama3", "model.dtype=bfloat16",
        "trainer.precision=bf16-true" if DEVICE == "cuda" else "trainer.precision=32-true",
        "reward=reward_model", f"reward.path={reward}", "reward.dtype=bfloat16", "game=lsp",
        "game.n_queries=4", "game.group_size=3", "game.max_query_tokens=16", "game.max_answer_tokens=8",
        "game.judge.max_new_tokens=16", "game.temperature=0.7", "eval.judge_pairs=0", "eval.samples=0",
        f"paths.outputs={tmp_path}", f"logger.tracking_uri={store}", "trainer.enable_progress_bar=false"]))
    run, metrics = last_run(store)
    assert run.info.status == "FINISHED" and len(metrics["train/grad_norm"]) == 3


def test_evaluation_leaves_the_devices_rng_as_it_was():
    from lsp_exp.eval.heldout import evaluate_solver
    from lsp_exp.tasks.base import HeldoutSet
    from test_generation import tiny

    model, tokenizer = tiny()
    model.to(DEVICE)
    problems = HeldoutSet(["1+2", "12+3*4"], lambda i, text: text == ["3", "42"][i], [["one_op"], ["precedence"]],
                          ["3", "42"])
    torch.manual_seed(5)
    cpu, device = torch.get_rng_state(), (torch.cuda.get_rng_state() if DEVICE == "cuda" else None)
    first = evaluate_solver(model, tokenizer, problems, samples=4, max_new_tokens=3)
    assert torch.equal(torch.get_rng_state(), cpu)
    if DEVICE == "cuda":
        assert torch.equal(torch.cuda.get_rng_state(), device)
    assert evaluate_solver(model, tokenizer, problems, samples=4, max_new_tokens=3) == first
