"""The residual agent's moves relative to the static frontier, their masks, and its extra observation.

Shared by ``envs.residual.ResidualPruneEnv`` (one image), ``envs.residual_batched.BatchedResidualEnv``
(a batch in lockstep) and the trained residual agent as a schedule (``agents.schedule.ResidualAgentSchedule``), so
that the three decide, mask and observe alike.

A frontier decision at a scale is ``(ratio, drop)``: ``ratio < 1`` runs the scale pruning that fraction
of its tokens, with the unconditional CFG branch dropped when ``drop``; ``ratio >= 1`` skips it. The
pruning ladder is ``GRID_RATIOS + (SKIP,)`` = 0, 0.25, 0.5, 0.75, skip: the static search's grid
(``evaluation.static_search.GRID_RATIOS``, asserted equal in the tests; envs may not import evaluation).
The moves (``MOVES``, the action index is the position):

| move | result | invalid when |
|---|---|---|
| 0 keep | the frontier's decision | never (only the budget can mask it, and it cannot: see below) |
| 1 less pruning | the next ladder value below the frontier's ratio (off-grid ratios such as 0.825 go to the grid value below, 0.75); from a skip: 0.75 with the frontier's CFG flag | the ratio is 0 |
| 2 more pruning | the next ladder value above (0.125 -> 0.25; 0.75 or above -> skip) | the scale is skipped |
| 3 flip CFG drop | the frontier's ratio, the drop flag flipped | the scale is skipped, guidance does not run the unconditional branch there, or the agent has no CFG-drop lever (``allow_drop_unconditional`` off) |
| 4 skip <-> run | a running scale is skipped; a skipped one runs at 0.75 with the frontier's CFG flag | never |

A move is also masked when, after it, the frontier's remaining decisions (the later scales as the frontier
schedule has them) would take the image's transformer FLOPs above the episode's budget. Keep is never
masked for a budget when every earlier move was allowed: the earlier check priced exactly this decision
followed by the frontier's rest, and the frontier schedule of budget b fits b (checked when the frontier
is loaded, ``ResidualCore.__init__``).
"""

from __future__ import annotations

import numpy as np

from envs.budget import BUDGET_EPS

GRID_RATIOS = (0.0, 0.25, 0.5, 0.75)
SKIP = 1.0
MOVES = ("keep", "less pruning", "more pruning", "flip CFG drop", "skip <-> run")
N_MOVES = len(MOVES)
#: the residual observation's extra entries after the plain VarPrune-v0 observation (C more: the CFG flags)
EXTRA_FEATURE_NAMES = ("frontier_ratio", "frontier_drop", "frontier_spend_minus_spend")


def apply_move(ratio: float, drop: bool, move: int, guided: bool) -> tuple[float, bool] | None:
    """The decision ``move`` makes of the frontier's ``(ratio, drop)`` at a scale where guidance runs
    the unconditional branch when ``guided``; None when the move is invalid there (table in the module
    docstring)."""
    runs = ratio < 1.0
    if move == 0:
        return (float(ratio), bool(drop) and runs)
    if move == 1:
        if not runs:
            return (GRID_RATIOS[-1], bool(drop) and guided)
        lower = [g for g in GRID_RATIOS if g < ratio - 1e-9]
        return (lower[-1], bool(drop)) if lower else None
    if move == 2:
        if not runs:
            return None
        higher = [g for g in GRID_RATIOS if g > ratio + 1e-9]
        return (higher[0], bool(drop)) if higher else (SKIP, False)
    if move == 3:
        return (float(ratio), not drop) if runs and guided else None
    if move == 4:
        return (SKIP, False) if runs else (GRID_RATIOS[-1], bool(drop) and guided)
    raise ValueError(f"move must be an integer in 0..{N_MOVES - 1} ({', '.join(MOVES)}), got {move!r}")


