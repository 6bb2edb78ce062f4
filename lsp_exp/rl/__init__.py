"""The maths of the RL update: small pure tensor functions, registered by name (see registry.py)."""
from lsp_exp.rl import advantages, aggregation, kl, losses, role_rewards  # noqa: F401  (importing registers)
from lsp_exp.rl.algorithms import AlgorithmSpec, algorithm_spec
from lsp_exp.rl.kl_control import KL_CONTROLLERS
from lsp_exp.rl.losses import PolicyLossOutput
from lsp_exp.rl.registry import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, TOKEN_POLICY_LOSSES, get
from lsp_exp.rl.role_rewards import CHALLENGER_OBJECTIVES

__all__ = ["CHALLENGER_OBJECTIVES", "ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "get", "TOKEN_POLICY_LOSSES",
           "AGGREGATIONS", "KL_CONTROLLERS", "AlgorithmSpec", "algorithm_spec", "PolicyLossOutput"]
