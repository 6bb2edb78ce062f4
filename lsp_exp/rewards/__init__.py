"""Task rewards R(q, a): objects with one method, `score(queries, answers) -> Scores`.

Kinds (`reward.kind`): `arithmetic` (the toy world's verifier), `reward_model` (any Hugging Face
sequence classifier with a scalar head), `tiny_rm` (the toy reward model `lsp-bootstrap` trains),
`composite` (a weighted sum of named parts, each logged).
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lsp_exp.rewards.arithmetic import ArithmeticReward
from lsp_exp.rewards.base import Reward, Scores
from lsp_exp.rewards.composite import CompositeReward
from lsp_exp.rewards.reward_model import RewardModelError, RewardModelReward, load_reward_model

KINDS = ("arithmetic", "reward_model", "tiny_rm", "composite")


def build_reward(cfg: DictConfig, world: DictConfig, outputs: str) -> Reward:
    """The reward of config `cfg` (`world`: the toy world's config; `outputs`: the cache root)."""
    from lsp_exp.core.models import find_local_or_cached  # noqa: PLC0415 (models imports the toy world builder)
    from lsp_exp.tasks.arith.build import world_config  # noqa: PLC0415
    from lsp_exp.tasks.arith.reward_model import build_tiny_rm  # noqa: PLC0415

    options = dict(max_length=cfg.max_length, batch_size=cfg.batch_size, transform=cfg.transform, dtype=cfg.dtype)
    if cfg.kind == "arithmetic":
        return ArithmeticReward(world_config(world))
    if cfg.kind == "reward_model":
        return load_reward_model(find_local_or_cached(cfg.path, "reward.path", f"reward model {cfg.name!r}"), **options)
    if cfg.kind == "tiny_rm":
        return load_reward_model(str(build_tiny_rm(world, cfg.bootstrap, outputs)), **options)
    if cfg.kind == "composite":
        from lsp_exp.run.config import RewardSchema  # noqa: PLC0415

        parts = {}
        for name, part in cfg.parts.items():
            part_cfg = OmegaConf.merge(OmegaConf.structured(RewardSchema(name=name)), part)
            parts[name] = (part_cfg.weight, build_reward(part_cfg, world, outputs))
        return CompositeReward(parts)
    raise ValueError(f"reward.kind={cfg.kind!r}: unknown; available: {', '.join(KINDS)}")


__all__ = ["ArithmeticReward", "CompositeReward", "KINDS", "Reward", "RewardModelError", "RewardModelReward",
           "Scores", "build_reward"]
