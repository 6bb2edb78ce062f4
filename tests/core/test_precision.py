"""The precision policy (docs/method.md §16): every update reaches the weights, whatever model.dtype.

A real-shaped layer (a Llama decoder layer of width 512, weights from N(0, 0.02), saved in bfloat16 like
a real checkpoint) takes k AdamW steps at the paper's learning rate from the same fixed gradients,
loaded the way `lsp-train` loads it; the weight change must equal a float32 run's within 1%. With
bfloat16 weights (the policy loaded in model.dtype, as before the fix) the bfloat16 run applies
about 1% of the update at lr 1e-6."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from lsp_exp.core.models import load_policy
from lsp_exp.core.precision import autocast, check_master_weights, compute_dtype, precision_problem

STEPS = 20


def _model_cfg(dtype: str, lora: bool):
    return OmegaConf.create({"dtype": dtype, "attn_implementation": "sdpa",
                             "lora": {"enabled": lora, "r": 16, "alpha": 32, "dropout": 0.0,
                                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"]}})


def _weight_change(path: str, dtype: str, lora: bool, lr: float, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Each trainable weight's change after STEPS AdamW steps of fixed gradients (the same every step);
    on CUDA with the fused AdamW the module builds (`optim.fused`)."""
    torch.manual_seed(1)   # the same LoRA initialisation in every run
    policy = load_policy(_model_cfg(dtype, lora), path).to(device)
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    before = {n: p.detach().float().clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(2)
    grads = {n: (torch.randn(p.shape, generator=g) * 1e-3).to(device) for n, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0,
                                  fused=device == "cuda")
    for _ in range(STEPS):
        for n, p in params.items():
            p.grad = grads[n].to(p.dtype)
        optimizer.step()
    return {n: p.detach().float().cpu() - before[n].cpu() for n, p in params.items()}


def applied_share(change: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """<change, reference> / |reference|^2 over all weights: 1 when the whole update was applied."""
    dot = sum(float((change[n] * reference[n]).sum()) for n in reference)
    return dot / sum(float(reference[n].pow(2).sum()) for n in reference)


def relative_error(change: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    num = sum(float((change[n] - reference[n]).pow(2).sum()) for n in reference)
    return (num / sum(float(reference[n].pow(2).sum()) for n in reference)) ** 0.5


@pytest.mark.parametrize("lr", [1e-6, 3e-5])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_update_reaches_the_weights(real_shaped, dtype, lora, lr):
    reference = _weight_change(real_shaped, "float32", lora, lr)
    change = _weight_change(real_shaped, dtype, lora, lr)
    error = relative_error(change, reference)
    assert error < 0.01, (applied_share(change, reference), error)
    norms = {n: float(reference[n].abs().max()) for n in reference}
    assert all(v > 0 for v in norms.values()), norms   # RMSNorm weights (1.0) move too


def test_the_policy_trains_float32_weights_over_a_bfloat16_base(real_shaped):
    full = load_policy(_model_cfg("bfloat16", lora=False), real_shaped)
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    lora = load_policy(_model_cfg("bfloat16", lora=True), real_shaped)
    assert {p.dtype for p in lora.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in lora.parameters() if not p.requires_grad} == {torch.bfloat16}   # the frozen base


def test_half_precision_trainable_weights_are_refused_naming_them(real_shaped):
    policy = load_policy(_model_cfg("float32", lora=False), real_shaped)
    policy.model.norm.weight.data = policy.model.norm.weight.data.bfloat16()
    with pytest.raises(ValueError, match="trainable parameter model.norm.weight is bfloat16"):
        check_master_weights(policy)


def test_compute_dtype_follows_model_dtype_or_bf16_mixed():
    assert compute_dtype("float32", "32-true") == torch.float32
    assert compute_dtype("bfloat16", "32-true") == torch.bfloat16
    assert compute_dtype("float32", "bf16-mixed") == torch.bfloat16


def test_a_float32_autocast_region_switches_an_outer_one_off():
    a = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with autocast("cpu", torch.float32):
            assert (a @ a).dtype == torch.float32


def test_a_new_autocast_region_reads_the_weights_after_an_optimizer_step():
    """Why the update's autocast region ends before the step (run/self_play.py `_update`): inside one
    region autocast caches its bfloat16 cast of a float32 weight, and serves it after the step."""
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast("cpu", torch.bfloat16):
        before = layer(x)
        with torch.no_grad():
            layer.weight.add_(1.0)
        stale = layer(x)
    with autocast("cpu", torch.bfloat16):
        fresh = layer(x)
    assert torch.equal(before, stale) and not torch.allclose(fresh, before)


@pytest.mark.parametrize("dtype, precision, key", [
    ("bfloat16", "bf16-true", "trainer.precision"), ("float32", "16-true", "trainer.precision"),
    ("float32", "16-mixed", "trainer.precision"), ("float32", "64-true", "trainer.precision"),
    ("float32", "transformer-engine", "trainer.precision"), ("float16", "32-true", "model.dtype"),
    ("float32", "fp8", "trainer.precision")])
def test_precisions_that_lose_updates_are_refused_in_one_line(dtype, precision, key):
    from tests.helpers.tiny_run import compose_config
    from lsp_exp.errors import ConfigError
    from lsp_exp.run.validation import validate

    assert precision_problem(dtype, precision)[0] == key
    cfg = compose_config("train", [f"model.dtype={dtype}", f"trainer.precision={precision}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"{key}=") and "\n" not in str(err.value)


def test_bf16_compute_starts_at_kl_zero_and_moves_float32_weights(tmp_path):
    """Two `lsp` steps of a Llama-3-style checkpoint with model.dtype=bfloat16 (full fine-tune,
    bfloat16 autocast on the CPU): the reference equals the policy at step 0 (KL exactly 0), the
    update moves the policy (KL > 0 at step 1), and the final weights are float32."""
    import mlflow
    from safetensors.torch import load_file

    from tests.helpers.tiny_run import compose_config
    from lsp_exp.cli.train import train
    from tests.helpers.real_models import save_tiny_model, save_tiny_reward_model
    from tests.helpers.real_models import REAL_RUN

    path = save_tiny_model(tmp_path / "llama3", "llama3", chat_trained=True)
    reward = save_tiny_reward_model(tmp_path / "rm", "llama3")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_config("train", [*REAL_RUN, f"model.path={path}", "model.name=llama3", "game=lsp_zero",
                                   "model.dtype=bfloat16", "model.lora.enabled=false", "game.temperature=0.7",
                                   "optim.lr=1e-2", "game.prompt=toy", f"paths.outputs={tmp_path / 'outputs'}",
                                   f"logger.tracking_uri={store}", "reward=reward_model", f"reward.path={reward}"])
    train(cfg)
    client = mlflow.MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("lsp-exp").experiment_id])[0]
    assert run.info.status == "FINISHED"
    kl = [m.value for m in client.get_metric_history(run.info.run_id, "train/kl/challenger")]
    assert kl[0] == 0.0 and kl[1] != 0.0, kl
    saved = next((tmp_path / "outputs").rglob("model.safetensors"))
    weights = load_file(str(saved))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    json.loads((saved.parent / "config.json").read_text())   # a loadable checkpoint beside them

