"""Queries drawn from a prompt file: the paper's data-driven "RL" baseline (`game=grpo_data`)."""
from __future__ import annotations

import torch

from lsp_exp.games.base import Queries, StatefulGame


class PromptFileGame(StatefulGame):
    """N prompts drawn uniformly with replacement, from a generator of its own (resumed exactly)."""

    def __init__(self, cfg, prompts: list[str] | None, seed: int):
        if not prompts:
            raise ValueError(f"game {cfg.name!r} needs prompts: set game.prompts_path "
                             "(the task has no training prompts)")
        self.cfg = cfg
        self.prompts = prompts
        self.generator = torch.Generator().manual_seed(seed)  # its own stream, so sampling does not move it

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def queries(self, policy, tokenizer) -> Queries:
        index = torch.randint(len(self.prompts), (self.cfg.n_queries,), generator=self.generator)
        texts = [self.prompts[i] for i in index.tolist()]
        return Queries(texts, torch.ones(len(texts), dtype=torch.bool), None)
