"""N VarPruneResidual-v0 episodes in lockstep behind one SB3 ``VecEnv`` (one generator call per scale)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.batched import BatchedVarPruneEnv
from envs.residual import ResidualPruneEnv, masked_move_error
from envs.residual_core import check_move
from envs.residual_pairing import FrontierPairing, residual_outcome


class BatchedResidualEnv(BatchedVarPruneEnv):
    """``num_envs`` ``ResidualPruneEnv`` episodes generated as one batch (see ``BatchedVarPruneEnv``).

    Slot i behaves like a ``ResidualPruneEnv`` seeded ``seed + i``: same budget and frontier schedule, moves,
    masks, observation and reward definitions. The frontier images of the slots that deviate are made
    together (``envs.residual_pairing``: one state copy per scale of first deviation, the other images
    skipping in it). ``action_masks()`` gives the (N, 5) masks; ``env_method("action_masks")`` gives one
    (5,) mask per slot, which is what sb3-contrib's ``get_action_masks`` stacks.

    ``frontier``, ``reward_mode``, ``frontier_cache``: as for ``ResidualPruneEnv``; the rest as for
    ``BatchedVarPruneEnv``.
    """

    def __init__(self, config=None, num_envs: int = 16, frontier=None, reward_mode: str = "paired",
                 frontier_cache: dict | None = None, **kwargs: Any) -> None:
        self._residual = dict(frontier=frontier, reward_mode=reward_mode, frontier_cache=frontier_cache)
        super().__init__(config, num_envs, **kwargs)
        t = self.template
        self.core, self.reward_mode = t.core, t.reward_mode
        self.pairing = FrontierPairing(self.core, self.reward_fn, t.pairing.cache)

    def _make_template(self, config, **kwargs) -> ResidualPruneEnv:
        return ResidualPruneEnv(config, **self._residual, **kwargs)

    # ---- episodes ---------------------------------------------------------------------------------
    def _start(self, options: list[dict]) -> np.ndarray:
        self._moves = [[] for _ in range(self.num_envs)]
        self._schedules = None
        obs = super()._start(options)
        return obs

    def _observe(self) -> np.ndarray:
        if self._schedules is None:  # the episodes just started: their frontier schedules, from their budgets
            self._schedules = [self.core.schedule_for(b) for b in self._budgets]
            self.pairing.start(self._prompts, self._image_seeds, self._schedules)
        base = super()._observe()
        return np.concatenate([base, self.core.extras(self._state, self._schedules)], axis=1).astype(np.float32)

    def action_masks(self) -> np.ndarray:
        """(N, 5) bool: the moves each slot may make at the scale about to run."""
        if self._state is None:
            raise RuntimeError("call reset() before action_masks()")
        if self._schedules is None:
            self._observe()
        return self.core.masks(self._state, self._schedules, self._budgets)

    def _decisions(self, actions) -> list[tuple[float, bool]]:
        moves = [check_move(a) for a in actions]
        masks = self.action_masks()
        k = self._state.scale_index
        for i, m in enumerate(moves):
            if not masks[i, m]:
                raise masked_move_error(self.core, self._schedules[i], k, m, masks[i], self._budgets[i], f"slot {i}: ")
        decisions = [self.core.decision(self._schedules[i], k, m) for i, m in enumerate(moves)]
        self.pairing.before_step(self._state, decisions)
        for i, m in enumerate(moves):
            self._moves[i].append(m)
        return decisions

    def _terminal(self) -> list[tuple[float, dict]]:
        st = self._state
        images = self.generator.decode(st)
        refs, ref_clips = self._references()
        used = [f / self.flops_full for f in st.flops_used_per_image]
        scored = self.reward_fn.terminal_batch(images, refs.to(images.device), self._prompts, used,
                                               reference_clips=ref_clips, budgets=self._budgets)
        frontier = self.pairing.frontier_terms(refs, ref_clips, self._prompts)
        return [residual_outcome(self.config.reward, self.reward_mode, terms, frontier[i],
                                 self.pairing.first_deviation[i]) for i, (_, terms) in enumerate(scored)]

    def _info(self, i: int) -> dict:
        return {**super()._info(i), "moves": list(self._moves[i]),
                "frontier_budget": self.core.frontier.entry_for(self._budgets[i]).budget}

    # ---- VecEnv plumbing --------------------------------------------------------------------------
    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        if method_name == "action_masks":  # one mask per slot (get_action_masks stacks them)
            masks = self.action_masks()
            return [masks[i] for i in self._indices(indices)]
        return super().env_method(method_name, *method_args, indices=indices, **method_kwargs)
