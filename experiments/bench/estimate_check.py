"""The memory estimate (lsp_exp/run/memory.py) against the peaks the memory suite measured on this CPU.

    .venv/bin/python experiments/bench/estimate_check.py experiments/bench/results/memory.json [commit]

Only rows measured at `commit` (default: every row); the estimate assumes the current code (the
output layer fused, scoring from the first completion token), so rows of older commits differ.

For each row of the new code: measured = peak RSS - RSS before training (the process, its weights and
the reference copy are already there), estimated = the estimate's total minus the weights and the
reference copy, for the wide128k model (2 layers, hidden 64, vocabulary 128,256, float32) at the
row's micro-batch size, N x G = 8 x 8, the forced answer and query lengths and the Solver's real
prompt length (the toy chat template around a query). Ratio = estimated / measured.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lsp_exp.run.memory import GIB, Architecture, StepShape, estimate

WIDE = Architecture(hidden=64, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=128256, tied=True)
TEMPLATE_TOKENS = 4   # the toy chat template around a user turn: <bos><|user|> ... <|end|><|assistant|>


def main(path: str, commit: str | None = None) -> None:
    rows = json.loads(Path(path).read_text())
    print(f"{'run':32} {'code':8} {'measured GiB':>12} {'estimated GiB':>13} {'ratio':>6}")
    for name, row in rows.items():
        match = re.match(r"new (lsp_zero|grpo_data) micro=(\w+)( \+ckpt)?$", name)
        if not match or (commit and row.get("code") != commit):
            continue
        game, micro, ckpt = match.group(1), match.group(2), bool(match.group(3))
        perf = row["perf"]
        answer, query = int(perf["train/answer_len"]), int(perf.get("train/query_len") or 32)
        shape = StepShape(8, 8, query_tokens=query, answer_tokens=answer, prompt_tokens=TEMPLATE_TOKENS,
                          challenger=game == "lsp_zero")
        e = estimate(WIDE, shape, dtype_bytes=4, lora=None, micro_batch_size=None if micro == "null" else int(micro),
                     checkpointing=ckpt)
        weights = 2 * WIDE.params() * 4                   # the policy and the reference copy, loaded before training
        estimated = (e.total - weights) / GIB
        measured = row["peak_gib"] - row["before_gib"]
        print(f"{name:32} {row.get('code', '?'):8} {measured:12.2f} {estimated:13.2f} {estimated / measured:6.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "experiments" / "bench" / "results" / "memory.json"),
         sys.argv[2] if len(sys.argv) > 2 else None)
