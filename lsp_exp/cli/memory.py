"""`lsp-memory`: the predicted peak memory of a training config at each micro-batch size, and the
largest that fits a budget (lsp_exp/run/memory.py; estimates until measured on the device).

    lsp-memory experiment=paper_llama3b/lsp                         # LoRA, the paper's N, G and lengths
    lsp-memory experiment=paper_llama3b/lsp model.lora.enabled=false
    LSP_MEMORY_BUDGET_GIB=139 lsp-memory experiment=paper_llama3b/lsp   # another device (default 80 GiB)

It takes the same overrides as `lsp-train`, refuses what `lsp-train` would (and a budget that is not
a finite number above 0) in one line naming the key, and loads no weights: the architecture comes from the
model's config.json (a local directory or the hub cache) or, for the paper's models, from their
published configs.
"""
from __future__ import annotations

import math
import os
import sys

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from lsp_exp.core.models import resolve_model_path
from lsp_exp.errors import ConfigError
from lsp_exp.nodes import build
from lsp_exp.run import config
from lsp_exp.run.memory import GIB, largest_fitting
from lsp_exp.run.memory_check import estimate_for
from lsp_exp.run.validation import validate

SIZES = (None, 64, 32, 16, 8, 4, 2, 1)
BUDGET_KEY = "LSP_MEMORY_BUDGET_GIB"


def read_budget(value: str | None) -> float:
    """The budget in GiB from LSP_MEMORY_BUDGET_GIB (None: 80); ConfigError unless a finite number above 0."""
    text = "80" if value is None else value
    try:
        budget = float(text)
    except ValueError:
        budget = math.nan
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"{BUDGET_KEY}={text!r}: must be a finite number of GiB above 0")
    return budget


def table(cfg: DictConfig, model_path: str, budget_gib: float) -> tuple[Table, int | None]:
    rows = cfg.game.n_queries * cfg.game.group_size
    out = Table(title=f"{model_path}: N x G = {rows}, answers {cfg.game.max_answer_tokens} tokens, "
                      f"{'LoRA' if cfg.model.lora.enabled else 'full fine-tune'}, {cfg.model.dtype}")
    for column in ("micro_batch_size", "total GiB", "static", "update", "reference", "generation", "judge"):
        out.add_column(column, justify="right")
    for size in SIZES:
        e = estimate_for(cfg, model_path, size)
        if e is None:
            raise SystemExit(f"lsp-memory: the architecture of {model_path!r} is unknown (no config.json found)")
        parts = [f"{e.parts[k] / GIB:.1f}" for k in ("static", "update", "reference", "generation", "judge")]
        out.add_row("null (all rows)" if size is None else str(size), f"{e.total / GIB:.1f}", *parts)
    fits = largest_fitting(budget_gib * GIB, lambda size: estimate_for(cfg, model_path, size), rows)
    return out, fits


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="train")
def main(cfg: DictConfig) -> None:
    try:  # bad input: one line naming the key, exit 2
        budget = read_budget(os.environ.get(BUDGET_KEY))
        validate(cfg)   # trainer.micro_batch_size and every other key, as lsp-train checks them
    except ConfigError as err:
        print(f"error: lsp-memory: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    model_path = cfg.model.path
    if not model_path:
        model_path = resolve_model_path(cfg.model, build(cfg.task, "task"))
    out, fits = table(cfg, str(model_path), budget)
    console = Console()
    console.print(out)
    advice = "" if fits else (": use LoRA (model.lora.enabled=true), trainer=fsdp over more devices, "
                              "model.gradient_checkpointing=true or a smaller trainer.generation_batch_size")
    rows = cfg.game.n_queries * cfg.game.group_size
    shown = "none" if not fits else f"{fits} (all rows: null)" if fits == rows else str(fits)
    console.print(f"largest micro-batch size within {budget:g} GiB: {shown}{advice} "
                  "(estimates: see docs/operations.md, Memory)")


if __name__ == "__main__":
    main()
