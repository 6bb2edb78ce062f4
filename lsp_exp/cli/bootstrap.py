"""`lsp-bootstrap`: build (or find in the cache) the task's base model and the reward, and report the
base model's held-out accuracy and how well its judge mode and the reward judge correctness.

For the arithmetic task this trains the toy world (tokenizer, tiny base model with its judge mode,
data splits) and, with `reward=tiny_rm`, the tiny reward model; `force=true` rebuilds both.
"""
from __future__ import annotations

import inspect
import os
import sys

for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig, open_dict
from rich.console import Console

from lsp_exp.cli.overrides import check_overrides
from lsp_exp.core.models import Reference, resolve_model_path
from lsp_exp.errors import LspError
from lsp_exp.eval.heldout import evaluate_solver
from lsp_exp.judge.judging_the_judges import judge_the_judges
from lsp_exp.judge.self_quality import SelfQualityJudge
from lsp_exp.judge.templates import get_template
from lsp_exp.nodes import build
from lsp_exp.rewards import build_reward
from lsp_exp.run import config
from lsp_exp.run.validation import validate_model


def main() -> None:
    """`lsp-bootstrap`: an override that does not parse fails with one line naming it; then Hydra."""
    check_overrides(sys.argv[1:])
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="bootstrap")
def hydra_main(cfg: DictConfig) -> None:
    try:
        validate_model(cfg)
        bootstrap(cfg)
    except LspError as err:  # a failure whose message says it all: one line, exit code 2
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def bootstrap(cfg: DictConfig) -> None:
    console = Console()
    task, loader = build(cfg.task, "task"), build(cfg.model, "model")
    if cfg.force and task.base_model(force=True) is None:
        console.print(f"task {task.name!r} builds no base model")
    path = resolve_model_path(cfg.model, task)
    console.print(f"base model: {path}")
    model, tokenizer = loader.policy(path).eval(), loader.tokenizer(path)
    heldout = task.heldout()
    if heldout is not None:
        metrics = evaluate_solver(model, tokenizer, heldout, samples=8,
                                  max_new_tokens=getattr(task, "max_answer_tokens", 8))
        console.print("base held-out: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if cfg.force and "force" in inspect.signature(get_method(cfg.reward._target_)).parameters:
        with open_dict(cfg.reward):
            cfg.reward.force = True  # (a cached reward model is rebuilt too)
    reward = build_reward(cfg.reward, task=task)
    pairs = task.labelled_pairs(512)
    if pairs:
        judge = SelfQualityJudge(Reference(model, shared=True), tokenizer, get_template(task.judge_template))
        judged = judge_the_judges(pairs, reward, judge)
        console.print(f"judging the judges ({len(pairs)} labelled pairs), reward {cfg.reward.get('name')!r} and the "
                      "base's judge mode:")
        console.print("  " + "  ".join(f"{k} {v:.3f}" for k, v in judged.items()))


if __name__ == "__main__":
    main()
