"""What a game is: a source of the Solver's queries, one batch per self-play step.

`Game`: `queries(policy, tokenizer) -> Queries`. A game that draws from a random stream of its own
(a data game's sampler) is a `StatefulGame` as well, so a run resumes it exactly: the module reseeds
it per rank at the start of training, saves its state with each checkpoint and loads it back.
Both are protocols: a query source of yours needs only the methods, no base class (the built-in
games name theirs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from lsp_exp.core.generation import Rollout


@dataclass
class Queries:
    texts: list[str]            # the N queries handed to the Solver
    finished: torch.Tensor      # [N] bool: the Challenger closed its query with the end token
    rollout: Rollout | None     # the Challenger's rollout (None when the queries come from data)


@runtime_checkable
class Game(Protocol):
    def queries(self, policy, tokenizer) -> Queries:
        """This step's N queries. With a rollout (the policy wrote them) the Challenger is trained on
        it; without one (`rollout=None`, queries from data) only the Solver is."""
        ...


@runtime_checkable
class StatefulGame(Game, Protocol):
    """A game with a random stream of its own, resumed exactly."""

    def reseed(self, seed: int) -> None:
        """Restart the stream from `seed` (the run's seed + the rank, at the start of training)."""
        ...

    def state_dict(self) -> dict:
        """The stream's state, saved with each checkpoint (one per rank)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()` (a resumed run)."""
        ...
