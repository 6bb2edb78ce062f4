"""Games decide where the Solver's queries come from: the Challenger (self-play) or a prompt file."""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.games.base import Queries
from lsp_exp.games.prompt_file import DataGame
from lsp_exp.games.challenger import SelfPlayGame


def build_game(cfg: DictConfig, prompts: list[str] | None, seed: int, challenger_style: str = "paper"):
    """The game of `cfg`; `challenger_style` (the task's) resolves `game.prompt=auto`."""
    if cfg.challenger:
        return SelfPlayGame(cfg, cfg.prompt if cfg.prompt != "auto" else challenger_style)
    if not prompts:
        raise ValueError(f"game {cfg.name!r} needs prompts: set game.prompts_path (the task has no training prompts)")
    return DataGame(cfg, prompts, seed)


__all__ = ["DataGame", "Queries", "SelfPlayGame", "build_game"]
