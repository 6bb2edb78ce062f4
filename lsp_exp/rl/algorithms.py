"""Algorithms as named combinations of an advantage estimator, a token-level policy loss and an
aggregation (plus clipping and the number of inner epochs over one batch of playouts).

| name         | advantage   | policy loss     | aggregation             | clip      | epochs |
|--------------|-------------|-----------------|-------------------------|-----------|--------|
| lsp          | group_mean  | reinforce_token | seq_mean_token_sum      | -         | 1      |  LSP eq. 2-5
| grpo         | group_std   | clipped         | seq_mean_token_mean     | 0.2 / 0.2 | 1      |  Shao et al. 2024
| dr_grpo      | group_mean  | clipped         | seq_mean_token_sum_norm | 0.2 / 0.2 | 1      |  Liu et al. 2025
| rloo         | rloo        | reinforce_token | seq_mean_token_sum      | -         | 1      |  Ahmadian et al. 2024
| reinforce_pp | batch_norm  | clipped         | token_mean              | 0.2 / 0.2 | 1      |  Hu 2025
| ppo          | group_mean  | clipped         | token_mean              | 0.2 / 0.2 | 4      |  Schulman et al. 2017
("ppo" here is PPO's clipped, multi-epoch update with a group baseline instead of a learned critic.)
"role_baseline" is lsp with SPIRAL's advantage (Liu et al. 2025): a running baseline per role (advantages.RoleBaseline).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.errors import ConfigError
from lsp_exp.nodes import unwrapped
from lsp_exp.rl import advantages as _advantages, aggregation as _aggregation, losses as _losses  # (registers)
from lsp_exp.rl.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, TOKEN_POLICY_LOSSES, get


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered name or a callable for the advantage estimator and the policy loss (a user's
    function from `_target_` with `_partial_: true`, its hyper-parameters bound); aggregation by name."""

    advantage: str | Callable      # ADVANTAGE_ESTIMATORS name, or (rewards, mask) -> advantages, or a class of them
    policy_loss: str | Callable    # TOKEN_POLICY_LOSSES name, or a function with their signature (losses.py)
    aggregation: str               # AGGREGATIONS name
    clip_low: float = 0.2          # ratio clipped to [1 - clip_low, 1 + clip_high] ("clipped" only)
    clip_high: float = 0.2
    epochs: int = 1                # optimiser passes over one batch of playouts (old_logp fixed before the first)

    def __post_init__(self):
        self.role_estimator()  # fails on an unknown name, or a stateful estimator's bad hyper-parameter
        self.policy_loss_fn  # noqa: B018
        get(AGGREGATIONS, self.aggregation, "aggregation")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    @property
    def advantage_fn(self) -> Callable:
        if callable(self.advantage):
            return self.advantage
        return get(ADVANTAGE_ESTIMATORS, self.advantage, "advantage estimator")

    def role_estimator(self) -> Callable:
        """A role's own advantage estimator (one per role: a class, e.g. `role_baseline`, is built anew
        for each, so each keeps its own state; a function is itself; `advantages.role_estimator`)."""
        fn = self.advantage_fn
        if _advantages.is_stateful(fn) and not inspect.isclass(unwrapped(fn)):
            raise ConfigError(f"algorithm.advantage: {type(fn).__name__} was built once, but each role needs its own "
                             "state: name its class with `_partial_: true`")
        try:
            return _advantages.role_estimator(fn)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"algorithm.advantage ({unwrapped(fn).__name__}): {err}") from None

    @property
    def policy_loss_fn(self) -> Callable:
        if callable(self.policy_loss):
            return self.policy_loss
        return get(TOKEN_POLICY_LOSSES, self.policy_loss, "policy loss")

    def token_weights(self, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
        """W = d agg / d l [B, T] of this algorithm's aggregation at the token mask [B, T] (aggregation.py)."""
        return _aggregation.token_weights(self.aggregation, mask, max_tokens)

    def loss(self, logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
             token_weights: torch.Tensor) -> _losses.PolicyLossOutput:
        """The token-level policy loss of this algorithm, sum_t W_t l_t with the token weights W [B, T]
        (`token_weights`: of the whole batch, this batch's rows; see losses.py for the other shapes)."""
        return self.policy_loss_fn(logp, old_logp, advantages, mask, token_weights=token_weights,
                                   clip_low=self.clip_low, clip_high=self.clip_high)


def algorithm_spec(cfg, build: Callable | None = None) -> AlgorithmSpec:
    """The AlgorithmSpec of an `algorithm` config (conf/algorithm/*.yaml). `advantage` and `policy_loss`
    are registered names or `_target_` nodes, which `build(node, key)` turns into callables."""
    def part(key: str):
        value = cfg[key]
        return value if isinstance(value, str) else build(value, f"algorithm.{key}")

    clip_high = cfg.clip_low if cfg.clip_high is None else cfg.clip_high
    return AlgorithmSpec(part("advantage"), part("policy_loss"), cfg.aggregation, clip_low=cfg.clip_low,
                         clip_high=clip_high, epochs=cfg.epochs)
