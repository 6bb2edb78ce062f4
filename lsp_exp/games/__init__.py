"""Games decide where the Solver's queries come from: the Challenger (self-play), a prompt file, or
a query source of yours. `game.queries` is a `_target_` node; the class gets, by parameter name,
any of `cfg` (the game config), `prompts` (the task's or `game.prompts_path`'s), `seed`,
`prompt_style` (the Challenger's prompt style), `sampling` (the run's `SamplingOptions`) and `task`,
and is a `Game` (`queries(policy, tokenizer) -> Queries`), and a `StatefulGame` to be resumed
exactly (`reseed` / `state_dict` / `load_state_dict`; games/base.py)."""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.core.generation import SamplingOptions
from lsp_exp.games.base import Game, Queries, StatefulGame
from lsp_exp.games.challenger import ChallengerGame
from lsp_exp.games.prompt_file import PromptFileGame
from lsp_exp.nodes import build


def build_game(cfg: DictConfig, task, prompts: list[str] | None, seed: int, *, sampling: SamplingOptions) -> Game:
    """The query source of `game.queries`, given what it asks for."""
    style = cfg.prompt if cfg.prompt != "auto" else task.challenger_style
    return build(cfg.queries, "game.queries", offer={"cfg": cfg, "task": task, "prompts": prompts, "seed": seed,
                                                      "prompt_style": style, "sampling": sampling})


__all__ = ["ChallengerGame", "Game", "PromptFileGame", "Queries", "StatefulGame", "build_game"]
