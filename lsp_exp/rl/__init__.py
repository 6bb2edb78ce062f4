"""The maths of the RL update: small pure tensor functions, registered by name (see registry.py)."""
from lsp_exp.rl import advantages, challenger, kl, losses  # noqa: F401  (importing registers the functions)
from lsp_exp.rl.challenger import CHALLENGER_OBJECTIVES
from lsp_exp.rl.registry import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES, get

__all__ = ["CHALLENGER_OBJECTIVES", "ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "POLICY_LOSSES", "get"]
