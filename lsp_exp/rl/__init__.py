"""The maths of the RL update: small pure tensor functions, registered by name (see registry.py)."""
from lsp_exp.rl import advantages, aggregation, challenger_objectives, kl, kl_control, losses  # noqa: F401  (importing registers)
from lsp_exp.rl.algorithms import ALGORITHMS, AlgorithmSpec, get_algorithm
from lsp_exp.rl.challenger_objectives import CHALLENGER_OBJECTIVES
from lsp_exp.rl.losses import PolicyLossOutput
from lsp_exp.rl.registry import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_CONTROLLERS, KL_ESTIMATORS, POLICY_LOSSES,
                                 TOKEN_POLICY_LOSSES, get)

__all__ = ["CHALLENGER_OBJECTIVES", "ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "POLICY_LOSSES", "get",
           "TOKEN_POLICY_LOSSES", "AGGREGATIONS", "KL_CONTROLLERS", "ALGORITHMS", "AlgorithmSpec", "get_algorithm",
           "PolicyLossOutput"]
