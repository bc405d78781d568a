"""RL agents: SB3 algorithms, hyperparameters, and trained runs as pruning schedules."""

from agents.algos import ALGOS, algo_class, load_hyperparams
from agents.schedule import AgentSchedule, RunError, load_agent_schedule, read_run_config

__all__ = ["ALGOS", "algo_class", "load_hyperparams", "AgentSchedule", "RunError", "load_agent_schedule",
           "read_run_config"]
