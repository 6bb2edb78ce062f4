"""Task rewards R(q, a): objects with one method, `score(queries, answers) -> Scores`."""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.rewards.arithmetic import ArithmeticReward
from lsp_exp.rewards.base import Reward, Scores
from lsp_exp.toy.world import WorldConfig


def build_reward(cfg: DictConfig, world: WorldConfig) -> Reward:
    if cfg.kind == "arithmetic":
        return ArithmeticReward(world)
    raise ValueError(f"unknown reward kind {cfg.kind!r}; available: arithmetic")


__all__ = ["ArithmeticReward", "Reward", "Scores", "build_reward"]
