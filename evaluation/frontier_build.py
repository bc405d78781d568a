"""Build the static frontier (``envs.frontier.Frontier``) from one shared pool of grid schedules,
ranked by QUALITY (the reward's quality terms) on the validation items compare mode searches on, with
the static search's ``GridCache`` (so ``train.py`` and ``evaluate_agent.py`` never generate a schedule
twice on the same items).

The pool, all on the static search's grid (``evaluation.static_search.grid_schedules``: per
controllable scale {0, .25, .5, .75} x {keep, drop CFG} + skip):

- **exhaustive** where few schedules fit: every grid schedule with transformer FLOPs <= ``exhaustive_max``
  (default 0.36, just above FastVAR's 0.347 on the embedded model: 230 of 6,561 schedules);
- **greedy descent** from the unpruned schedule above that: each round evaluates the grid one-move
  neighbours that prune more (``grid_moves``: one grid step more pruning, a skip, or dropping the CFG
  branch at one scale) and moves to the one that loses the least quality per FLOP saved, until the
  spend is within ``exhaustive_max``.

- **refinement** at ``refine_budgets`` (default ten: 0.6, 0.8 and 1 x FastVAR's FLOPs, 0.4 ... 0.95): from
  the best pool schedule within each budget, the static search's local refinement
  (``evaluation.static_search.search_best_static``: ratio steps of 0.05 and 0.125 off the grid, CFG
  flips, up to ``refine_rounds`` rounds, each keeping the best neighbour within the budget), as compare
  mode refines its best static schedule.

The frontier is the pool's Pareto set (transformer FLOPs vs validation quality): for a budget b its
schedule is the best pool schedule spending <= b. Between the exhaustive region and the unpruned
schedule it covers only the descent's path, the refinements and the schedules they looked at: it says
so in its ``info``. A refined schedule may hold off-grid ratios; the residual agent's moves from it go
to the neighbouring grid ratios (``envs.residual_core.apply_move``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from envs.frontier import Frontier, FrontierEntry
from evaluation.static_search import FlopsTable, grid_schedules, guided_scales, pareto_frontier
from generator.schedules import StaticSchedule


@dataclass(frozen=True)
class FrontierSettings:
    """What the frontier is searched on (compare mode's default search items: 100 validation prompts x
    seed 0) and how far the exhaustive region reaches (transformer FLOPs fraction)."""

    val_source: str = "val"
    val_prompts: int = 100
    val_seeds: tuple[int, ...] = (0,)
    exhaustive_max: float = 0.36
    descent_rounds: int = 40
    refine_budgets: tuple[str, ...] = ("0.6fastvar", "0.8fastvar", "fastvar", "0.4", "0.5", "0.6", "0.7", "0.8",
                                       "0.9", "0.95")
    refine_rounds: int = 4
    allow_drop: bool = True
    batch_size: int = 100
    cache_dir: Path | None = Path("results") / "cache"


# ---- grid moves ---------------------------------------------------------------------------------------

def grid_moves(schedule: StaticSchedule, first: int, guided: list[bool], allow_drop: bool = True,
               cheaper_only: bool = False) -> list[StaticSchedule]:
    """The grid schedules one residual move away (``envs.residual_core.apply_move`` on one controllable
    scale: one grid step less or more pruning, flipping the CFG-drop flag, skip <-> run). ``cheaper_only``:
    only the moves that prune more (more pruning, a skip, dropping the CFG branch)."""
    from envs.residual_core import apply_move

    out = []
    ratios, drops = list(schedule.ratios), list(schedule.drop_uncond)
    for k in range(first, len(ratios)):
        r, d = ratios[k], drops[k]
        for move in ((2, 3, 4) if cheaper_only else (1, 2, 3, 4)):
            if move == 3 and (not allow_drop or (cheaper_only and d)):
                continue
            if cheaper_only and move == 4 and r >= 1.0:
                continue
            decision = apply_move(r, d, move, guided[k])
            if decision is None:
                continue
            rr, dd = list(ratios), list(drops)
            rr[k], dd[k] = decision[0], decision[1] and decision[0] < 1.0 and allow_drop
            s = StaticSchedule(tuple(rr), tuple(dd))
            if s != schedule:
                out.append(s)
    return list(dict.fromkeys(out))


def greedy_descent(start: StaticSchedule, floor: float, transformer: Callable[[StaticSchedule], float],
                   mean_quality: Callable[[list[StaticSchedule]], dict], first: int, guided: list[bool],
                   allow_drop: bool, rounds: int) -> list[StaticSchedule]:
    """The path from ``start`` down to transformer FLOPs <= ``floor``: each round, of the cheaper grid
    neighbours, the one losing the least quality per FLOP saved. Returns every schedule evaluated."""
    seen = dict(mean_quality([start]))
    cur = start
    for _ in range(rounds):
        if transformer(cur) <= floor + 1e-12:
            break
        cands = grid_moves(cur, first, guided, allow_drop=allow_drop, cheaper_only=True)
        if not cands:
            break
        seen.update(mean_quality([c for c in cands if c not in seen]))
        t0, q0 = transformer(cur), seen[cur]
        cur = min(cands, key=lambda c: ((q0 - seen[c]) / max(t0 - transformer(c), 1e-9), -seen[c]))
    return list(seen)


# ---- the frontier -------------------------------------------------------------------------------------

def val_items(settings: FrontierSettings, grammar: bool = True) -> list[tuple[str, int]]:
    from domain import load_prompts
    from evaluation.grid_evaluation import check_items

    prompts = load_prompts(settings.val_source)[:settings.val_prompts]
    return check_items(prompts, list(settings.val_seeds), f"--frontier-prompts {settings.val_source}", grammar)


def build_pool(generator, reward_fn, first: int, items: list[tuple[str, int]], settings: FrontierSettings,
               log: Callable[[str], None] = print) -> tuple[object, dict, dict]:
    """The shared pool (module docstring) on ``items``: (the validation ``GridEvaluator``, {schedule: mean
    QUALITY}, what it covers)."""
    from evaluation.grid_evaluation import validation_pass

    flops = FlopsTable(generator)
    guided = guided_scales(generator)
    grid = grid_schedules(generator, first, allow_drop=settings.allow_drop)
    exhaustive = [s for s in grid if flops.transformer(s) <= settings.exhaustive_max + 1e-12]
    log(f"frontier pool: {len(exhaustive)} of {len(grid)} grid schedules spend <= {settings.exhaustive_max:g} of the "
        f"transformer FLOPs (all evaluated); a greedy descent from the unpruned schedule covers the rest "
        f"({len(items)} validation items, cache {settings.cache_dir})")
    val_eval, quality = validation_pass(generator, exhaustive, items, reward_fn, settings.cache_dir, settings.batch_size)

    def mean_quality(schedules: list[StaticSchedule]) -> dict:
        new = [s for s in dict.fromkeys(schedules) if s not in quality]
        if new:
            quality.update({s: float(q) for s, q in zip(new, val_eval.mean_quality(new))})
        return {s: quality[s] for s in schedules}

    unpruned = StaticSchedule((0.0,) * generator.num_scales)
    path = greedy_descent(unpruned, settings.exhaustive_max, flops.transformer, mean_quality, first, guided,
                          settings.allow_drop, settings.descent_rounds)
    before = len(quality)
    refined = refine_at_budgets(generator, quality, mean_quality, flops, first, guided, settings)
    info = {"pool": len(quality), "exhaustive_max": settings.exhaustive_max, "exhaustive": len(exhaustive),
            "descent_evaluated": len(path), "refinement_evaluated": len(quality) - before, "refined": refined,
            "allow_drop": settings.allow_drop, "first_controllable_scale": first,
            "covers": f"every grid schedule <= {settings.exhaustive_max:g} of the transformer FLOPs; above that the "
                      "greedy descent's path from the unpruned schedule and its cheaper neighbours; off the grid, "
                      f"the local refinement at {len(refined)} budgets"}
    return val_eval, quality, info


def refine_at_budgets(generator, quality: dict, mean_quality: Callable[[list[StaticSchedule]], dict],
                      flops: FlopsTable, first: int, guided: list[bool], settings: FrontierSettings) -> list[dict]:
    """The local refinement at each of ``settings.refine_budgets`` (module docstring); adds what it evaluates
    to ``quality`` and returns, per budget, the pool's best schedule within it and the refined one."""
    import numpy as np

    from evaluation.compare_plan import read_budget
    from evaluation.static_search import search_best_static
    from generator.schedules import FastVARSchedule, schedule_ratios

    fv = float(generator.flops_fraction(schedule_ratios(FastVARSchedule(), generator.num_scales)))
    widths = tuple(generator.scale_widths)

    def mean_quality_array(schedules: list[StaticSchedule]) -> np.ndarray:
        q = mean_quality(schedules)
        return np.asarray([q[s] for s in schedules])

    out = []
    for token in settings.refine_budgets:
        b = read_budget(token).fraction(fv)
        if not any(flops.transformer(s) <= b + 1e-12 for s in quality):
            continue
        res = search_best_static(list(quality), flops.transformer, mean_quality_array, b, first, guided,
                                 refine_rounds=settings.refine_rounds, transformer_fraction=flops.transformer,
                                 known=quality, allow_drop=settings.allow_drop)
        out.append({"budget": b, "token": token, "pool_best": res.best_grid_schedule.describe(widths),
                    "pool_best_quality": res.best_grid_quality, "refined": res.schedule.describe(widths),
                    "refined_quality": res.quality, "evaluated": res.refinement_evaluations})
    return out


