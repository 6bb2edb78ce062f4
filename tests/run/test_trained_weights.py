"""The weights lsp-eval loads (run/trained_weights.py): a LoRA run's adapter goes over what the run
started from, also when that is an earlier run's adapter (a chained "LSP then RL" run)."""
from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from lsp_exp.core.models import HFModel, peft_wrapping
from lsp_exp.run.trained_weights import Target, load_model
from tests.helpers.real_models import build_tiny_model


def adapter_over(model, folder, seed: int):
    """A LoRA adapter with non-zero weights over `model`, saved to `folder`; the wrapped model."""
    torch.manual_seed(seed)
    with peft_wrapping():
        wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    wrapped.save_pretrained(folder)
    return wrapped.eval()


def test_a_chained_adapter_goes_over_the_earlier_runs(tmp_path):
    base, tokenizer = build_tiny_model("llama3")
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    first = adapter_over(base, tmp_path / "first", seed=1).merge_and_unload()   # the earlier run's weights
    first.save_pretrained(tmp_path / "first_full")
    tokenizer.save_pretrained(tmp_path / "first_full")
    second = adapter_over(first, tmp_path / "second", seed=2)                  # the run's adapter over them
    ids = tokenizer("What is 7*8? Say hi.", return_tensors="pt")
    with torch.no_grad():
        expected = second(**ids).logits
    loader, base_path = HFModel(), str(tmp_path / "base")
    for below in (tmp_path / "first", tmp_path / "first_full"):   # an adapter (merged into the base), a full model
        model, _ = load_model(loader, base_path, Target("run", str(tmp_path / "second"), "x" * 32, str(below)))
        with torch.no_grad():
            assert torch.allclose(model(**ids).logits, expected, atol=1e-5)
    alone, _ = load_model(loader, base_path, Target("run", str(tmp_path / "second"), "x" * 32))
    with torch.no_grad():
        assert not torch.allclose(alone(**ids).logits, expected, atol=1e-3)   # the base alone is not what it trained on
