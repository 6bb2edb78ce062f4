"""`lsp-bootstrap`: build (or find in the cache) the toy world and the tiny reward model, and report
the base model's accuracy and how well its judge mode and the reward model judge correctness."""
from __future__ import annotations

import json
import os
import sys

for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from rich.console import Console

from lsp_exp.run import config  # noqa: F401  (registers the schemas)
from lsp_exp.eval.heldout import evaluate_solver
from lsp_exp.judge.self_quality import SelfQualityJudge
from lsp_exp.judge.judging_the_judges import judge_the_judges
from lsp_exp.judge.templates import get_template
from lsp_exp.core.models import Reference, load_toy_world
from lsp_exp.rewards import RewardModelError, build_reward
from lsp_exp.tasks.arith.build import build_toy_world, world_config
from lsp_exp.tasks.arith.judge_data import labelled_pairs
from lsp_exp.tasks.arith.reward_model import build_tiny_rm
from lsp_exp.tasks.arith.world import heldout_slices
from lsp_exp.run.validation import ConfigError, check_overrides, validate_world_and_model


def main() -> None:
    """`lsp-bootstrap`: an override that does not parse fails with one line naming it; then Hydra."""
    check_overrides(sys.argv[1:])
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="bootstrap")
def hydra_main(cfg: DictConfig) -> None:
    try:
        validate_world_and_model(cfg)
        bootstrap(cfg)
    except (ConfigError, FileNotFoundError, RewardModelError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def bootstrap(cfg: DictConfig) -> None:
    console = Console()
    path = build_toy_world(cfg.world, cfg.model.bootstrap, cfg.paths.outputs, force=cfg.force)
    info = json.loads((path / "info.json").read_text())
    console.print(f"toy world: {path}")
    console.print(f"parameters: {info['parameters']:,}  SFT seconds: {info['sft_seconds']}"
                  + (f"  judge stage seconds: {info['judge_seconds']}" if "judge_seconds" in info else ""))
    model, tokenizer, heldout, _ = load_toy_world(path)
    world = world_config(cfg.world)
    metrics = evaluate_solver(model, tokenizer, heldout, samples=8, slices=heldout_slices(world))
    console.print("base held-out: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if cfg.reward.kind == "tiny_rm":  # (re)build it here so that force=true rebuilds it too
        console.print(f"tiny reward model: {build_tiny_rm(cfg.world, cfg.reward.bootstrap, cfg.paths.outputs, cfg.force)}")
    reward = build_reward(cfg.reward, cfg.world, cfg.paths.outputs)
    judge = SelfQualityJudge(Reference(model), tokenizer, get_template("toy")) if "judge_seconds" in info else None
    judged = judge_the_judges(labelled_pairs(heldout, world, 512, cfg.world.seed), reward, judge)
    console.print(f"judging the judges (512 labelled held-out pairs), reward {cfg.reward.name!r} and the base's judge mode:")
    console.print("  " + "  ".join(f"{k} {v:.3f}" for k, v in judged.items()))


if __name__ == "__main__":
    main()
