"""The static frontier: its data type, the grid moves a residual policy makes, the greedy descent and
the frontier built from one pool on real validation images."""

from __future__ import annotations

import json

import pytest

from envs.config import EnvConfig
from envs.factory import make_generator
from envs.frontier import Frontier, FrontierEntry, FrontierError
from evaluation.frontier_build import FrontierSettings, build_frontier, grid_moves, greedy_descent, neighbourhood
from evaluation.static_search import GRID_RATIOS, FlopsTable, guided_scales
from generator.schedules import StaticSchedule


@pytest.fixture(scope="module")
def generator():
    return make_generator(EnvConfig())


def _s(*late, drops=None, first=3, n=7) -> StaticSchedule:
    ratios = (0.0,) * first + tuple(late)
    return StaticSchedule(ratios, (False,) * first + tuple(drops or (False,) * len(late)))


def test_grid_moves_change_one_scale_by_one_grid_step(generator):
    guided = guided_scales(generator)
    base = _s(0.25, 0.0, 1.0, 0.75)
    moves = grid_moves(base, 3, guided)
    assert base not in moves and len(moves) == len(set(moves))
    for m in moves:
        changed = [k for k in range(7) if (m.ratios[k], m.drop_uncond[k]) != (base.ratios[k], base.drop_uncond[k])]
        assert len(changed) == 1 and changed[0] >= 3
        k = changed[0]
        r0, r1 = base.ratios[k], m.ratios[k]
        if r1 != r0:  # a ratio move: one grid step, or skip <-> run
            grid = list(GRID_RATIOS) + [1.0]
            assert abs(grid.index(r1) - grid.index(r0)) == 1 or 1.0 in (r0, r1)
    # from 0.75 one step more is a skip; from a skip the way back is 0.75 with the CFG branch kept
    assert _s(0.25, 0.0, 1.0, 1.0) in moves and _s(0.25, 0.0, 0.75, 0.75) in moves
    # 0 has no "less pruning"; flipping CFG on a skipped scale is not a move
    assert not any(m.ratios[4] < 0 for m in moves)
    assert not any(m.ratios[5] >= 1.0 and m.drop_uncond[5] for m in moves)


def test_cheaper_moves_spend_less(generator):
    flops, guided = FlopsTable(generator), guided_scales(generator)
    base = _s(0.25, 0.0, 0.5, 0.0, drops=(False, True, False, False))
    cheaper = grid_moves(base, 3, guided, cheaper_only=True)
    assert cheaper and all(flops.transformer(m) < flops.transformer(base) for m in cheaper)
    assert set(cheaper) < set(grid_moves(base, 3, guided))
    assert not any(m == _s(0.25, 0.0, 0.5, 0.0) for m in cheaper)  # re-adding the CFG branch costs more


def test_greedy_descent_reaches_the_floor_on_an_analytic_objective(generator):
    flops, guided = FlopsTable(generator), guided_scales(generator)
    calls = []

    def quality(schedules):  # pruning the last scale is free, anything else costs
        calls.append(len(schedules))
        return {s: -sum(r for r in s.ratios[:6]) - 0.1 * sum(s.drop_uncond) for s in schedules}

    start = StaticSchedule((0.0,) * 7)
    seen = greedy_descent(start, 0.5, flops.transformer, quality, 3, guided, True, rounds=40)
    assert min(flops.transformer(s) for s in seen) <= 0.5
    assert _s(0.0, 0.0, 0.0, 1.0) in seen  # skipping the free scale is the first move taken


def test_frontier_json_round_trip_and_errors(tmp_path, generator):
    flops = FlopsTable(generator)
    a, b = _s(0.5, 0.5, 1.0, 1.0), _s(0.0, 0.0, 0.5, 1.0)
    entries = tuple(FrontierEntry(flops.transformer(s), s, flops.transformer(s), flops.total(s), q)
                    for s, q in ((a, -0.9), (b, -0.5)))
    f = Frontier(entries, 7, 3, generator.fingerprint())
    f.save(tmp_path / "frontier.json", tuple(generator.scale_widths))
    g = Frontier.load(tmp_path / "frontier.json")
    assert g == Frontier(entries, 7, 3, generator.fingerprint(), g.info)
    lo, hi = sorted(e.transformer_fraction for e in entries)
    assert g.schedule_for(hi) == g.entries[-1].schedule and g.schedule_for((lo + hi) / 2) == g.entries[0].schedule
    with pytest.raises(FrontierError, match="below the frontier's smallest budget"):
        g.schedule_for(lo / 2)
    with pytest.raises(FrontierError, match="over its budget"):
        Frontier((FrontierEntry(0.1, a, 0.3, 0.4, 0.0),), 7, 3)
    d = json.loads((tmp_path / "frontier.json").read_text())
    d["version"] = 99
    with pytest.raises(FrontierError, match="version"):
        Frontier.from_dict(d)
    with pytest.raises(FrontierError, match="does not exist"):
        Frontier.load(tmp_path / "nope.json")


