"""Task rewards R(q, a): objects with `score(queries, answers) -> Scores` and `bounds`.

A reward is built from its `_target_` in the `reward` config group (`conf/reward/*.yaml`) by
`build_reward`, in one of three forms: a class (or a function that returns one) with
`score(queries, answers) -> Scores` (and `bounds`), e.g. a Hugging Face sequence classifier
(`reward_model.load_reward_model`) or a task package's rewards (`lsp_exp/tasks/arith/rewards.py`);
a plain function `(queries, answers) -> one float per pair` named with `_partial_: true` (its other
keys are bound); a target with a `task` parameter, which gets the run's task (`task_ground_truth`,
`reward=ground_truth`; `majority_vote.MajorityVoteReward`, `reward=majority_vote`). A node with
`parts` (a weighted sum, `composite.CompositeReward`) has each part built the same way, so a part
takes any of the three forms.
"""
from __future__ import annotations

from omegaconf import DictConfig

from lsp_exp.errors import ConfigError
from lsp_exp.nodes import build
from lsp_exp.rewards.base import FunctionReward, Reward, Scores
from lsp_exp.rewards.composite import CompositeReward
from lsp_exp.rewards.majority_vote import MajorityVoteReward
from lsp_exp.rewards.reward_model import RewardModelError, RewardModelReward, load_reward_model


def build_reward(node: DictConfig, key: str = "reward", task=None) -> Reward:
    """The reward of a `_target_` config node (a ConfigError naming `key` when it cannot be built); a
    target with a `task` parameter gets the run's task; a plain function becomes a `FunctionReward`.
    A node's `parts` (a mapping of names to reward nodes) are built first, each as a reward of its
    own (`<key>.parts.<name>`), and passed to the target as built rewards."""
    offer = {"task": task} if task is not None else None
    parts = node.get("parts") if isinstance(node, DictConfig) else None
    if isinstance(parts, DictConfig):
        built = {str(name): build_reward(part, f"{key}.parts.{name}", task) for name, part in parts.items()}
        reward = build(node, key, offer, built={"parts": built})
    else:
        reward = build(node, key, offer)
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


__all__ = ["task_ground_truth", "FunctionReward", "CompositeReward", "MajorityVoteReward", "Reward", "RewardModelError",
           "RewardModelReward", "Scores", "build_reward", "load_reward_model"]
