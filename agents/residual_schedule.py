"""A trained residual run (``ppo-residual``) as a pruning schedule: the frontier's decision plus the policy's move.

    schedule = load_agent_schedule("runs/ppo-residual_s0", generator, budget=0.3)
    images, state = generator.generate(prompts, seeds, schedule=schedule)

Per image and controllable scale it observes what the env observes (``ObservationBuilder`` plus the
residual entries of ``envs.residual_core.ResidualCore.extras``), takes the masked argmax of the policy
(the env's action masks: invalid and over-budget moves are never chosen, so every image stays within the
budget) and applies that move to the frontier's decision for the budget. One policy call per scale for
the whole batch; an image's observation and masks do not depend on its batch, so its moves are the ones
it gets generated alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.schedule import AgentSchedule, RunError, check_layout, check_same_generator, load_model_and_normalizer

FRONTIER_FILE = "frontier.json"


class ResidualAgentSchedule(AgentSchedule):
    """``AgentSchedule`` whose decisions are frontier decisions moved by a masked discrete policy.

    ``moves(state)``: the moves (indices into ``envs.residual_core.MOVES``) it makes for each image of
    ``state`` at the scale about to run; ``ratio`` / ``drop_unconditional`` return their decisions."""

    name = "rl-residual"

    def __init__(self, model, observer, core, normalizer, layout: dict, budget: float) -> None:
        super().__init__(model, observer, None, normalizer, layout, budget=budget, guard=None)
        self.core = core
        self.schedule = core.schedule_for(budget)

    def moves(self, state) -> list[int]:
        schedules = [self.schedule] * state.batch
        obs = np.concatenate([self.observer.observe_batch(state, self.budget), self.core.extras(state, schedules)],
                             axis=1).astype(np.float32)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        masks = self.core.masks(state, schedules, [self.budget] * state.batch)
        actions, _ = self.model.predict(obs, deterministic=True, action_masks=masks)
        return [int(a) for a in np.asarray(actions).reshape(-1)]

    def decide(self, state) -> tuple[list[float], list[bool]]:
        key = (id(state), state.scale_index, len(state.reports))
        if self._last[0] == key:
            return self._last[1]
        k = state.scale_index
        decisions = [self.core.decision(self.schedule, k, m) for m in self.moves(state)]
        decision = ([r for r, _ in decisions], [d for _, d in decisions])
        self._last = (key, decision)
        return decision

    def describe(self, widths) -> str:
        return f"rl-residual:{self.layout.get('run', '?')}@{self.budget:g}"


def load_residual_schedule(run: Path, cfg: dict, generator, which: str, clip=None,
                           budget: float | None = None) -> ResidualAgentSchedule:
    """``load_agent_schedule`` for a residual run: its frontier (``RUN/frontier.json``), a budget in its
    trained range, its observation layout checked against the generator."""
    from envs.budget import check_budget
    from envs.config import EnvConfig
    from envs.factory import make_clip
    from envs.frontier import FrontierError
    from envs.observation import ObservationBuilder
    from envs.residual import as_frontier
    from envs.residual_core import ResidualCore

    layout = dict(cfg["observation_layout"], run=run.name)
    env_cfg = EnvConfig.from_dict(cfg["env"])
    check_layout(layout, generator)
    check_same_generator(cfg, generator, run)
    if budget is None:
        raise RunError(f"{run} is budget-conditioned: give a FLOPs budget in its trained range "
                       f"[{env_cfg.budget_range[0]:g}, {env_cfg.budget_range[1]:g}] (e.g. --budget)")
    try:
        budget = check_budget(budget, env_cfg.budget_range)
        core = ResidualCore(generator, as_frontier(run / cfg["residual"].get("frontier", FRONTIER_FILE)),
                            layout["first_controllable_scale"], allow_drop=env_cfg.allow_drop_unconditional)
    except (ValueError, FrontierError) as e:
        raise RunError(str(e)) from None
    if clip is None and env_cfg.prompt_embedding_dim > 0:
        clip = make_clip(env_cfg)
    observer = ObservationBuilder(generator, layout["first_controllable_scale"], env_cfg.prompt_embedding_dim, clip,
                                  budget_conditioned=True)
    check_layout(layout, generator, observer.dim + core.extra_dim)
    model, normalizer = load_model_and_normalizer(run, cfg, which)
    return ResidualAgentSchedule(model, observer, core, normalizer, layout, budget)