def check_move(action) -> int:
    """An action as a move index; anything else is a ValueError naming it and what is allowed."""
    try:
        value = float(np.asarray(action, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"residual action must be one integer in 0..{N_MOVES - 1} ({', '.join(MOVES)}), "
                         f"got {action!r}") from None
    if not (np.isfinite(value) and value == int(value) and 0 <= int(value) < N_MOVES):
        raise ValueError(f"residual action must be an integer in 0..{N_MOVES - 1} ({', '.join(MOVES)}), got {action!r}")
    return int(value)


class ResidualCore:
    """The frontier on one generator: per image, the frontier's decisions, the moves' decisions and
    masks, and the extra observation entries.

    generator: the generator the frontier was searched on (checked: scales, model fingerprint, the
    first controllable scale, and every entry's schedule fits its budget on it). allow_drop: False
    makes move 3 (flip CFG drop) invalid everywhere (an agent without the CFG-drop lever).
    """

    def __init__(self, generator, frontier, first_controllable: int, allow_drop: bool = True) -> None:
        from envs.frontier import FrontierError

        frontier.check_generator(generator)
        if frontier.first_controllable != first_controllable:
            raise FrontierError(f"frontier controls scales from {frontier.first_controllable}, the env from "
                                f"{first_controllable} (--num-controllable must match the frontier's)")
        self.generator, self.frontier, self.first_controllable = generator, frontier, first_controllable
        self.allow_drop = bool(allow_drop)
        self.num_scales = generator.num_scales
        self.guided = [bool(generator.uses_unconditional(k)) for k in range(self.num_scales)]
        self.flops_full = float(generator.flops_full())
        for e in frontier.entries:
            used = self.schedule_fraction(e.schedule)
            if used > e.budget + BUDGET_EPS:
                raise FrontierError(f"frontier entry at budget {e.budget:.6f} spends {used:.6f} of the transformer "
                                    f"FLOPs on this generator: over its budget")
        self._spent: dict = {}
        self._costs: dict = {}

    @property
    def extra_dim(self) -> int:
        return len(EXTRA_FEATURE_NAMES) + (self.num_scales - self.first_controllable)

    def unconditional(self, ratios, drops, start: int = 0) -> list[bool]:
        """``schedule_flops``' unconditional flags for the ratios and drop flags of scales start, start + 1, ..."""
        return [g and not d and r < 1.0 for g, d, r in zip(self.guided[start:], drops, ratios)]

    def schedule_fraction(self, schedule) -> float:
        return float(self.generator.flops_fraction(list(schedule.ratios),
                                                   self.unconditional(schedule.ratios, schedule.drop_uncond)))

    def schedule_for(self, budget: float):
        return self.frontier.schedule_for(budget)

    def frontier_decision(self, schedule, k: int) -> tuple[float, bool]:
        r = float(schedule.ratios[k])
        return r, bool(schedule.drop_uncond[k]) and r < 1.0

    def decision(self, schedule, k: int, move: int) -> tuple[float, bool] | None:
        """Move ``move``'s decision at scale k (None: invalid at this edge, before any budget check)."""
        r, d = self.frontier_decision(schedule, k)
        if move == 3 and not self.allow_drop:
            return None
        return apply_move(r, d, move, self.guided[k])

    def frontier_spent(self, schedule, k: int) -> float:
        """The frontier schedule's transformer FLOPs before scale k, prefill included (a fraction)."""
        key = (schedule, k)
        if key not in self._spent:
            n = self.num_scales
            ratios = list(schedule.ratios[:k]) + [SKIP] * (n - k)
            self._spent[key] = float(self.generator.flops_fraction(ratios, self.unconditional(ratios, schedule.drop_uncond)))
        return self._spent[key]

    def masks(self, state, schedules: list, budgets: list[float]) -> np.ndarray:
        """(B, N_MOVES) bool: the moves image b of ``state`` may make at its next scale (valid at the
        edge, and the decision followed by the frontier's rest fits ``budgets[b]``)."""
        k, B = state.scale_index, state.batch
        out = np.zeros((B, N_MOVES), bool)
        if state.finished:
            return out
        rows, where = [], []
        for b in range(B):
            done = state.image_reports(b)[:k]
            sched = schedules[b]
            for m in range(N_MOVES):
                dec = self.decision(sched, k, m)
                if dec is None:
                    continue
                ratios = [r.ratio for r in done] + [dec[0]] + list(sched.ratios[k + 1:])
                unc = ([r.unconditional for r in done] + self.unconditional([dec[0]], [dec[1]], k)
                       + self.unconditional(sched.ratios[k + 1:], sched.drop_uncond[k + 1:], k + 1))
                rows.append((ratios, unc))
                where.append((b, m))
        if not rows:
            return out
        costs = self._remaining_costs(rows, k)
        spent = state.flops_used_per_image
        for (b, m), c in zip(where, costs):
            out[b, m] = spent[b] + c <= (budgets[b] + BUDGET_EPS) * self.flops_full
        return out

    def _remaining_costs(self, rows: list[tuple[list[float], list[bool]]], k: int) -> list[float]:
        """Per full schedule (ratios, unconditional flags): the FLOPs of scales k .. n-1 (they depend on
        the earlier scales through the KV cache, so the whole schedule is priced). Memoised: FLOPs are
        analytic, and the same (prefix, move, frontier rest) recurs across images and episodes."""
        keys = [(k, tuple(r), tuple(u)) for r, u in rows]
        miss = [key for key in dict.fromkeys(keys) if key not in self._costs]
        if miss:
            many = getattr(self.generator, "schedule_flops_many", None)
            if many is not None:
                per = many(np.asarray([key[1] for key in miss], np.float64), np.asarray([key[2] for key in miss], bool),
                           per_scale=True)
                costs = [float(x) for x in per[:, k:].sum(1)]
            else:
                costs = [float(sum(self.generator.schedule_flops(list(key[1]), list(key[2]))[k:])) for key in miss]
            if len(self._costs) > 200_000:  # bounded: a long run sees few distinct prefixes, but never grow forever
                self._costs.clear()
            self._costs.update(zip(miss, costs))
        return [self._costs[key] for key in keys]

    def extras(self, state, schedules: list) -> np.ndarray:
        """(B, extra_dim) float32: per image, the frontier's decision at the next scale (ratio, drop flag;
        0, 0 once finished), the frontier's spend before this scale minus the image's (fractions), and the
        CFG-drop flags of the controllable scales run so far (1 dropped, 0 kept, -1 not yet)."""
        k, f, n = state.scale_index, self.first_controllable, self.num_scales
        spent = state.flops_used_per_image
        rows = []
        for b in range(state.batch):
            sched = schedules[b]
            r, d = self.frontier_decision(sched, k) if k < n else (0.0, False)
            gap = self.frontier_spent(sched, min(k, n)) - spent[b] / self.flops_full
            flags = [-1.0] * (n - f)
            for rep in state.image_reports(b)[f:]:
                flags[rep.scale_index - f] = float(rep.ratio < 1.0 and self.guided[rep.scale_index]
                                                   and not rep.unconditional)
            rows.append([r, float(d), gap] + flags)
        return np.asarray(rows, np.float32)
