"""A reward for the conformance steps that needs no model and no MLflow (the GPU image has none):
R(q, a) = 0.75 or 0.25 by the parity of a checksum of the pair, so a group's answers almost always
differ (non-zero advantages); every query is gradable."""
from __future__ import annotations

import zlib

import torch

from lsp_exp.rewards.base import Scores


class ParityReward:
    bounds = (0.0, 1.0)

    def __init__(self, world=None):
        self.world = world

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        values = [0.75 if zlib.crc32(f"{q}\n{a}".encode()) % 2 == 0 else 0.25
                  for q, a in zip(queries, answers, strict=True)]
        return Scores(torch.tensor(values), torch.ones(len(values), dtype=torch.bool))
