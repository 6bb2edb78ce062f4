"""The conformance matrix on a CUDA device in bfloat16 (skipped without one), for three
architectures: Llama (fused output layer), Gemma 2 (soft-capped logits) and Falcon-H1 (a logit
multiplier, Mamba states its cache cannot repeat). `LSP_TEST_DEVICE=cpu pytest -m gpu` runs them on
the CPU. With LSP_CONFORMANCE_REPORT set, each test appends its measured differences (JSON lines)
there: experiments/gpu_check/check.py's `conformance` item reports them.

- float32 on the device: log-probs and log-prob gradients against log_softmax(model(row alone).logits
  / T) to 1e-5 (gradients: of each tensor's largest entry);
- bfloat16 (float32 master weights under bf16 autocast, as a full fine-tune; bf16 weights, as a LoRA
  base): the output layer chosen by the check as in float32, the start-up check passing, and the
  log-probs within its tolerance;
- one lsp-train step with LoRA and one full fine-tune in bf16-mixed, the reference scoring as the
  checkpoint loaded afresh;
- dropout off: sampling in training mode draws what eval mode would.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers.architectures import BY_NAME, build
from lsp_exp.core.conformance import check_architecture
from lsp_exp.core.dropout import disable_dropout
from lsp_exp.core.fused_head import _decoder_and_head, fused_difference, output_layer
from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.core.logprobs import token_logprobs
from lsp_exp.core.precision import autocast
from lsp_exp.core.probe import network_tolerance
from tests.helpers.conformance import T, alone, batch, one_step, padded, with_dropout

DEVICE = os.environ.get("LSP_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]
GPU_ARCHITECTURES = ["llama", "gemma2", "falcon_h1"]
ON_DEVICE = ["trainer.accelerator=" + ("gpu" if DEVICE == "cuda" else "cpu"), "trainer.devices=1",
             "model.dtype=bfloat16", "trainer.precision=" + ("bf16-mixed" if DEVICE == "cuda" else "32-true")]


def report(**figures) -> None:
    path = os.environ.get("LSP_CONFORMANCE_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def scored(model, tok):
    """(the project's log-probs [4, 11], log_softmax(model(row alone).logits / T) at the same places,
    the counted positions)."""
    rows, ids, mask = batch(model, padded(tok).pad_token_id)
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    counted = (mask[:, :-1] * mask[:, 1:]).bool()
    logp = token_logprobs(model, ids, mask, temperature=T)
    want = torch.zeros_like(logp)
    for i, row in enumerate(rows):
        want[i, 12 - len(row):] = alone(model, row.to(DEVICE))[0]
    return logp, want, counted


@pytest.mark.parametrize("name", GPU_ARCHITECTURES)
def test_float32_log_probs_and_gradients_on_the_device(name):
    model, tok = build(name)
    disable_dropout(model)
    model.to(DEVICE).train()
    params = [p for p in model.parameters() if p.requires_grad]
    logp, want, counted = scored(model, tok)
    weights = torch.randn(counted.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = torch.autograd.grad((logp * weights)[counted].sum(), params, allow_unused=True, retain_graph=True)
    expected = torch.autograd.grad((want * weights)[counted].sum(), params, allow_unused=True)
    diff = float((logp - want)[counted].abs().max())
    grad = max(float((a - b).abs().max()) / max(float(b.abs().max()), 1.0)
               for a, b in zip(got, expected, strict=True) if a is not None and b is not None)
    report(name=name, check="float32", logp=diff, gradient=grad, fused=output_layer(model) is not None)
    assert diff <= 1e-5 and grad <= 1e-5


@pytest.mark.parametrize("weights", ["float32", "bfloat16"], ids=["master-fp32", "bf16-base"])
@pytest.mark.parametrize("name", GPU_ARCHITECTURES)
def test_bf16_output_layer_start_up_check_and_log_probs(name, weights):
    model, tok = build(name)
    disable_dropout(model)
    model.to(DEVICE, dtype=getattr(torch, weights))
    with autocast(DEVICE, torch.bfloat16), torch.no_grad():
        diff, tol, _ = fused_difference(model, *_decoder_and_head(model))
        fused = output_layer(model) is not None
        found = check_architecture(model, padded(tok), name)
        logp, want, counted = scored(model, tok)
        error = float((logp - want)[counted].abs().max())
        tolerance = network_tolerance(model, model(input_ids=torch.arange(12, device=DEVICE)[None]).logits)
    report(name=name, check=f"bf16 {weights}", fused_diff=diff, fused_tol=tol, fused=fused, logp=error,
           logp_tol=tolerance, **{k: v for k, v in found.items() if k != "fused"})
    assert fused == BY_NAME[name].fused_exact
    assert error <= tolerance


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("name", GPU_ARCHITECTURES)
def test_one_bf16_lsp_step_and_the_reference_is_the_initial_model(name, lora, tmp_path):
    from transformers import AutoModelForCausalLM

    (module,), path = one_step(name, lora, tmp_path, *ON_DEVICE)
    metrics = module.trainer.callback_metrics
    assert torch.isfinite(metrics["train/grad_norm"]) and float(metrics["train/grad_norm"]) > 0
    assert float(metrics["train/kl/solver"]) == pytest.approx(0.0, abs=1e-6)   # step 0: policy = reference
    stored = torch.bfloat16 if lora else torch.float32                          # the precision policy's
    initial = AutoModelForCausalLM.from_pretrained(path, dtype=stored, attn_implementation=BY_NAME[name].attn)
    initial.to(DEVICE).eval()
    _, tok = build(name)
    compute = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    with autocast(DEVICE, compute), torch.no_grad():
        want, _, counted = scored(initial, tok)
        with module.reference.model() as reference:
            got, _, _ = scored(reference, tok)
        moved, _, _ = scored(module.policy, tok)
        tolerance = network_tolerance(initial, initial(input_ids=torch.arange(12, device=DEVICE)[None]).logits)
    error = float((got - want)[counted].abs().max())
    report(name=name, check=f"step {'lora' if lora else 'full'}", reference=error, tolerance=tolerance,
           moved=float((moved - want)[counted].abs().max()), grad_norm=float(metrics["train/grad_norm"]))
    assert error <= tolerance


@pytest.mark.parametrize("name", GPU_ARCHITECTURES)
def test_sampling_in_training_mode_draws_what_eval_mode_does(name, tmp_path):
    from omegaconf import OmegaConf

    from lsp_exp.core.models import load_policy

    (model, tok), _ = with_dropout(name)
    model.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"dtype": "bfloat16", "attn_implementation": BY_NAME[name].attn, "lora": {
        "enabled": True, "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": list(BY_NAME[name].lora_targets)}})
    policy = load_policy(cfg, str(tmp_path)).to(DEVICE)
    prompts = chat_prompts(padded(tok), ["Hi", "What is 12+3*4?"])
    sampled = {}
    with autocast(DEVICE, torch.bfloat16):
        for mode in ("train", "eval"):
            getattr(policy, mode)()
            sampled[mode] = generate(policy, tok, prompts, max_new_tokens=6, num_return_sequences=3,
                                     generator=torch.Generator(DEVICE).manual_seed(3)).input_ids
    assert torch.equal(sampled["train"], sampled["eval"])
