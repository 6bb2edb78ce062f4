"""R-Zero's options in a self-play step (docs/method.md §17.2), read once from `game`: the repetition
penalty of the Challenger's queries, the Solver's difficulty band and the alternating phases. With
the schema's defaults every method is a no-op: no penalty, every valid query, both roles."""
from __future__ import annotations

import torch

from lsp_exp.rl.band import band_limits, in_band
from lsp_exp.rl.repetition import Repetition, repetition_penalty
from lsp_exp.rl.schedule import phase


class RZero:
    def __init__(self, game, reward_bounds: tuple[float, float] | None):
        self.penalty_weight = float(game.repetition_penalty)   # lambda (0: off)
        self.threshold = float(game.repetition_threshold)      # tau
        self.floor = None if game.challenger_reward_floor is None else float(game.challenger_reward_floor)
        band = game.band
        # the default band (no limits, closed) keeps every valid query: no band at all
        self.band = None if band.low is None and band.high is None and not band.open else \
            (*band_limits(band.low, band.high, reward_bounds), bool(band.open))
        self.schedule = (int(game.schedule.challenger_steps), int(game.schedule.solver_steps))

    def repetition(self, queries, tokenizer) -> Repetition | None:
        """r_rep of the Challenger's N queries (their token ids' BLEU clusters); None when off or
        when the queries come from data."""
        if not self.penalty_weight or queries.rollout is None:
            return None
        ids = tokenizer(list(queries.texts), add_special_tokens=False)["input_ids"]
        return repetition_penalty(ids, self.threshold)

    def in_band(self, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor | None:
        """[N] bool: the valid queries whose V is in the band; None without a band."""
        return None if self.band is None else in_band(values, valid, *self.band)

    def phase(self, step: int) -> str | None:
        """The role updated at this step ('challenger' or 'solver'); None: both."""
        return phase(step, *self.schedule)
