"""The arithmetic task's config: the world and the bootstrap recipe, checked against dataclasses.

Every function that hashes them (the cache keys of the built world and the tiny reward model) takes
them through `world_node` / `checked` first, so a key depends on the values, not on which fields a
YAML file happened to spell out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from lsp_exp.nodes import checked
from lsp_exp.tasks.arith.sft import JudgeSFTConfig, SFTConfig, TinyModelConfig
from lsp_exp.tasks.arith.world import LEGACY_VALUES, WorldConfig


@dataclass
class ArithWorld(WorldConfig):
    """The toy world (world.py) and its deterministic data splits."""

    name: str = "arith"
    seed: int = 0
    n_heldout: int = 2000
    n_train: int = 20000


@dataclass
class ArithBootstrap:
    """How `lsp-bootstrap` builds the toy base model."""

    seed: int = 0
    arch: TinyModelConfig = field(default_factory=TinyModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    judge: JudgeSFTConfig = field(default_factory=JudgeSFTConfig)


def world_node(world) -> DictConfig:
    """The world config with every field (the cache keys hash all of them)."""
    return checked(ArithWorld, world, "task.world")




def world_key_payload(world) -> dict:
    """The world's fields as the cache keys hash them: the fields the first world did not have are
    left out where they hold its values, so its keys (and shipped assets) stay what they were."""
    values = OmegaConf.to_container(world_node(world))
    return {k: v for k, v in values.items() if k not in LEGACY_VALUES or v != LEGACY_VALUES[k]}
