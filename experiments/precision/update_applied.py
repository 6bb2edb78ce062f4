"""How much of each AdamW update reaches the weights, before and after the precision policy
(docs/method.md §16). Prints, per weights x LoRA/full x learning rate, the share of a float32
run's weight change that the run applies: <change, change_fp32> / |change_fp32|^2.

    .venv/bin/python experiments/precision/update_applied.py

"before" loads the policy in model.dtype (bfloat16 weights, gradients and AdamW moments; for LoRA
the adapter cast to bfloat16 as trainer.precision=bf16-true did); "after" loads it the way lsp-train
does now (core/models.py load_policy: float32 trainable weights). A Llama decoder layer of width 512,
weights from N(0, 0.02) saved in bfloat16, 20 steps of the same fixed gradients."""
from __future__ import annotations

import tempfile

import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.core.models import load_policy

STEPS, TARGETS = 20, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cfg(dtype: str, lora: bool):
    return OmegaConf.create({"dtype": dtype, "attn_implementation": "sdpa",
                             "lora": {"enabled": lora, "r": 16, "alpha": 32, "dropout": 0.0,
                                      "target_modules": TARGETS}})


def change(path: str, dtype: str, lora: bool, lr: float, before: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    policy = load_policy(cfg(dtype, lora), path)
    if before:   # the old behaviour: every weight (and the adapter, under bf16-true) in model.dtype
        policy.to(getattr(torch, dtype))
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    start = {n: p.detach().float().clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(2)
    grads = {n: torch.randn(p.shape, generator=g) * 1e-3 for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    for _ in range(STEPS):
        for n, p in params.items():
            p.grad = grads[n].to(p.dtype)
        opt.step()
    return {n: p.detach().float() - start[n] for n, p in params.items()}


def share(a, ref) -> float:
    return sum(float((a[n] * ref[n]).sum()) for n in ref) / sum(float(ref[n].pow(2).sum()) for n in ref)


def main() -> None:
    config = LlamaConfig(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=4, initializer_range=0.02,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as path:
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
        print("| model.dtype | policy | lr | before (bf16 weights) | after (fp32 master) |")
        print("|---|---|---|---|---|")
        for lora in (False, True):
            for lr in (1e-6, 3e-5):
                ref = change(path, "float32", lora, lr, before=False)
                old = share(change(path, "bfloat16", lora, lr, before=True), ref)
                new = share(change(path, "bfloat16", lora, lr, before=False), ref)
                print(f"| bfloat16 | {'LoRA r16' if lora else 'full'} | {lr:g} | {old:.1%} | {new:.1%} |")


if __name__ == "__main__":
    main()