def build_frontier(generator, reward_fn, first: int, settings: FrontierSettings = FrontierSettings(),
                   log: Callable[[str], None] = print) -> tuple[Frontier, dict]:
    """The frontier (module docstring) and every pool schedule's validation quality ({schedule: quality})."""
    t0 = time.time()
    flops = FlopsTable(generator)
    items = val_items(settings, grammar=getattr(generator, "backend", "") == "tiny")
    _, quality, info = build_pool(generator, reward_fn, first, items, settings, log)
    points = pareto_frontier([(s, flops.transformer(s), q) for s, q in quality.items()])
    entries = tuple(FrontierEntry(t, s, t, flops.total(s), q) for s, t, q in points)
    info = {"val_items": f"{settings.val_source}: {len(dict.fromkeys(p for p, _ in items))} prompts x seeds "
                         f"{list(settings.val_seeds)}", **info, "seconds": round(time.time() - t0, 1)}
    frontier = Frontier(entries, generator.num_scales, first, generator.fingerprint(), info)
    log(f"frontier: {len(entries)} Pareto schedules from a pool of {len(quality)} ({info['seconds']} s)")
    return frontier, quality


def neighbourhood(frontier: Frontier, budget: float, flops: FlopsTable, guided: list[bool],
                  allow_drop: bool = True) -> tuple[StaticSchedule, list[StaticSchedule]]:
    """The frontier schedule for ``budget`` and its grid one-move neighbours that fit the budget: what a
    residual policy making one move can choose from."""
    base = frontier.schedule_for(budget)
    near = [s for s in grid_moves(base, frontier.first_controllable, guided, allow_drop=allow_drop)
            if flops.transformer(s) <= budget + 1e-9]
    return base, near
