"""Measured against estimated activation bytes per token and decoder layer (README.md here).

    .venv/bin/python experiments/memory_estimate/measure.py             # Llama-3.2-1B and -3B shapes, h 768
    .venv/bin/python experiments/memory_estimate/measure.py --shapes 3b --tokens 16,32 --device cuda

Measured: lsp_exp/run/activation_bytes.py (saved_tensors_hooks, a real-width layer, random
weights, CPU). Estimated: lsp_exp/run/memory.py's act_per_token, and the formula before the measured term
((6 h + 2 kv_dim + 4 I) x the bytes of model.dtype) for comparison.
"""
from __future__ import annotations

import argparse
import time

from lsp_exp.run.activation_bytes import CONFIGS, LORA_TARGETS, measure
from lsp_exp.run.memory import Architecture

SHAPES = {  # hidden, intermediate, heads, KV heads
    "1b": (2048, 8192, 32, 8),      # Llama-3.2-1B
    "3b": (3072, 8192, 24, 8),      # Llama-3.2-3B
    "768": (768, 2048, 12, 4),      # the small layer a first review measured
}
RANK = 16


def estimates(arch: Architecture, name: str, tokens: tuple[int, int]) -> tuple[int, int]:
    """(before, now) for config `name`: before, model.dtype's bytes b (2 under bf16, 4 under 32-true);
    now, the padding mask's copy as the slope sees it (rows of tokens[0] + tokens[1] tokens)."""
    lora, compute = CONFIGS[name]
    c = compute.itemsize
    residual = c if lora else 4      # a full fine-tune's float32 weights make the residual stream float32
    before = (6 * arch.hidden + 2 * arch.kv_dim + 4 * arch.intermediate) * c
    now = arch.activations_per_token(c, residual, (RANK, list(LORA_TARGETS)) if lora else None, sum(tokens))
    return before, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1b,3b,768")
    parser.add_argument("--tokens", default="16,32", help="the two token counts per row of the slope")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU's kernels and autocast lists)")
    args = parser.parse_args()
    tokens = tuple(int(t) for t in args.tokens.split(","))
    print("| shape | config | measured B/token/layer | before | measured/before | now | measured/now |")
    print("|---|---|---|---|---|---|---|")
    for key in args.shapes.split(","):
        h, i, heads, kv = SHAPES[key]
        arch = Architecture(h, i, 1, heads, kv, 256, True)
        started = time.time()
        measured = measure(h, i, heads, kv, rank=RANK, tokens=tokens, device=args.device)
        for name, value in measured.items():
            before, now = estimates(arch, name, tokens)
            print(f"| {key} (h {h}, I {i}, {heads}/{kv} heads) | {name} | {value:,.0f} | {before:,} | "
                  f"{value / before:.3f} | {now:,} | {value / now:.3f} |")
        print(f"<!-- {key}: {time.time() - started:.1f} s -->")


if __name__ == "__main__":
    main()
