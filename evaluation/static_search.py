"""The true best static schedule: an exhaustive grid, a FLOPs filter before any generation, a local
refinement; the static Pareto frontier. (The oracles over the grid's schedules are ``evaluation.oracles``.)

A static schedule (``generator.schedules.StaticSchedule``) is a ratio per scale plus, per scale, a flag
that drops the unconditional classifier-free-guidance branch there: the same levers a VarPrune-v0
agent has, fixed for every prompt. The grid gives each controllable scale the options
``{0, 0.25, 0.5, 0.75} x {keep CFG, drop CFG} + {skip}`` (9 per guided scale: 9^4 = 6,561 schedules
for the default last four scales); earlier scales run unpruned with CFG. Compared with an agent, the
search gets exactly that agent's levers: its controllable scales, and the CFG-drop options only if the
agent may drop the branch (``allow_drop``: 5^4 = 625 schedules without them).

Everything here is ranked by QUALITY: the reward's quality terms only (``RewardFunction.terminal``'s
``quality_reward``: CLIP-score change, 1 - SSIM, LPIPS, PSNR shortfall with the run's weights), never
the FLOPs bonus or the budget penalty. FLOPs are analytic, so a schedule over the FLOPs target is
dropped before anything is generated. The FLOPs target is a TOTAL fraction (transformer + decoder +
text encoder, ``generator.protocol.total_flops_fraction``).

The schedules' images are generated and scored by ``evaluation.grid_evaluation`` (shared prefixes,
batches, an on-disk cache); random schedules at a FLOPs target are in ``evaluation.random_schedules``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from envs.residual_core import GRID_RATIOS, SKIP  # one grid: the residual policy's moves step on it
from generator.protocol import total_flops_fraction
from generator.schedules import StaticSchedule

REFINE_STEPS = (0.05, 0.125)


# ---- the grid and its FLOPs -------------------------------------------------------------------------

def guided_scales(generator) -> list[bool]:
    """Per scale: does guidance run the unconditional branch there (unless a step drops it)?"""
    return [bool(generator.uses_unconditional(k)) for k in range(generator.num_scales)]


def grid_schedules(generator, first: int, ratios: Sequence[float] = GRID_RATIOS, allow_drop: bool = True,
                   allow_skip: bool = True) -> list[StaticSchedule]:
    """Every combination of per-scale options on scales ``first .. n-1``: each ratio with the CFG
    branch kept and (on scales where guidance runs it, if ``allow_drop``) dropped, plus skip."""
    n = generator.num_scales
    if not 0 <= first < n:
        raise ValueError(f"first controllable scale {first} is outside 0..{n - 1}")
    guided = guided_scales(generator)
    per_scale = []
    for k in range(first, n):
        opts = [(float(r), False) for r in ratios]
        if allow_drop and guided[k]:
            opts += [(float(r), True) for r in ratios]
        if allow_skip:
            opts.append((SKIP, False))
        per_scale.append(opts)
    out = []
    for combo in itertools.product(*per_scale):
        out.append(StaticSchedule(tuple([0.0] * first + [r for r, _ in combo]),
                                  tuple([False] * first + [d for _, d in combo])))
    return out


def schedule_fractions(generator, schedule: StaticSchedule) -> tuple[float, float]:
    """(transformer fraction, total fraction) of a static schedule, analytic."""
    flags = schedule.unconditional_flags(guided_scales(generator))
    return generator.flops_fraction(list(schedule.ratios), flags), total_flops_fraction(generator, list(schedule.ratios), flags)


class FlopsTable:
    """Memoised ``schedule_fractions`` of one generator: the unpruned cost, the prefill and the fixed
    decoder + text cost are computed once, then one ``schedule_flops`` call per schedule (filtering a
    6,561-schedule grid at several targets asks for the same schedules many times). Equal to
    ``schedule_fractions`` (tested)."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.guided = guided_scales(generator)
        self.full = generator.flops_full()
        self.prefill = self.full - sum(generator.schedule_flops([0.0] * generator.num_scales))
        self.fixed = generator.decode_flops() + generator.text_flops()
        self._memo: dict[StaticSchedule, tuple[float, float]] = {}

    def __call__(self, schedule: StaticSchedule) -> tuple[float, float]:
        if schedule not in self._memo:
            used = self.prefill + sum(self.generator.schedule_flops(list(schedule.ratios),
                                                                    schedule.unconditional_flags(self.guided)))
            self._memo[schedule] = (used / self.full, (used + self.fixed) / (self.full + self.fixed))
        return self._memo[schedule]

    def transformer(self, schedule: StaticSchedule) -> float:
        return self(schedule)[0]

    def total(self, schedule: StaticSchedule) -> float:
        return self(schedule)[1]


def schedule_key(schedule: StaticSchedule) -> str:
    """A stable text key: ratios and the drop flags (``d`` per dropped scale)."""
    return ",".join(f"{r:g}" + ("d" if d else "") for r, d in zip(schedule.ratios, schedule.drop_uncond))


# ---- the search -------------------------------------------------------------------------------------

