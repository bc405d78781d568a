"""The best static schedule: grid + FLOPs filter + refinement, prefix-shared generation, the quality
objective, the cache, the frontier; the static baselines with the compared agent's levers; the random
schedules at an agent's FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedded.loaders import random_generator
from evaluation.grid_evaluation import GridCache, GridEvaluator, QualityScorer, run_prefix_tree
from evaluation.static_search import (
    FlopsTable, grid_schedules, guided_scales, neighbours, pareto_frontier, schedule_fractions, search_best_static,
)
from generator.schedules import StaticSchedule

PROMPTS = ["a large red solid circle in the centre on a plain gray background",
           "a small blue dotted star at the top left on a plain white background"]
# One metric computed on different batch shapes (the grid scores a batch, ``RewardFunction.terminal`` one
# image): CPU kernels sum in another order per batch shape, and which order depends on the CPU, so float32
# results (CLIP features, SSIM / PSNR rounded to float32) differ by ~1e-7 relative (measured on another CPU:
# QUALITY -0.86162809 vs -0.86162817). Exact equality is kept only where the computation is the same.
FLOAT32 = dict(rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def gen():
    return random_generator(0)


def test_grid_has_every_lever(gen):
    grid = grid_schedules(gen, first=3)
    assert len(grid) == 9 ** 4 and len(set(grid)) == len(grid)  # {0,.25,.5,.75} x CFG kept/dropped + skip
    assert all(s.ratios[:3] == (0.0, 0.0, 0.0) and not any(s.drop_uncond[:3]) for s in grid)
    assert StaticSchedule((0, 0, 0, 0, 0, 1, 1), (False,) * 4 + (True, False, False)) in grid
    assert len(grid_schedules(gen, first=3, allow_drop=False)) == 5 ** 4
    flops = FlopsTable(gen)
    for s in grid[::997]:
        assert flops(s) == pytest.approx(schedule_fractions(gen, s), rel=1e-12)


def test_grid_search_finds_the_known_optimum_under_the_real_flops_filter(gen):
    """Objective: minus the distance to a target schedule S* (ratios, and 0.5 per wrong CFG flag) that
    is off the grid (0.7 on one scale) and costs exactly the FLOPs target, plus a large bonus for an
    expensive schedule above the target. The search must skip the expensive one without evaluating it,
    find the nearest grid point that fits (0.75: 0.5 costs more than S*), then reach S* exactly by a
    -0.05 refinement step."""
    first, guided = 3, guided_scales(gen)
    star = StaticSchedule((0, 0, 0, 0.0, 0.7, 1.0, 1.0), (False, False, False, False, True, False, False))
    expensive = StaticSchedule((0,) * 7, (False,) * 7)
    flops = FlopsTable(gen)
    total = flops.total
    target = total(star)
    assert total(expensive) > target

    def objective(s: StaticSchedule) -> float:
        dist = sum(abs(a - b) for a, b in zip(s.ratios, star.ratios)) + 0.5 * sum(a != b for a, b in zip(s.drop_uncond, star.drop_uncond))
        return -dist + (100.0 if s == expensive else 0.0)

    asked: list[StaticSchedule] = []

    def mean_quality(schedules):
        asked.extend(schedules)
        return np.asarray([objective(s) for s in schedules])

    grid = grid_schedules(gen, first)
    res = search_best_static(grid, total, mean_quality, target, first, guided, max_ratio=0.9,
                             transformer_fraction=flops.transformer)
    assert all(total(s) <= target for s in asked)  # nothing over the target was ever evaluated
    fits = [s for s in grid if total(s) <= target]
    assert res.grid_points_evaluated == len(fits) and set(fits) <= set(asked)
    near = StaticSchedule((0, 0, 0, 0.0, 0.75, 1.0, 1.0), star.drop_uncond)
    assert res.best_grid_schedule == near and res.best_grid_quality == pytest.approx(-0.05)
    assert res.schedule == star and res.quality == pytest.approx(0.0, abs=1e-12)
    assert max(fits, key=objective) == near  # the known optimum, found here without the search
    assert res.total_fraction <= target and res.transformer_fraction == schedule_fractions(gen, star)[0]
    assert res.transformer_fraction < res.total_fraction


def test_an_agent_without_the_cfg_lever_gets_a_static_search_without_it(gen):
    """Same objective as above, whose optimum drops the CFG branch at scale 4: for an agent that may not
    drop it, no schedule that drops it is evaluated or returned, and refinement never sets a flag."""
    first, guided = 3, guided_scales(gen)
    star = StaticSchedule((0, 0, 0, 0.0, 0.7, 1.0, 1.0), (False, False, False, False, True, False, False))
    flops = FlopsTable(gen)
    asked: list[StaticSchedule] = []

    def mean_quality(schedules):
        asked.extend(schedules)
        return np.asarray([-sum(abs(a - b) for a, b in zip(s.ratios, star.ratios))
                           - 0.5 * sum(a != b for a, b in zip(s.drop_uncond, star.drop_uncond)) for s in schedules])

    grid = grid_schedules(gen, first)
    free = search_best_static(grid, flops.total, mean_quality, flops.total(star) + 0.02, first, guided)
    assert any(free.schedule.drop_uncond) and any(any(s.drop_uncond) for s in asked)  # the lever matters here
    asked.clear()
    kept = search_best_static(grid, flops.total, mean_quality, flops.total(star) + 0.02, first, guided,
                              allow_drop=False)
    assert asked and not any(any(s.drop_uncond) for s in asked) and not any(kept.schedule.drop_uncond)
    assert kept.grid_size == 5 ** 4 and kept.refinement_evaluations > 0
    assert not any(any(n.drop_uncond) for n in neighbours(kept.schedule, first, guided, 0.9, allow_drop=False))


def test_neighbours_move_ratios_skip_and_flags():
    s = StaticSchedule((0, 0, 0, 0.75, 1.0, 0.0, 0.5), (False, False, False, False, False, True, False))
    nb = neighbours(s, 3, [True] * 7, max_ratio=0.9)
    rat = {(n.ratios, n.drop_uncond) for n in nb}
    d = s.drop_uncond
    assert ((0, 0, 0, 0.8, 1.0, 0.0, 0.5), d) in rat and ((0, 0, 0, 0.875, 1.0, 0.0, 0.5), d) in rat
    assert ((0, 0, 0, 0.75, 0.875, 0.0, 0.5), d) in rat and not any(n.ratios[4] == 0.95 for n in nb)  # 0.95 = a skip
    assert ((0, 0, 0, 0.75, 1.0, 0.0, 0.5), (False,) * 7) in rat       # CFG flag flipped back on
    # scale 5 is at ratio 0: it moves up by each step only, or flips its CFG flag (never below 0, not kept as is)
    assert sorted(n.ratios[5] for n in nb if n.ratios[5] != s.ratios[5]) == [0.05, 0.125] and s not in nb
    assert not any(n.drop_uncond[4] and n.ratios[4] >= 1.0 for n in nb)  # a skipped scale has no flag
    d4 = d[:4] + (True,) + d[5:]  # leaving a skip, also without the CFG branch (one move: it may be the only fit)
    assert ((0, 0, 0, 0.75, 0.875, 0.0, 0.5), d4) in rat
    # ratios reaching the skip threshold become a skip
    nb2 = neighbours(StaticSchedule((0, 0, 0, 0, 0, 0, 0.85)), 6, [True] * 7, max_ratio=0.9)
    assert StaticSchedule((0, 0, 0, 0, 0, 0, 1.0)) in nb2


def test_prefix_tree_images_equal_plain_generation(gen):
    items = [(PROMPTS[0], 0), (PROMPTS[1], 0), (PROMPTS[0], 3)]
    scheds = [StaticSchedule((0, 0, 0, 0.4, 0.5, 1, 1)),
              StaticSchedule((0, 0, 0, 0.4, 0.5, 0.25, 1), (False,) * 5 + (True, False)),
              StaticSchedule((0, 0, 0, 0.0, 1.0, 0.0, 0.75), (False,) * 3 + (True, False, False, True))]
    got: dict = {}
    run_prefix_tree(gen, items, scheds, lambda s, sl, img: got.setdefault(s, []).append((sl, img)), batch_size=2)
    for s in scheds:
        assert [sl for sl, _ in got[s]] == [slice(0, 2), slice(2, 3)]
        for sl, img in got[s]:
            chunk = items[sl]
            ref, _ = gen.generate([p for p, _ in chunk], [x for _, x in chunk], schedule=s)
            assert torch.equal(img, ref)


def test_quality_scorer_is_the_rewards_quality_term_and_is_cached(gen, tmp_path):
    from rewards import ClipScorer, RewardConfig, RewardFunction

    rfn = RewardFunction(RewardConfig.embedded(psnr_weight=0.3), clip=ClipScorer.embedded())
    items = [(PROMPTS[0], 0), (PROMPTS[1], 1)]
    refs, _ = gen.generate([p for p, _ in items], [s for _, s in items])
    scorer = QualityScorer(rfn, refs, [p for p, _ in items])
    sched = StaticSchedule((0, 0, 0, 0.4, 0.5, 1, 1), (False,) * 4 + (True, False, False))
    cache = GridCache(tmp_path, gen.fingerprint(), items, scorer.identity())
    ev = GridEvaluator(gen, items, [scorer], cache=cache)
    res = ev.evaluate([sched])[sched]
    imgs, state = gen.generate([p for p, _ in items], [s for _, s in items], schedule=sched)
    for i, (p, _) in enumerate(items):
        _, terms = rfn.terminal(imgs[i:i + 1], refs[i:i + 1], p, used_fraction=0.9)
        assert res["quality"][i] == pytest.approx(terms["quality_reward"], **FLOAT32)  # no FLOPs / budget terms
        assert res["ssim"][i] == pytest.approx(terms["ssim"], **FLOAT32)
    # the reward on the same batch: the same metrics on the same batch shape, then one formula (RewardConfig.quality),
    # so the same bits
    batch_terms = [t for _, t in rfn.terminal_batch(imgs, refs, [p for p, _ in items], [0.9, 0.9])]
    assert res["quality"].tolist() == [t["quality_reward"] for t in batch_terms]
    assert ev.generated == 1
    # evaluate_agent's rows: QUALITY from the metric suite's own values equals the scorer's
    from evaluation.metrics import MetricSuite

    suite_rows = MetricSuite(clip=rfn.clip, lpips=None).score(imgs, [p for p, _ in items], refs)
    from_suite = scorer.quality_of({m: [r[m] for r in suite_rows] for m in ("ssim", "psnr", "clip_score")}, slice(0, 2))
    np.testing.assert_allclose(from_suite, res["quality"], rtol=FLOAT32["rel"], atol=FLOAT32["abs"])
    again = GridEvaluator(gen, items, [scorer], cache=GridCache(tmp_path, gen.fingerprint(), items, scorer.identity()))
    res2 = again.evaluate([sched])[sched]
    assert again.generated == 0 and np.array_equal(res2["quality"], res["quality"])  # a rerun generates nothing
    other = GridCache(tmp_path, gen.fingerprint(), items[:1], scorer.identity())
    assert other.get(sched) is None  # other items: another cache entry


def test_frontier_on_constructed_numbers():
    s = [StaticSchedule((0, 0, 0, r, 1, 1, 1)) for r in (0.0, 0.25, 0.5, 0.75)]
    pts = [(s[0], 0.50, 0.9), (s[1], 0.45, 0.95), (s[2], 0.40, 0.7), (s[3], 0.42, 0.6)]
    assert [p[0] for p in pareto_frontier(pts)] == [s[2], s[1]]  # s[3] costs more than s[2] and is worse; s[0] too


def _one_try_at_a_time(generator, target, first, rng, skip_threshold, tolerance=0.02, tries=20000, allow_drop=False):
    """The random baseline's definition, one try per loop (the reference the block-drawn one must equal):
    per try the ratios, the power, then (where the agent may drop the CFG branch) one flag draw per
    scale; the first try in [target - tolerance, target], else the closest below, else all skipped."""
    from evaluation.random_schedules import vector_to_ratios

    n = generator.num_scales
    guided = [bool(generator.uses_unconditional(k)) for k in range(n)]
    best, best_gap = None, float("inf")
    for _ in range(tries):
        u = rng.random(n - first) ** float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
        ratios = vector_to_ratios(u, n, first, skip_threshold)
        flags = rng.random(n - first) if allow_drop else np.ones(n - first)
        drops = [False] * first + [bool(f < 0.5 and guided[first + i] and ratios[first + i] < 1.0)
                                   for i, f in enumerate(flags)]
        frac = generator.flops_fraction(ratios, [g and not d for g, d in zip(guided, drops)])
        if target - tolerance <= frac <= target:
            return StaticSchedule(tuple(ratios), tuple(drops))
        if frac <= target and target - frac < best_gap:
            best, best_gap = StaticSchedule(tuple(ratios), tuple(drops)), target - frac
    return best if best is not None else StaticSchedule((0.0,) * first + (1.0,) * (n - first))


def test_schedule_flops_many_is_the_per_schedule_sum_exactly(gen):
    rng = np.random.default_rng(1)
    R = rng.random((500, gen.num_scales))
    R[rng.random(R.shape) < 0.3] = 1.0
    R[rng.random(R.shape) < 0.2] = 0.0
    for unc in ([True] * gen.num_scales, [bool(x) for x in rng.integers(0, 2, gen.num_scales)]):
        loop = [sum(gen.schedule_flops([float(x) for x in row], unc)) for row in R]
        assert gen.schedule_flops_many(R, unc).tolist() == loop
    with pytest.raises(ValueError, match="ratios"):
        gen.schedule_flops_many(R[:, :3])


@pytest.mark.parametrize("fast", [True, False], ids=["schedule_flops_many", "one-schedule-flops-at-a-time"])
@pytest.mark.parametrize("target, tries, tolerance, allow_drop", [
    (0.35, 20000, 0.02, False), (0.21, 2000, 0.02, False), (0.30, 300, 1e-7, False),
    (0.35, 20000, 0.02, True), (0.21, 2000, 0.02, True), (0.30, 300, 1e-7, True)])
def test_random_schedules_drawn_in_blocks_are_the_one_at_a_time_draws(gen, target, tries, tolerance, allow_drop, fast):
    """Same schedules, and the stream left at the same place (the next draws agree too), for an easy
    target, one near the all-skip floor (0.184 here: many blocks of tries, often none in the window) and
    one whose window no draw hits (the closest below it), with
    and without CFG-drop flags; with the embedded backend's vectorised FLOPs and without (what a backend
    offering only the protocol's methods gets: the same generator's, minus the optional one)."""
    from types import SimpleNamespace

    from evaluation.random_schedules import random_schedule_at

    g = gen if fast else SimpleNamespace(num_scales=gen.num_scales, flops_full=gen.flops_full,
                                         schedule_flops=gen.schedule_flops, uses_unconditional=gen.uses_unconditional)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(4):
        got = random_schedule_at(g, target, 3, a, 0.9, tolerance=tolerance, tries=tries, block=256, allow_drop=allow_drop)
        assert got == _one_try_at_a_time(gen, target, 3, b, 0.9, tolerance, tries, allow_drop)
    assert a.random() == b.random()


@pytest.mark.parametrize("allow_drop", [False, True])
def test_random_schedules_never_exceed_the_target_and_use_the_agents_levers(gen, allow_drop):
    """Every schedule's transformer FLOPs (analytic, and as generated) <= the target exactly and within
    the tolerance below it; only the controllable scales move; CFG-drop flags are drawn exactly where the
    agent may drop the branch (on guided scales that run); the same seed gives the same schedules."""
    from evaluation.random_schedules import TOLERANCE, random_schedule_at

    target, guided = 0.3, guided_scales(gen)
    rng = np.random.default_rng(0)
    draws = [random_schedule_at(gen, target, 3, rng, 0.9, allow_drop=allow_drop) for _ in range(200)]
    assert draws == [random_schedule_at(gen, target, 3, r, 0.9, allow_drop=allow_drop)
                     for r in [np.random.default_rng(0)] for _ in range(200)]
    for s in draws:
        frac = gen.flops_fraction(list(s.ratios), s.unconditional_flags(guided))
        assert target - TOLERANCE <= frac <= target
        assert s.ratios[:3] == (0.0,) * 3 and not any(s.drop_uncond[:3])
        assert all(guided[k] and s.ratios[k] < 1.0 for k in range(7) if s.drop_uncond[k])
    dropping = sum(any(s.drop_uncond) for s in draws)
    assert (dropping > 50) if allow_drop else dropping == 0
    for s in draws[:3]:  # the generated images spend what the analytic model says
        _, state = gen.generate([PROMPTS[0]], [0], schedule=s)
        assert state.flops_used / gen.flops_full() == pytest.approx(gen.flops_fraction(list(s.ratios),
                                                                                        s.unconditional_flags(guided)),
                                                                    rel=1e-12)
        assert state.flops_used / gen.flops_full() <= target + 1e-12
    floor = gen.flops_fraction([0.0] * 3 + [1.0] * 4)
    with pytest.raises(ValueError, match=f"below {floor:.4f}, the cheapest schedule on scales 3..6"):
        random_schedule_at(gen, floor - 0.01, 3, rng, 0.9)
    assert random_schedule_at(gen, floor, 3, rng, 0.9, tolerance=0.0, tries=5).ratios == (0.0,) * 3 + (1.0,) * 4


def test_static_baselines_give_each_agent_its_own_levers_and_every_oracle(gen, tmp_path):
    """Two agents at the same FLOPs target, one without the CFG-drop lever: its best static schedule, its
    search grid and its oracles' candidates and choices never drop the branch, while the other's may;
    every oracle kind is there with 2 seeds, and with one seed the cross-validated one is left out with
    a note (not an error)."""
    from evaluation.scoreboard import DomainEval, Levers, build_static_baselines
    from rewards import ClipScorer, RewardConfig, RewardFunction

    rfn = RewardFunction(RewardConfig.embedded(), clip=ClipScorer.embedded())
    flops = FlopsTable(gen)
    target = flops.total(StaticSchedule((0, 0, 0, 0.5, 0.5, 1.0, 1.0)))
    levers = {"rl:kept": Levers(3, False), "rl:free": Levers(3, True)}
    targets = {"rl:kept": target, "rl:free": target}

    def build(seeds):
        items = [(p, s) for p in PROMPTS for s in seeds]
        refs, _ = gen.generate([p for p, _ in items], [s for _, s in items])
        return build_static_baselines(gen, targets, levers, [(PROMPTS[0], 7)], items, refs, rfn, DomainEval(None, "off"),
                                      refine_rounds=1, oracle=True, cache_dir=tmp_path, grid_ratios=(0.5,),
                                      log=lambda _: None)

    found = build((0, 1))
    assert found.info["grid_size"] == 3 ** 4 and found.info["grid_drops_cfg"]
    assert found.search["rl:kept"].grid_size == 2 ** 4 and found.search["rl:free"].grid_size == 3 ** 4
    assert not any(found.search["rl:kept"].schedule.drop_uncond)
    assert "always kept" in found.info["levers"]["rl:kept"] and "kept or dropped" in found.info["levers"]["rl:free"]
    assert found.info["oracle_candidates"]["rl:kept"] < found.info["oracle_candidates"]["rl:free"]
    assert set(found.oracles["rl:kept"]) == {"oracle", "oracle_cv", "oracle_image"} and not found.info["oracles_left_out"]
    for kind, choice in found.oracles["rl:kept"].items():
        assert len(choice) == 4 and not any(any(s.drop_uncond) for s in choice.values()), kind
        assert all(flops.total(s) <= target + 1e-12 for s in choice.values())
    one_seed = build((0,))
    assert set(one_seed.oracles["rl:free"]) == {"oracle", "oracle_image"}
    assert "needs >= 2 seeds" in one_seed.info["oracles_left_out"]["oracle_cv"]
    with pytest.raises(ValueError, match="different scales"):
        build_static_baselines(gen, targets, {"rl:kept": Levers(3, False), "rl:free": Levers(4, True)}, [], [], None,
                               rfn, DomainEval(None, "off"), 0, True, None)
