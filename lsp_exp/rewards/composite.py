"""A weighted sum of named rewards: R = sum_k w_k R_k, each part kept for logging."""
from __future__ import annotations

import torch

from lsp_exp.rewards.base import DeviceReward, Scores


class CompositeReward:
    """`parts`: name -> reward; `weights`: name -> w_k (1 if absent). From a config, `build_reward` builds
    each part as it builds a top-level reward, so a part takes any reward form: a class, a plain
    function (`_partial_: true`), a target that takes the run's task."""

    def __init__(self, parts: dict, weights: dict | None = None):
        if not parts:
            raise ValueError("reward.parts: a composite reward needs at least one part")
        for name, reward in parts.items():
            if not callable(getattr(reward, "score", None)):
                raise ValueError(f"reward.parts.{name}: a {type(reward).__name__} has no score(queries, answers) "
                                 "(lsp_exp.rewards.build_reward builds a part from its config node)")
        weights = dict(weights or {})
        unknown = set(weights) - set(parts)
        if unknown:
            raise ValueError(f"reward.weights: {sorted(unknown)} name no part; parts: {sorted(parts)}")
        self.parts = {name: (float(weights.get(name, 1.0)), reward) for name, reward in parts.items()}
        parts = self.parts
        bounds = [getattr(r, "bounds", None) for _, r in parts.values()]
        if any(b is None for b in bounds):
            self.bounds = None
        else:  # the range of a weighted sum: each weight picks the end of its part's range
            low = sum(min(w * b[0], w * b[1]) for (w, _), b in zip(parts.values(), bounds, strict=True))
            high = sum(max(w * b[0], w * b[1]) for (w, _), b in zip(parts.values(), bounds, strict=True))
            self.bounds = (low, high)

    def to(self, device) -> "CompositeReward":
        for _, reward in self.parts.values():
            if isinstance(reward, DeviceReward):
                reward.to(device)
        return self

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        total, valid, logged = None, None, {}
        for name, (weight, reward) in self.parts.items():
            scores = reward.score(queries, answers)
            if total is not None:  # parts may answer on different devices: all on the first part's
                scores = Scores(scores.values.to(total.device), scores.valid.to(total.device))
            logged[name] = scores.values
            total = weight * scores.values if total is None else total + weight * scores.values
            valid = scores.valid if valid is None else valid & scores.valid
        return Scores(torch.where(valid, total, torch.zeros_like(total)), valid, logged)
