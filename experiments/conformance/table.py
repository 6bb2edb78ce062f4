"""The conformance table: per architecture of tests/helpers/architectures.py, the largest
differences the matrix checks, measured (float32, T = 0.7, CPU), and what the start-up check decides.

    .venv/bin/python experiments/conformance/table.py            # a markdown table on stdout

Columns: (a) log-probs, entropy and log-prob gradients (relative to each tensor's largest entry)
against log_softmax(model(row alone).logits / T), the worst of prefix sharing on and off; (b) the
fused path's difference from the logits' (float32, and under bf16 autocast) and the path taken;
the start-up check (core/conformance.py): its largest difference over padding, prefixes, the KV
cache and training mode, and its verdict.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # the repository: tests.helpers

import torch

from tests.helpers.architectures import ARCHITECTURES, build
from lsp_exp.core.conformance import check_architecture
from lsp_exp.core.dropout import disable_dropout
from lsp_exp.core.fused_head import _decoder_and_head, fused_difference
from lsp_exp.core.logprobs import LogprobOptions, token_logprobs
from lsp_exp.core.special_tokens import ModelSetupError
from tests.helpers.conformance import T, alone, batch, padded


def part_a(name: str) -> tuple[float, float, float]:
    model, tok = build(name)
    disable_dropout(model)
    model.train()
    rows, ids, mask = batch(model, padded(tok).pad_token_id)
    counted = (mask[:, :-1] * mask[:, 1:]).bool()
    weights = torch.randn(counted.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    want_logp, want_entropy = torch.zeros(4, 11), torch.zeros(4, 11)
    for i, row in enumerate(rows):
        want_logp[i, 12 - len(row):], want_entropy[i, 12 - len(row):] = alone(model, row)
    want = torch.autograd.grad((want_logp * weights)[counted].sum(), params, allow_unused=True)
    worst = [0.0, 0.0, 0.0]
    for share in (True, False):
        logp, entropy = token_logprobs(model, ids, mask, entropy_mask=counted.float(), temperature=T,
                                       options=LogprobOptions(share_prefixes=share))
        got = torch.autograd.grad((logp * weights)[counted].sum(), params, allow_unused=True)
        grads = [float((a - b).abs().max()) / max(float(b.abs().max()), 1.0)
                 for a, b in zip(got, want, strict=True) if a is not None and b is not None]
        logp = logp.detach()
        worst = [max(worst[0], float((logp - want_logp.detach())[counted].abs().max())),
                 max(worst[1], abs(float(entropy) - float(want_entropy.detach()[counted].mean()))),
                 max(worst[2], *grads)]
    return tuple(worst)


def part_b(name: str) -> tuple[str, str, str]:
    shown = []
    for autocast in (False, True):
        model, _ = build(name)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            diff, tol, _ = fused_difference(model, *_decoder_and_head(model))
        shown.append(f"{diff:.2g} (tol {tol:.1g})")
    return shown[0], shown[1], "fused" if diff <= tol else "plain"


def start_up(name: str) -> tuple[str, str]:
    model, tok = build(name)
    disable_dropout(model)
    try:
        found = check_architecture(model, padded(tok), name)
    except ModelSetupError as err:
        return "-", "refused: " + str(err).split("): ", 1)[1].split(";")[0]
    worst = max(found[k] for k in ("padding", "padding+prefixes", "cache", "training_mode"))
    return f"{worst:.2g}", "pass" + ("" if found["repeat_cache"] else " (every copy prefilled)")


def main() -> None:
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    print("| architecture | (a) log-prob | (a) entropy | (a) gradient (rel.) | (b) fused - plain, fp32 | "
          "(b) under bf16 autocast | (b) path | start-up check: largest diff | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in ARCHITECTURES:
        a, b, s = part_a(arch.name), part_b(arch.name), start_up(arch.name)
        print(f"| {arch.name} | {a[0]:.1e} | {a[1]:.1e} | {a[2]:.1e} | {b[0]} | {b[1]} | {b[2]} | {s[0]} | {s[1]} |",
              flush=True)


if __name__ == "__main__":
    main()
