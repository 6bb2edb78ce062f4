"""`lsp-bootstrap`: build (or find in the cache) the toy world and report the base model's accuracy."""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig
from rich.console import Console

from lsp_exp import config  # noqa: F401  (registers the schemas)
from lsp_exp.evaluation import evaluate_solver
from lsp_exp.models import load_toy_world
from lsp_exp.toy.build import build_toy_world, world_config
from lsp_exp.toy.world import heldout_slices


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="bootstrap")
def main(cfg: DictConfig) -> None:
    console = Console()
    path = build_toy_world(cfg.world, cfg.model.bootstrap, cfg.paths.outputs, force=cfg.force)
    info = json.loads((path / "info.json").read_text())
    console.print(f"toy world: {path}")
    console.print(f"parameters: {info['parameters']:,}  SFT seconds: {info['sft_seconds']}")
    model, tokenizer, heldout, _ = load_toy_world(path)
    metrics = evaluate_solver(model, tokenizer, heldout, samples=8, slices=heldout_slices(world_config(cfg.world)))
    console.print("base held-out: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
