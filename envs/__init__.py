"""Gymnasium environments for learning token-pruning schedules. ``import envs`` registers VarPrune-v0 and
VarPruneResidual-v0 (moves relative to the static frontier, ``envs.residual``)."""

from gymnasium.envs.registration import register, registry

from envs.config import EnvConfig

ENV_ID = "VarPrune-v0"
RESIDUAL_ENV_ID = "VarPruneResidual-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.var_prune:VarPruneEnv")
if RESIDUAL_ENV_ID not in registry:
    register(id=RESIDUAL_ENV_ID, entry_point="envs.residual:ResidualPruneEnv")

__all__ = ["ENV_ID", "RESIDUAL_ENV_ID", "EnvConfig"]
