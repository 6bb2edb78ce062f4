"""The conformance matrix, (c): one self-play step of `lsp-train` (game=lsp: Challenger, Solver, the
judge) on every architecture of tests/helpers/architectures.py, with LoRA and as a full
fine-tune, saved and loaded back as a real checkpoint is. After the step the reference (the
adapter-disabled policy, or the frozen copy) scores exactly as the checkpoint loaded afresh, and the
update moved the policy. An architecture the start-up check refuses stops in one line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.helpers.architectures import ARCHITECTURES, BY_NAME, build
from tests.helpers.tiny_run import compose_config
from lsp_exp.core.logprobs import token_logprobs
from lsp_exp.core.special_tokens import ModelSetupError
from tests.helpers.conformance import REFUSED, STEP, batch, one_step, padded

@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("name", [a.name for a in ARCHITECTURES])
def test_c_one_lsp_step_and_the_reference_is_the_initial_model(name, lora, tmp_path):
    if name in REFUSED:
        with pytest.raises(ModelSetupError, match=f"^model '{tmp_path / name}' \\(\\w+\\): {re.escape(REFUSED[name])}"):
            one_step(name, lora, tmp_path)
        return
    modules, path = one_step(name, lora, tmp_path)
    assert len(modules) == 1
    module = modules[0]
    metrics = module.trainer.callback_metrics
    assert torch.isfinite(metrics["train/grad_norm"]) and float(metrics["train/grad_norm"]) > 0
    assert float(metrics["train/kl/solver"]) == pytest.approx(0.0, abs=1e-6)   # step 0: policy = reference

    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                   attn_implementation=BY_NAME[name].attn).eval()
    _, tok = build(name)
    _, ids, mask = batch(initial, padded(tok).pad_token_id)
    counted = (mask[:, :-1] * mask[:, 1:]).bool()
    with torch.no_grad():
        want = token_logprobs(initial, ids, mask, temperature=0.7)
        with module.reference.model() as reference:
            assert (reference is module.policy) == lora          # LoRA: the policy with its adapter off
            got = token_logprobs(reference, ids, mask, temperature=0.7)
        moved = token_logprobs(module.policy, ids, mask, temperature=0.7)
    torch.testing.assert_close(got[counted], want[counted], rtol=1e-5, atol=1e-5)
    assert (moved[counted] - want[counted]).abs().max() > 1e-4                 # the update changed the policy


@pytest.mark.slow
def test_lsp_train_refuses_an_architecture_that_cannot_pass_in_one_line(tmp_path):
    """The command line: RecurrentGemma stops at start with exit code 2 and one line naming what fails."""
    import subprocess
    import sys

    model, tok = build("recurrent_gemma")
    path = tmp_path / "rg"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *STEP, f"model.path={path}",
                          "model.lora.target_modules=[q_proj,v_proj]", f"paths.outputs={tmp_path / 'out'}"],
                         capture_output=True, text=True, timeout=600,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "",
                              "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("[transformers]")]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith(f"error: model '{path}' (RecurrentGemmaForCausalLM): {REFUSED['recurrent_gemma']}")


def test_the_memory_check_counts_the_logits_once_the_model_chose_the_logits_path(tmp_path, monkeypatch):
    """Before the weights are loaded the estimate assumes the fused output layer; Gemma 2's soft cap
    makes its check choose the logits path, so lsp-train estimates again with the logits and refuses
    a budget that only the fused path would fit (lsp_exp/cli/train.py, run/memory_check.py)."""
    import lsp_exp.run.memory_check as memory_check
    from lsp_exp.cli.train import train
    from lsp_exp.run.memory_check import estimate_for
    from lsp_exp.errors import ConfigError

    model, tok = build("gemma2")
    path = tmp_path / "gemma2"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    cfg = compose_config("train", [*STEP, f"model.path={path}", "model.name=gemma2", "model.lora.enabled=false",
                                   f"model.attn_implementation={BY_NAME['gemma2'].attn}",
                                   "game.max_answer_tokens=64", f"paths.outputs={tmp_path / 'out'}"])
    fused, plain = estimate_for(cfg, str(path)).total, estimate_for(cfg, str(path), fused_head=False).total
    assert plain > fused   # the completion's logits and their gradient
    monkeypatch.setattr(memory_check, "device_memory", lambda accelerator: ((fused + plain) / 2, "a test budget"))
    with pytest.raises(ConfigError, match=r"^estimated peak memory .* exceeds a test budget"):
        train(cfg)
