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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lsp_exp.rl import advantages as _advantages, losses as _losses  # noqa: F401  (register the functions)
from lsp_exp.rl.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, TOKEN_POLICY_LOSSES, get


@dataclass(frozen=True)
class AlgorithmSpec:
    advantage: str                 # ADVANTAGE_ESTIMATORS name
    policy_loss: str               # TOKEN_POLICY_LOSSES name
    aggregation: str               # AGGREGATIONS name
    clip_low: float = 0.2          # ratio clipped to [1 - clip_low, 1 + clip_high] ("clipped" only)
    clip_high: float = 0.2
    epochs: int = 1                # optimiser passes over one batch of playouts (old_logp fixed before the first)

    def __post_init__(self):
        get(ADVANTAGE_ESTIMATORS, self.advantage, "advantage estimator")
        get(TOKEN_POLICY_LOSSES, self.policy_loss, "policy loss")
        get(AGGREGATIONS, self.aggregation, "aggregation")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    @property
    def advantage_fn(self) -> Callable:
        return ADVANTAGE_ESTIMATORS[self.advantage]

    def loss(self, logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
             max_tokens: int | None = None) -> _losses.PolicyLossOutput:
        """The token-level policy loss of this algorithm (see losses.py for the shapes)."""
        return TOKEN_POLICY_LOSSES[self.policy_loss](
            logp, old_logp, advantages, mask, clip_low=self.clip_low, clip_high=self.clip_high,
            aggregation=self.aggregation, max_tokens=max_tokens)


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "lsp": AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum"),
    "grpo": AlgorithmSpec("group_std", "clipped", "seq_mean_token_mean"),
    "dr_grpo": AlgorithmSpec("group_mean", "clipped", "seq_mean_token_sum_norm"),
    "rloo": AlgorithmSpec("rloo", "reinforce_token", "seq_mean_token_sum"),
    "reinforce_pp": AlgorithmSpec("batch_norm", "clipped", "token_mean"),
    "ppo": AlgorithmSpec("group_mean", "clipped", "token_mean", epochs=4),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    """Look a preset up, or fail with the list of available names."""
    return get(ALGORITHMS, name, "algorithm")
