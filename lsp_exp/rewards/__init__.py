"""Task rewards R(q, a): objects with `score(queries, answers) -> Scores` and `bounds`.

A reward is built from its `_target_` in the `reward` config group (`conf/reward/*.yaml`): a
Hugging Face sequence classifier (`reward_model.load_reward_model`), a weighted sum of named parts
(`composite.CompositeReward`), the task's own ground truth (`reward=ground_truth`), a task package's
rewards (the arithmetic verifier and tiny reward model: `lsp_exp/tasks/arith/rewards.py`), or any
class of yours with `score(queries, answers) -> Scores` (and `bounds`), or a plain function
`(queries, answers) -> one float per pair` named with `_partial_: true` (its other keys are bound).
"""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.errors import ConfigError
from lsp_exp.nodes import build
from lsp_exp.rewards.base import FunctionReward, Reward, Scores
from lsp_exp.rewards.composite import CompositeReward
from lsp_exp.rewards.reward_model import RewardModelError, RewardModelReward, load_reward_model


def build_reward(node: DictConfig, key: str = "reward", task=None) -> Reward:
    """The reward of a `_target_` config node (a ConfigError naming `key` when it cannot be built); a
    target with a `task` parameter gets the run's task."""
    reward = build(node, key, offer={"task": task} if task is not None else None)
    if callable(reward) and not hasattr(reward, "score"):  # a plain function (`_partial_: true`)
        reward = FunctionReward(reward)
    if not callable(getattr(reward, "score", None)):
        raise ConfigError(f"{key}._target_={node._target_!r}: built a {type(reward).__name__}, which has no "
                          "score(queries, answers) method")
    if not hasattr(reward, "bounds"):
        reward.bounds = None  # undeclared: unbounded
    return reward


def task_ground_truth(task) -> Reward:
    """The task's own always-right reward (`reward=ground_truth`): the arithmetic verifier, a unit-test
    runner, ... as the task defines it (`Task.ground_truth`)."""
    truth = task.ground_truth()
    if truth is None:
        raise ValueError(f"reward=ground_truth: task {task.name!r} has no ground truth "
                         "(Task.ground_truth returns None)")
    return truth


__all__ = ["task_ground_truth", "FunctionReward", "CompositeReward", "Reward", "RewardModelError", "RewardModelReward",
           "Scores", "build_reward", "load_reward_model"]