def test_built_frontier_is_the_pareto_set_of_its_pool(tmp_path, generator):
    from rewards import RewardFunction
    from rewards.reward import RewardConfig

    rfn = RewardFunction(RewardConfig(clip_weight=0.0, lpips_weight=0.0))
    settings = FrontierSettings(val_prompts=3, exhaustive_max=0.25, descent_rounds=3, allow_drop=False,
                                cache_dir=tmp_path)
    frontier, pool = build_frontier(generator, rfn, 3, settings, log=lambda m: None)
    flops = FlopsTable(generator)
    assert len(pool) >= frontier.info["exhaustive"] and frontier.info["descent_evaluated"] >= 1
    for e in frontier.entries:  # nothing in the pool is cheaper-or-equal and better
        assert not any(flops.transformer(s) <= e.transformer_fraction and q > e.val_quality for s, q in pool.items())
        assert e.val_quality == pool[e.schedule]
    qs = [e.val_quality for e in frontier.entries]
    assert qs == sorted(qs) and len(set(qs)) == len(qs)
    # the refinement at ten budgets: off-grid schedules in the pool, each refined schedule within its budget,
    # and the frontier's schedule at that budget at least as good as the refined one
    from evaluation.static_search import GRID_RATIOS

    refined = frontier.info["refined"]
    assert len(refined) == 10 and frontier.info["refinement_evaluated"] > 0
    assert any(r not in GRID_RATIOS + (0.0, 1.0) for s in pool for r in s.ratios)
    by_label = {s.describe(tuple(generator.scale_widths)): s for s in pool}
    for r in refined:
        s = by_label[r["refined"]]
        assert flops.transformer(s) <= r["budget"] + 1e-12 and pool[s] == r["refined_quality"]
        assert frontier.schedule_for(r["budget"]) in pool
        assert pool[frontier.schedule_for(r["budget"])] >= r["refined_quality"]
    # a second build reads every schedule from the cache: the same frontier
    again, _ = build_frontier(generator, rfn, 3, settings, log=lambda m: None)
    assert again.entries == frontier.entries
    base, near = neighbourhood(frontier, frontier.entries[-1].budget, flops, guided_scales(generator), allow_drop=False)
    assert base == frontier.entries[-1].schedule
    assert all(flops.transformer(s) <= frontier.entries[-1].budget + 1e-9 for s in near)


def test_near_lossless_targets_search_the_frontier_pool(tmp_path, generator):
    """A target that lets most of the 6,561-schedule grid through (0.95) is searched on the frontier's
    pool (exhaustive <= 0.36, greedy descent above), not on thousands of grid schedules."""
    from evaluation.scoreboard import EXHAUSTIVE_LIMIT, DomainEval, Levers, build_static_baselines
    from rewards import RewardFunction
    from rewards.reward import RewardConfig

    rfn = RewardFunction(RewardConfig(clip_weight=0.0, lpips_weight=0.0))
    flops = FlopsTable(generator)
    item = [("a small red circle at the top left on a plain blue background", 0)]
    test = [("a large green square in the center on a plain white background", 0)]
    refs, _ = generator.generate([test[0][0]], [0])
    target = flops.total(StaticSchedule((0.0,) * 3 + (0.25, 0.0, 0.0, 0.0)))  # ~0.95 of the total FLOPs
    found = build_static_baselines(generator, {"lossless": target}, {"lossless": Levers(3, True)}, item, test, refs, rfn,
                                   DomainEval(None, "off"), refine_rounds=0, oracle=False, cache_dir=tmp_path,
                                   log=lambda _: None)
    assert found.info["search_space"].startswith("the frontier pool")
    assert found.info["grid_fitting_largest_target"] < EXHAUSTIVE_LIMIT
    res = found.search["lossless"]
    assert res.total_fraction <= target + 1e-12 and res.grid_points_evaluated == found.info["grid_fitting_largest_target"]
