"""VarPruneResidual-v0: per scale, a small move relative to the static frontier's schedule for the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.config import EnvConfig
from envs.residual_core import MOVES, N_MOVES, ResidualCore, check_move
from envs.residual_pairing import REWARD_MODES, FrontierPairing, residual_outcome
from envs.var_prune import VarPruneEnv

#: a residual run's copy of its frontier, in the run directory
FRONTIER_FILE = "frontier.json"


def as_frontier(frontier):
    """A ``Frontier``, or one loaded from a path to a frontier.json."""
    from envs.frontier import Frontier

    if isinstance(frontier, Frontier):
        return frontier
    if isinstance(frontier, (str, Path)):
        return Frontier.load(frontier)
    raise ValueError(f"frontier must be an envs.frontier.Frontier or the path of a frontier.json, got {frontier!r}")


def check_residual_setup(config: EnvConfig, core: ResidualCore, reward_mode: str) -> None:
    """What a residual env needs of its config: budget-conditioned episodes whose budgets the frontier
    covers, the paired or absolute quality as its only reward."""
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
    if config.budget_range is None:
        raise ValueError("the residual env is budget-conditioned: set budget_range (e.g. (0.2, 0.6))")
    if config.reward.flops_weight != 0:
        raise ValueError(f"the residual env's reward is quality alone (paired with the frontier): reward flops_weight "
                         f"must be 0 (the embedded_budget preset), got {config.reward.flops_weight!r}")
    core.frontier.entry_for(config.budget_range[0])  # FrontierError when the range starts below the frontier


def masked_move_error(core: ResidualCore, schedule, k: int, move: int, mask: np.ndarray, budget: float,
                      where: str = "") -> ValueError:
    """The error for a masked move: why it is not allowed, and which moves are."""
    r, d = core.frontier_decision(schedule, k)
    if core.decision(schedule, k, move) is None:
        why = f"it is invalid where the frontier has ratio {r:g}{' (skip)' if r >= 1 else ''}, CFG drop {d}"
    else:
        why = f"after it the frontier's remaining decisions would exceed the budget {budget:.4f}"
    allowed = ", ".join(f"{m} ({MOVES[m]})" for m in range(N_MOVES) if mask[m])
    return ValueError(f"{where}move {move} ({MOVES[move]}) is masked at scale {k}: {why}; allowed: {allowed} "
                      f"(use action_masks(), e.g. sb3-contrib's MaskablePPO)")


class ResidualPruneEnv(VarPruneEnv):
    """One image per episode; per controllable scale, a move relative to the static frontier's decision.

    ## Description
    The static frontier (``envs.frontier.Frontier``) gives, per FLOPs budget, the best static schedule
    the static search found. Each episode draws its budget b (as ``VarPruneEnv`` does with
    ``budget_range``, observed) and takes the frontier schedule for b (``Frontier.schedule_for(b)``).
    At each controllable scale the agent moves away from that schedule's decision or keeps it, so a
    policy that always keeps reproduces the frontier exactly. Earlier scales run unpruned.

    ## Action space
    ``Discrete(5)``, relative to the frontier's (ratio, CFG drop) at this scale, on the ladder 0, 0.25,
    0.5, 0.75, skip (``envs.residual_core.GRID_RATIOS``, the static search's grid):
    0 keep; 1 one step less pruning (from 0: invalid; from a skip: 0.75); 2 one step more pruning
    (from 0.75 or above: skip; on a skip: invalid); 3 flip the CFG drop (invalid on a skip, where
    guidance runs no unconditional branch, and everywhere without ``allow_drop_unconditional``); 4 skip <-> run (a skip runs at 0.75 with the frontier's CFG
    flag). Off-grid frontier ratios (0.125, 0.825) step to the neighbouring grid values. The full table
    is ``envs.residual_core``'s docstring.

    ``action_masks()`` (sb3-contrib's MaskablePPO protocol) masks the invalid moves and every move after
    which the frontier's remaining decisions would take the image over b: nothing projects or rewrites an
    action, and with the masks every episode ends within b. Keep stays allowed whenever the moves before
    it were (the frontier schedule fits b). A masked move passed to ``step`` is a ``ValueError`` saying
    why and which moves are allowed.

    ## Observation space
    ``Box(-inf, inf, (D + 3 + C,), float32)``: the ``VarPruneEnv`` observation with ``budget_range`` (D
    values, its docstring), then the frontier's ratio and CFG-drop flag at this scale, the frontier's
    spend before this scale minus the image's (fractions of the unpruned transformer FLOPs), and the
    CFG-drop flags of the C controllable scales (1 dropped, 0 kept, -1 not run yet). The terminal
    observation has 0, 0 for the frontier's decision.

    ## Rewards
    0 at every scale (``reward.flops_weight`` must be 0). At the end, with ``reward_mode="paired"``
    (default): the image's quality (``RewardConfig.quality``: the reward's quality terms) minus the
    frontier image's quality on the same prompt and seed, the CLIP term of that difference capped at 0
    (``RewardConfig.paired_quality``); exactly 0.0 for an episode that keeps everywhere (its image is the
    frontier's). The frontier image is made only for an episode that deviates, from the state at its
    first deviation, and its terms are cached per (prompt, seed, schedule) (``envs.residual_pairing``).
    ``reward_mode="absolute"``: the image's quality alone.

    ## Starting state, episode end
    As ``VarPruneEnv``: ``reset`` draws a prompt, an image seed and a budget (``options`` override
    them); terminated after the last scale, never truncated.

    ## Arguments
    ``frontier``: a ``Frontier`` or the path of a frontier.json, searched on this generator with the same
    first controllable scale, whose smallest budget is at most ``budget_range``'s low end.
    ``reward_mode``: "paired" | "absolute". ``frontier_cache``: a dict shared between envs for the
    frontier's quality terms. The rest as ``VarPruneEnv`` (``config`` needs ``budget_range``).

    ## Info
    ``VarPruneEnv``'s, plus ``moves`` (per controllable scale so far) and ``frontier_budget``; at the end
    ``quality``, ``frontier_quality``, ``paired_reward``, ``first_deviation`` (scale index, or None).
    """

    def __init__(self, config: EnvConfig | None = None, frontier=None, reward_mode: str = "paired",
                 frontier_cache: dict | None = None, render_mode: str | None = None, **kwargs: Any) -> None:
        if frontier is None:
            raise ValueError("the residual env needs a frontier (envs.frontier.Frontier or a frontier.json path)")
        self._schedule = None
        super().__init__(config, render_mode=render_mode, **kwargs)
        self.guard = None  # the masks keep every episode within its budget: nothing rewrites an action
        self.core = ResidualCore(self.generator, as_frontier(frontier), self.first_controllable,
                                 allow_drop=self.config.allow_drop_unconditional)
        check_residual_setup(self.config, self.core, reward_mode)
        self.reward_mode = reward_mode
        self.pairing = FrontierPairing(self.core, self.reward_fn, frontier_cache)
        self.action_space = spaces.Discrete(N_MOVES)
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.observer.dim + self.core.extra_dim,), np.float32)

    @property
    def observation_layout(self) -> dict:
        return {**super().observation_layout, "action_mode": "residual"}

    def ratio_to_action(self, ratio: float, drop: bool = False):
        raise ValueError("the residual env's actions are moves relative to the frontier, not ratios: run fixed "
                         "schedules through VarPrune-v0")

    def _draw_budget(self, budget) -> float | None:
        b = super()._draw_budget(budget)
        self._schedule = self.core.schedule_for(b)  # the episode's frontier schedule: chosen with its budget
        self._moves: list[int] = []
        return b

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        self.pairing.start([self._prompt], [self._image_seed], [self._schedule])
        return obs, info

    def action_masks(self) -> np.ndarray:
        """(5,) bool: the moves allowed at the scale about to run (none once the episode is over)."""
        if self._done or self._state is None:
            return np.zeros(N_MOVES, bool)
        return self.core.masks(self._state, [self._schedule], [self._budget])[0]

    def step(self, action):
        if self._done or self._state is None:
            raise RuntimeError("episode is over: call reset() before step()")
        move = check_move(action)
        k = self._state.scale_index
        mask = self.action_masks()
        if not mask[move]:
            raise masked_move_error(self.core, self._schedule, k, move, mask, self._budget)
        ratio, drop = self.core.decision(self._schedule, k, move)
        self.pairing.before_step(self._state, [(ratio, drop)])
        self.generator.step(self._state, ratio, drop_unconditional=drop)
        self._ratios[k] = ratio
        self._moves.append(move)
        terminated = self._state.finished
        reward, extra = 0.0, {}
        if terminated:
            self._done = True
            _, terms, ref_image, ref_clip = self._terminal()
            clips = None if ref_clip is None else [ref_clip]
            frontier = self.pairing.frontier_terms(ref_image, clips, [self._prompt])[0]
            reward, extra = residual_outcome(self.config.reward, self.reward_mode, terms, frontier,
                                             self.pairing.first_deviation[0])
        return self._observation(), float(reward), terminated, False, {**self._info(), **extra}

    def _observation(self) -> np.ndarray:
        base = self.observer.observe(self._state, self._budget)
        return np.concatenate([base, self.core.extras(self._state, [self._schedule])[0]]).astype(np.float32)

    def _info(self) -> dict:
        return {**super()._info(), "moves": list(self._moves),
                "frontier_budget": self.core.frontier.entry_for(self._budget).budget}
