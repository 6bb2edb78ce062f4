"""On a CUDA device (skipped without one): every game, LoRA and full fine-tune, a judge and a reward
model on the device, bf16 autocast and bf16 weights; evaluation leaves the device's RNG as it was.

`pytest -m gpu` runs these on a GPU machine. `LSP_TEST_DEVICE=cpu pytest -m gpu` runs the same
tests on the CPU, to check the tests themselves where no GPU is at hand. They need no MLflow
(`logger=none`; each step's figures are recorded from the module), so they run in a GPU image that
has none (experiments/gpu_check)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from lsp_exp.cli.train import train
from lsp_exp.run.self_play import SelfPlayModule

from tests.helpers.tiny_run import TINY_RM, compose_config, tiny_overrides
from tests.helpers.real_models import save_tiny_model, save_tiny_reward_model


DEVICE = os.environ.get("LSP_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]
ON_DEVICE = ["trainer.accelerator=" + ("gpu" if DEVICE == "cuda" else "cpu"), "trainer.devices=1",
             "trainer.max_steps=3", "trainer.checkpoint_every=0", "logger=none"]


@pytest.fixture
def steps(monkeypatch) -> list[dict[str, float]]:
    """Every step's logged figures, as the module hands them to Lightning."""
    recorded = []
    real = SelfPlayModule.log_dict

    def record(self, metrics, *args, **kwargs):
        if "train/grad_norm" in metrics:
            recorded.append(dict(metrics))
        return real(self, metrics, *args, **kwargs)

    monkeypatch.setattr(SelfPlayModule, "log_dict", record)
    return recorded


@pytest.mark.parametrize("game, lora, precision, reward", [
    ("lsp", False, "bf16-mixed", "arithmetic"), ("lsp", True, "32-true", "tiny_rm"),
    ("lsp_zero", False, "32-true", "arithmetic"), ("lsp_zero", True, "bf16-mixed", "arithmetic"),
    ("grpo_data", False, "bf16-mixed", "tiny_rm"), ("grpo_data", True, "32-true", "arithmetic")])
def test_every_game_runs_on_the_device(shared_outputs, steps, game, lora, precision, reward):
    history = train(compose_config("train", tiny_overrides(
        shared_outputs, *ON_DEVICE, f"game={game}", f"model.lora.enabled={lora}", f"trainer.precision={precision}",
        f"reward={reward}", *(TINY_RM if reward == "tiny_rm" else []))))
    assert len(steps) == 3 and sorted(history) == [0, 2, 3] and "accuracy" in history[3]
    assert all(math.isfinite(s["train/grad_norm"]) for s in steps), steps
    assert all(math.isfinite(s["train/kl/solver"]) for s in steps)
    if game == "lsp":
        assert all(0 <= s["train/judge/score"] <= 7 for s in steps)


def test_a_llama3_style_model_in_bf16_plays_lsp_with_a_reward_model(tmp_path, steps):
    """Real conventions on the device: pad = eos, two end ids, bf16 compute over float32 master weights,
    a raw reward model."""
    path = save_tiny_model(tmp_path / "llama3", "llama3", chat_trained=True)
    reward = save_tiny_reward_model(tmp_path / "rm", "llama3")
    train(compose_config("train", [
        *ON_DEVICE, "task=prompts", f"model.path={path}", "model.name=llama3", "model.dtype=bfloat16",
        "trainer.precision=bf16-mixed" if DEVICE == "cuda" else "trainer.precision=32-true",
        "reward=reward_model", f"reward.path={reward}", "reward.dtype=bfloat16", "game=lsp",
        "game.n_queries=4", "game.group_size=3", "game.max_query_tokens=16", "game.max_answer_tokens=8",
        "game.judge.max_new_tokens=16", "game.temperature=0.7", "eval.judge_pairs=0", "eval.samples=0",
        f"paths.outputs={tmp_path}", "trainer.enable_progress_bar=false"]))
    assert len(steps) == 3 and all(math.isfinite(s["train/grad_norm"]) for s in steps)
    assert all(math.isfinite(s["train/solver/reward"]) for s in steps)   # a raw reward-model score


def test_evaluation_leaves_the_devices_rng_as_it_was():
    from lsp_exp.eval.heldout import evaluate_solver
    from lsp_exp.tasks.base import HeldoutSet
    from tests.core.test_generation import tiny

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


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_bf16_compute_keeps_every_update_and_float32_gradients_on_the_device(real_shaped, lora):
    """docs/method.md §16 on the device: a real-shaped layer (width 512) loaded with model.dtype=bfloat16
    takes 20 fused-AdamW steps at lr 1e-6 equal to a float32 run's within 1%, and a forward and
    backward under bf16 autocast leave float32, finite gradients on every trainable weight."""
    from lsp_exp.core.models import load_policy
    from lsp_exp.core.precision import autocast
    from tests.core.test_precision import _model_cfg, _weight_change, relative_error

    device = "cuda" if DEVICE == "cuda" else "cpu"
    reference = _weight_change(real_shaped, "float32", lora, 1e-6, device)
    change = _weight_change(real_shaped, "bfloat16", lora, 1e-6, device)
    assert relative_error(change, reference) < 0.01
    policy = load_policy(_model_cfg("bfloat16", lora), real_shaped).to(device)
    ids = torch.randint(0, 256, (2, 16), device=device)
    with autocast(device, torch.bfloat16):
        loss = policy(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)

