"""The reward interface: `Reward` (`score` and `bounds`), and `DeviceReward` for a reward with
weights of its own that the run moves to its device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from lsp_exp.nodes import unwrapped


@dataclass
class Scores:
    """A reward's answer for B (query, answer) pairs. The tensors may live on any device (the CPU for
    the rewards here): the self-play step moves them to the policy's device before combining them."""

    values: torch.Tensor  # [B] R(q, a); 0 where not valid
    valid: torch.Tensor   # [B] bool: the pair could be graded (e.g. the query is a valid problem)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] per named part (composite rewards)


@runtime_checkable
class Reward(Protocol):
    """R(q, a) for a batch of (query, answer) pairs: the task reward of the self-play step, a
    ground truth logged beside it, or a part of a `CompositeReward`. A protocol: a reward of yours
    needs these two members, no base class (`build_reward` sets `bounds = None` where it is missing)."""

    #: (low, high) of the values, or None when unbounded; objectives that need V in [0, 1] check it
    #: (`check_objective`), and an invalid query's value is placed from them (`invalid_query_value`).
    bounds: tuple[float, float] | None

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        """One score per pair (`queries[i]` answered by `answers[i]`), on any device; called once per
        step with the N x G pairs, query-major."""
        ...


@runtime_checkable
class DeviceReward(Reward, Protocol):
    """A reward that runs a model of its own (a reward model): the run moves it to the policy's device
    at the start of training (Lightning does not, it is no submodule)."""

    def to(self, device) -> "DeviceReward":
        """Move the reward's weights to `device`; returns the reward."""
        ...


class FunctionReward:
    """A plain function `(queries, answers) -> one float per pair` as a reward: every pair is valid;
    `bounds` is the function's `bounds` attribute if it has one (else unbounded)."""

    def __init__(self, fn):
        self.fn = fn
        self.bounds = getattr(unwrapped(fn), "bounds", None)

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        values = torch.as_tensor(self.fn(queries, answers), dtype=torch.float32).flatten().cpu()
        if values.numel() != len(answers):
            raise ValueError(f"reward function {unwrapped(self.fn)!r} returned {values.numel()} values "
                             f"for {len(answers)} pairs")
        return Scores(values, torch.ones(len(answers), dtype=torch.bool))
