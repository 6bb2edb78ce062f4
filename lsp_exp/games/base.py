from __future__ import annotations

from dataclasses import dataclass

import torch

from lsp_exp.core.generation import Rollout


@dataclass
class Queries:
    texts: list[str]            # the N queries handed to the Solver
    finished: torch.Tensor      # [N] bool: the Challenger closed its query with the end token
    rollout: Rollout | None     # the Challenger's rollout (None when the queries come from data)
