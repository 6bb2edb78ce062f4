"""The arithmetic task's rewards, as `_target_`s for the `reward` group (`conf/reward/*.yaml`)."""
from __future__ import annotations

from lsp_exp.nodes import checked
from lsp_exp.rewards.reward_model import RewardModelReward, load_reward_model
from lsp_exp.tasks.arith.build import world_config
from lsp_exp.tasks.arith.reward_model import TinyRMConfig, build_tiny_rm
from lsp_exp.tasks.arith.config import world_node
from lsp_exp.tasks.arith.verifier_reward import ArithmeticReward


def verifier(world=None) -> ArithmeticReward:
    """1 when the answer is the true value of the query, else 0; invalid queries have no ground truth."""
    return ArithmeticReward(world_config(world_node(world)))


def tiny_rm(world=None, bootstrap=None, outputs: str = "outputs", force: bool = False, **options) -> RewardModelReward:
    """The tiny reward model, built (or found in the cache) from the world and its recipe; `options`:
    `max_length`, `batch_size`, `transform`, `dtype` of `load_reward_model`."""
    path = build_tiny_rm(world_node(world), checked(TinyRMConfig, bootstrap, "reward.bootstrap"), outputs, force)
    return load_reward_model(str(path), **options)
