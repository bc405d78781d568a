"""Gymnasium environments for learning token-pruning schedules. ``import envs`` registers VarPrune-v0."""

from gymnasium.envs.registration import register, registry

from envs.config import EnvConfig

ENV_ID = "VarPrune-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.var_prune:VarPruneEnv")

__all__ = ["ENV_ID", "EnvConfig"]
