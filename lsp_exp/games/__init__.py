"""Games decide where the Solver's queries come from: the Challenger (self-play) or a prompt file."""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.games.base import Queries
from lsp_exp.games.prompt_file import DataGame
from lsp_exp.games.challenger import SelfPlayGame


def build_game(cfg: DictConfig, prompts: list[str] | None, seed: int, toy: bool = True):
    """The game of `cfg`; `toy` resolves `game.prompt=auto` (the toy task line, else the paper's prompt)."""
    if cfg.challenger:
        return SelfPlayGame(cfg, cfg.get("prompt", "auto") if cfg.get("prompt", "auto") != "auto" else ("toy" if toy else "paper"))
    if not prompts:
        raise ValueError(f"game {cfg.name!r} needs a prompt file (game.prompts_path)")
    return DataGame(cfg, prompts, seed)


__all__ = ["DataGame", "Queries", "SelfPlayGame", "build_game"]
