"""Checks that the schema cannot express: ranges and cross-field rules, each naming the key."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lsp_exp.judge.parsing import MAX_SCORE
from lsp_exp.judge.templates import TEMPLATES
from lsp_exp.rewards import KINDS as REWARD_KINDS
from lsp_exp.rewards.reward_model import TRANSFORMS
from lsp_exp.rl import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, CHALLENGER_OBJECTIVES, KL_CONTROLLERS, KL_ESTIMATORS,
                        TOKEN_POLICY_LOSSES)
from lsp_exp.rl.kl import PLACEMENTS
from lsp_exp.toy.world import FLAWS


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the key."""


def validate(cfg: DictConfig) -> None:
    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: {message}")

    game, kl = cfg.game, cfg.kl
    require(game.n_queries >= 1, "game.n_queries", "N must be at least 1")
    require(game.group_size >= 2, "game.group_size", "G must be at least 2 for a group baseline")
    require(game.temperature > 0, "game.temperature", "must be > 0")
    require(game.max_answer_tokens >= 1, "game.max_answer_tokens", "must be at least 1")
    require(game.max_query_tokens >= 1, "game.max_query_tokens", "must be at least 1")
    require(game.alpha_ch >= 0, "game.alpha_ch", "must be >= 0")
    require(game.challenger_objective in CHALLENGER_OBJECTIVES, "game.challenger_objective",
            f"unknown; available: {', '.join(sorted(CHALLENGER_OBJECTIVES))}")
    require(game.self_reward_weight >= 0, "game.self_reward_weight", "must be >= 0")
    require(game.judge.template in ("auto", *TEMPLATES), "game.judge.template",
            f"unknown; available: auto, {', '.join(TEMPLATES)}")
    require(game.judge.temperature >= 0, "game.judge.temperature", "must be >= 0 (0: greedy)")
    require(0 <= game.judge.fallback_score <= MAX_SCORE, "game.judge.fallback_score", f"must be in [0, {MAX_SCORE}]")
    require(game.judge.max_new_tokens is None or game.judge.max_new_tokens >= 1, "game.judge.max_new_tokens",
            "must be at least 1 (or null for the template's default)")
    require(cfg.reward.kind in REWARD_KINDS, "reward.kind", f"unknown; available: {', '.join(REWARD_KINDS)}")
    require(cfg.reward.transform in TRANSFORMS, "reward.transform", f"unknown; available: {', '.join(TRANSFORMS)}")
    require(cfg.eval.judge_pairs >= 0, "eval.judge_pairs", "must be >= 0")
    for key in ("beta", "beta_challenger", "beta_solver"):
        value = kl[key]
        require(value is None or value >= 0, f"kl.{key}", "must be >= 0")
    require(kl.estimator in KL_ESTIMATORS, "kl.estimator", f"unknown; available: {', '.join(sorted(KL_ESTIMATORS))}")
    require(kl.placement in PLACEMENTS, "kl.placement", f"unknown; available: {', '.join(PLACEMENTS)}")
    algo = cfg.algorithm
    for key, registry in (("advantage", ADVANTAGE_ESTIMATORS), ("policy_loss", TOKEN_POLICY_LOSSES),
                          ("aggregation", AGGREGATIONS)):
        require(algo[key] in registry, f"algorithm.{key}", f"unknown; available: {', '.join(sorted(registry))}")
    require(0 <= algo.clip_low < 1, "algorithm.clip_low", "must be in [0, 1)")
    require(algo.clip_high is None or algo.clip_high >= 0, "algorithm.clip_high", "must be >= 0 (or null)")
    require(algo.epochs >= 1, "algorithm.epochs", "must be at least 1")
    require(algo.epochs == 1 or "16-mixed" not in str(cfg.trainer.precision), "trainer.precision",
            "16-mixed (a gradient scaler) is not supported with algorithm.epochs > 1; use bf16-mixed or 32-true")
    require(kl.controller in KL_CONTROLLERS, "kl.controller", f"unknown; available: {', '.join(sorted(KL_CONTROLLERS))}")
    require(kl.target > 0, "kl.target", "must be > 0")
    require(kl.horizon > 0, "kl.horizon", "must be > 0")
    require(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    require(cfg.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
    require(cfg.trainer.max_steps >= 1, "trainer.max_steps", "must be at least 1")
    require(cfg.eval.every_n_steps >= 0, "eval.every_n_steps", "must be >= 0")
    require(cfg.eval.samples >= 0, "eval.samples", "must be >= 0")
    world = cfg.world
    require(world.flaw in FLAWS, "world.flaw", f"unknown; available: {', '.join(FLAWS)}")
    require(0 <= world.flaw_rate <= 1, "world.flaw_rate", "must be in [0, 1]")
    shares = (world.share_one_op, world.share_two_op, world.share_precedence)
    require(min(shares) >= 0 and abs(sum(shares) - 1) < 1e-6, "world.share_one_op",
            "the shares of one_op, two_op and precedence must be >= 0 and sum to 1")
    require(cfg.model.source in ("toy", "hf"), "model.source", "must be 'toy' or 'hf'")
    require(cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", "must be float32, bfloat16 or float16")

