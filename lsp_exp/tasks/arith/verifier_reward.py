"""The verifier reward: 1 when the answer states the true value of the query, else 0."""
from __future__ import annotations

from functools import lru_cache

import torch

from lsp_exp.rewards.base import Scores
from lsp_exp.tasks.arith.answers import answer_value
from lsp_exp.tasks.arith.world import WorldConfig, parse_problem


class ArithmeticReward:
    bounds = (0.0, 1.0)

    def __init__(self, world: WorldConfig):
        self.world = world
        self._parse = lru_cache(maxsize=65536)(lambda text: parse_problem(text, world))

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        """Exact match against the verifier's value. A query outside the world has no ground truth:
        its pairs are marked invalid (docs/method.md §3, invalid queries)."""
        values, valid = [], []
        for query, answer in zip(queries, answers, strict=True):
            problem = self._parse(query.strip())
            valid.append(problem is not None)
            values.append(float(problem is not None and answer_value(answer, self.world) == problem.answer))
        return Scores(torch.tensor(values), torch.tensor(valid, dtype=torch.bool))
