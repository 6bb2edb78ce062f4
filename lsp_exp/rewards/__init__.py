"""Task rewards R(q, a): objects with `score(queries, answers) -> Scores` and `bounds`.

A reward is built from its `_target_` in the `reward` config group (`conf/reward/*.yaml`): a
Hugging Face sequence classifier (`reward_model.load_reward_model`), a weighted sum of named parts
(`composite.CompositeReward`), a task's own (the arithmetic verifier and tiny reward model live in
`lsp_exp/tasks/arith/rewards.py`), or any class or function of yours.
"""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.rewards.base import Reward, Scores
from lsp_exp.rewards.composite import CompositeReward
from lsp_exp.rewards.reward_model import RewardModelError, RewardModelReward, load_reward_model


def build_reward(node: DictConfig, key: str = "reward") -> Reward:
    """The reward of a `_target_` config node (a ConfigError naming `key` when it cannot be built)."""
    from lsp_exp.run.instantiate import build  # noqa: PLC0415

    reward = build(node, key)
    if not callable(getattr(reward, "score", None)):
        from lsp_exp.run.validation import ConfigError  # noqa: PLC0415

        raise ConfigError(f"{key}._target_={node._target_!r}: built a {type(reward).__name__}, which has no "
                          "score(queries, answers) method")
    if not hasattr(reward, "bounds"):
        reward.bounds = None  # undeclared: unbounded
    return reward


__all__ = ["CompositeReward", "Reward", "RewardModelError", "RewardModelReward", "Scores", "build_reward",
           "load_reward_model"]