@dataclass
class StaticSearchResult:
    """The best static schedule at a total-FLOPs target, with the evidence that it is the best."""

    schedule: StaticSchedule
    quality: float                      # mean validation QUALITY of ``schedule``
    transformer_fraction: float
    total_fraction: float
    target_total_fraction: float
    grid_size: int                      # schedules in the grid
    grid_points_evaluated: int          # grid schedules with total FLOPs <= target (all evaluated)
    best_grid_schedule: StaticSchedule
    best_grid_quality: float            # the best of those: quality >= this by construction
    refinement_evaluations: int = 0
    refinement_rounds: int = 0

    def to_dict(self, widths: tuple[int, ...]) -> dict:
        return {"schedule": self.schedule.describe(widths), "ratios": list(self.schedule.ratios),
                "drop_uncond": list(self.schedule.drop_uncond), "val_quality": self.quality,
                "transformer_fraction": self.transformer_fraction, "total_fraction": self.total_fraction,
                "target_total_fraction": self.target_total_fraction, "grid_size": self.grid_size,
                "grid_points_evaluated": self.grid_points_evaluated,
                "best_grid_schedule": self.best_grid_schedule.describe(widths), "best_grid_val_quality": self.best_grid_quality,
                "refinement_evaluations": self.refinement_evaluations, "refinement_rounds": self.refinement_rounds}


def neighbours(schedule: StaticSchedule, first: int, guided: list[bool], max_ratio: float,
               steps: Sequence[float] = REFINE_STEPS, allow_drop: bool = True) -> list[StaticSchedule]:
    """Coordinate moves on the controllable scales: ratio +-step (a ratio reaching ``max_ratio`` - the
    agent's skip threshold - becomes a skip; a skip moves down to 1 - step, on a guided scale also with
    the CFG branch dropped), and flipping the drop flag of a guided, non-skipped scale. Without
    ``allow_drop`` (an agent that may not drop the CFG branch) no move touches a drop flag."""
    out = []
    r0, d0 = list(schedule.ratios), list(schedule.drop_uncond)
    for k in range(first, len(r0)):
        for step in steps:
            for sign in (-1.0, 1.0):
                r = round(r0[k] + sign * step, 6)
                if r < 0 or (r0[k] >= 1.0 and sign > 0):
                    continue
                if r >= max_ratio:
                    r = SKIP
                ratios, drops = list(r0), list(d0)
                ratios[k] = r
                if r >= 1.0:
                    drops[k] = False
                if (ratios, drops) != (r0, d0):
                    out.append(StaticSchedule(tuple(ratios), tuple(drops)))
                if allow_drop and r0[k] >= 1.0 and r < 1.0 and guided[k]:  # leaving a skip: also without the CFG branch,
                    drops[k] = True  # which may be the only way back under the target (one move, not two)
                    out.append(StaticSchedule(tuple(ratios), tuple(drops)))
        if allow_drop and r0[k] < 1.0 and guided[k]:
            drops = list(d0)
            drops[k] = not drops[k]
            out.append(StaticSchedule(tuple(r0), tuple(drops)))
    return list(dict.fromkeys(out))


def search_best_static(grid: Sequence[StaticSchedule], total_fraction: Callable[[StaticSchedule], float],
                       mean_quality: Callable[[list[StaticSchedule]], np.ndarray], target_total_fraction: float,
                       first: int, guided: list[bool], max_ratio: float = 0.9, refine_rounds: int = 4,
                       transformer_fraction: Callable[[StaticSchedule], float] | None = None,
                       known: dict[StaticSchedule, float] | None = None, allow_drop: bool = True) -> StaticSearchResult:
    """Exhaustive grid (filtered by total FLOPs <= target before evaluating anything), then a greedy
    local refinement from the best grid point: each round evaluates every unseen neighbour that fits
    the target and moves to the best one if it is strictly better; stops when none is, or after
    ``refine_rounds`` rounds.

    mean_quality: schedules -> their mean QUALITY (injectable: the real one generates and scores
    images; tests pass an analytic objective). known: qualities already computed (reused, not asked).
    allow_drop: the compared agent's CFG-drop lever; without it, grid schedules that drop the CFG branch
    are left out and refinement never sets a drop flag (the static schedule gets the agent's levers).
    """
    seen: dict[StaticSchedule, float] = dict(known or {})
    if not allow_drop:
        grid = [s for s in grid if not any(s.drop_uncond)]
    fits = [s for s in grid if total_fraction(s) <= target_total_fraction + 1e-12]
    if not fits:
        raise ValueError(f"no grid schedule has total FLOPs <= {target_total_fraction:.4f} of the unpruned image's")

    def ask(schedules: list[StaticSchedule]) -> None:
        new = [s for s in dict.fromkeys(schedules) if s not in seen]
        if new:
            for s, q in zip(new, mean_quality(new)):
                seen[s] = float(q)

    ask(fits)
    best = max(fits, key=lambda s: seen[s])  # ties: the first in grid order
    best_grid, best_grid_q = best, seen[best]
    evaluated_refine, rounds = 0, 0
    for _ in range(refine_rounds):
        cands = [s for s in neighbours(best, first, guided, max_ratio, allow_drop=allow_drop)
                 if s not in seen and total_fraction(s) <= target_total_fraction + 1e-12]
        rounds += 1
        if not cands:
            break
        ask(cands)
        evaluated_refine += len(cands)
        top = max(cands, key=lambda s: seen[s])
        if seen[top] <= seen[best]:
            break
        best = top
    tf = transformer_fraction(best) if transformer_fraction is not None else float("nan")
    return StaticSearchResult(best, seen[best], tf, total_fraction(best), target_total_fraction, len(grid), len(fits),
                              best_grid, best_grid_q, evaluated_refine, rounds)


def pareto_frontier(points: Sequence[tuple[StaticSchedule, float, float]]) -> list[tuple[StaticSchedule, float, float]]:
    """(schedule, total fraction, quality) points that no cheaper-or-equal point beats: sorted by FLOPs,
    each strictly better than every point at or below its FLOPs."""
    ordered = sorted(points, key=lambda p: (p[1], -p[2]))
    out, best = [], -np.inf
    for p in ordered:
        if p[2] > best:
            out.append(p)
            best = p[2]
    return out
