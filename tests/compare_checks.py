"""Independent checks of a compare-mode report, shared by tests/test_train_agents.py and tests/test_evaluate.py
(a helper module, not a test file: pytest collects only ``test_*.py``).

Each check recomputes what the report claims by another route than the one that wrote it: FLOPs
analytically from each image's recorded ratios (not the generation state's counters), the oracle's
per-prompt choice from the grid cache's per-item quality, the best static schedule's validation quality
by generating its images again and scoring them with ``RewardFunction.terminal_batch`` (not the prefix
tree, the grid cache or ``QualityScorer``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from evaluation.static_search import grid_schedules, schedule_fractions, schedule_key
from generator.schedules import StaticSchedule

#: one quantity computed on different batch shapes or by different code paths: CPU kernels sum in another
#: order per batch shape (and per CPU), so float32 results differ by ~1e-7 relative; exact equality only
#: where the computation is the same
FLOAT32 = dict(rel=1e-5, abs=1e-6)


def per_image_rows(out: Path) -> dict[str, list[dict]]:
    """OUT/per_image.csv as {method: rows in item order}."""
    rows: dict[str, list[dict]] = {}
    with open(out / "per_image.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["method"], []).append(r)
    return rows


def schedule_of(text: str, sep: str | None = None) -> StaticSchedule:
    """A schedule from per_image.csv's ratios column ("0 0 0 0.5d 1 ..."; ``d`` = CFG branch dropped) or,
    with ``sep=","``, from a grid cache key."""
    parts = text.split(sep)
    return StaticSchedule(tuple(float(p.rstrip("d")) for p in parts), tuple(p.endswith("d") for p in parts))


def check_rows_fit(generator, rows: list[dict], transformer_budget: float | None = None,
                   total_budget: float | None = None) -> list[tuple[float, float]]:
    """Per image: (transformer, total) FLOPs fractions recomputed analytically from its ratios and CFG
    drops, equal to the recorded ones and within the budgets given; returns them."""
    out = []
    for r in rows:
        t, tot = schedule_fractions(generator, schedule_of(r["ratios"]))
        assert t == pytest.approx(float(r["flops_fraction"]), rel=1e-9), r["ratios"]
        assert tot == pytest.approx(float(r["total_flops_fraction"]), rel=1e-9), r["ratios"]
        if transformer_budget is not None:
            assert t <= transformer_budget + 1e-9, (r["method"], r["ratios"], t, transformer_budget)
        if total_budget is not None:
            assert tot <= total_budget + 1e-9, (r["method"], r["ratios"], tot, total_budget)
        out.append((t, tot))
    return out


def grid_caches(cache_dir: Path) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Every grid cache file under ``cache_dir`` as {number of items: {schedule key: {metric: per-item
    values}}} (the validation and the test pass have different item counts in these tests)."""
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for path in sorted(Path(cache_dir).glob("grid_*.npz")):
        with np.load(path, allow_pickle=False) as z:
            n = z["quality"].shape[1]
            assert n not in out, f"two grid caches with {n} items under {cache_dir}: the test cannot tell them apart"
            out[n] = {str(k): {m: z[m][i] for m in z.files if m != "keys"} for i, k in enumerate(z["keys"])}
    return out


def grid_for(generator, first: int, search: dict, grid_ratios: list[float]) -> list[StaticSchedule]:
    """The search's grid, rebuilt: with the CFG-drop lever or without, whichever has the size the search
    reports (the static search gets the compared agent's levers)."""
    grids = [grid_schedules(generator, first, ratios=grid_ratios, allow_drop=a) for a in (True, False)]
    (grid,) = [g for g in grids if len(g) == search["grid_size"]]
    return grid


def check_best_static(generator, search: dict, grid: list[StaticSchedule], val_cache: dict, val_quality_now: float) -> list:
    """The best static schedule of one target: it fits (FLOPs recomputed), the grid points within the
    target are exactly those the search says it evaluated, the best of them on validation (recomputed from
    the cached per-item quality) is the one it reports, and its validation quality, generated again and
    scored by the reward (``val_quality_now``), is the one it reports. Returns the grid points that fit."""
    best = StaticSchedule(tuple(search["ratios"]), tuple(search["drop_uncond"]))
    t, tot = schedule_fractions(generator, best)
    assert (t, tot) == (pytest.approx(search["transformer_fraction"], rel=1e-12), pytest.approx(search["total_fraction"], rel=1e-12))
    assert tot <= search["target_total_fraction"] + 1e-12
    fits = [s for s in grid if schedule_fractions(generator, s)[1] <= search["target_total_fraction"] + 1e-12]
    assert len(fits) == search["grid_points_evaluated"] and all(schedule_key(s) in val_cache for s in fits)
    means = {s: float(np.nanmean(val_cache[schedule_key(s)]["quality"])) for s in fits}
    top = max(means.values())
    widths = tuple(generator.scale_widths)
    assert search["best_grid_val_quality"] == pytest.approx(top, rel=1e-12)
    assert search["best_grid_schedule"] in {s.describe(widths) for s, q in means.items() if q == top}
    assert search["val_quality"] == pytest.approx(float(np.nanmean(val_cache[schedule_key(best)]["quality"])), rel=1e-12)
    assert val_quality_now == pytest.approx(search["val_quality"], **FLOAT32)
    return fits


def regenerated_quality(generator, reward_fn, items: list[tuple[str, int]], schedule: StaticSchedule) -> float:
    """Mean QUALITY of ``schedule`` on ``items``: images and references generated again, scored by the
    reward's ``terminal_batch`` (quality terms only)."""
    prompts, seeds = [p for p, _ in items], [s for _, s in items]
    refs, _ = generator.generate(prompts, seeds)
    images, _ = generator.generate(prompts, seeds, schedule=schedule)
    terms = reward_fn.terminal_batch(images, refs, prompts, [1.0] * len(items))
    return float(np.mean([t["quality_reward"] for _, t in terms]))


#: what each oracle kind chooses item i's schedule by, from per-item values ``q`` (one candidate), ``idx`` the
#: items of item i's prompt: in-sample = the prompt's mean, cross-validated = the mean over the prompt's other
#: items, per-image = the item's own value (evaluation.oracles, written again here from its definitions)
ORACLE_CRITERIA = {"oracle": lambda q, idx, i: float(np.mean(q[idx])),
                   "oracle_cv": lambda q, idx, i: float(np.mean(q[[j for j in idx if j != i]])),
                   "oracle_image": lambda q, idx, i: float(q[i])}


def check_oracle(rows: dict[str, list[dict]], oracle_name: str, kind: str, candidates: list[StaticSchedule],
                 test_cache: dict) -> None:
    """Per test item, the oracle row's schedule is one of ``candidates`` and the best of them by its kind's
    criterion (``ORACLE_CRITERIA``, on the cached per-item QUALITY; the in-sample oracle gives every seed of
    a prompt the same schedule), and the row's images are that schedule's (their QUALITY, scored again in
    the row, equals the cached one)."""
    items = [(r["prompt"], int(r["seed"])) for r in rows["original"]]
    assert [(r["prompt"], int(r["seed"])) for r in rows[oracle_name]] == items
    keys = list(dict.fromkeys(schedule_key(s) for s in candidates))
    assert all(k in test_cache for k in keys), "an oracle candidate was never scored on the test items"
    criterion = ORACLE_CRITERIA[kind]
    for p in dict.fromkeys(q for q, _ in items):
        idx = [i for i, (q, _) in enumerate(items) if q == p]
        chosen = {i: schedule_key(schedule_of(rows[oracle_name][i]["ratios"])) for i in idx}
        if kind == "oracle":
            assert len(set(chosen.values())) == 1, f"{oracle_name} gave the seeds of {p!r} different schedules"
        for i in idx:
            value = {k: criterion(test_cache[k]["quality"], idx, i) for k in keys}
            assert chosen[i] in value, f"{oracle_name} used {chosen[i]} on {items[i]}, not a candidate"
            assert value[chosen[i]] >= max(value.values()) - 1e-12, (oracle_name, items[i], chosen[i], value)
            assert float(rows[oracle_name][i]["quality"]) == pytest.approx(float(test_cache[chosen[i]]["quality"][i]),
                                                                            **FLOAT32)


def _target_of(method: dict) -> float:
    """The total-FLOPs target a best-static or oracle row of summary.json was chosen for."""
    return (method["search"] if method["kind"] == "best_static" else method["oracle"])["target_total_fraction"]


def check_static_baselines(generator, reward_fn, summary: dict, rows: dict[str, list[dict]], cache_dir: Path, first: int,
                           val_items: list[tuple[str, int]], oracle_candidates: int = 0) -> None:
    """Every best-static and oracle row of a report, checked against recomputed evidence: the search per
    target (``check_best_static``), each row's images all within its target (FLOPs from the ratios), the
    best-static row running its one schedule, one row per target of each oracle kind (the cross-validated
    one only with >= 2 seeds per prompt), and each oracle row choosing the best of its candidates by its
    kind's criterion (every grid point within the target, or with ``oracle_candidates`` K the K best of
    them on validation, plus the best static schedule), recomputed from the caches."""
    caches = grid_caches(cache_dir)
    val_cache, test_cache = caches[len(val_items)], caches[len(rows["original"])]
    searches = summary["static_search"]
    pools, bests = {}, {}
    for label, search in searches.items():
        grid = grid_for(generator, first, search, summary["grid"]["grid_ratios"])
        best = bests[label] = StaticSchedule(tuple(search["ratios"]), tuple(search["drop_uncond"]))
        pool = check_best_static(generator, search, grid, val_cache, regenerated_quality(generator, reward_fn, val_items, best))
        if oracle_candidates and len(pool) > oracle_candidates:
            pool = sorted(pool, key=lambda s: -float(np.nanmean(val_cache[schedule_key(s)]["quality"])))[:oracle_candidates]
        pools[label] = list(dict.fromkeys(pool + [best]))
    prompts = [r["prompt"] for r in rows["original"]]
    oracle_kinds = [k for k in ORACLE_CRITERIA if k != "oracle_cv" or min(map(prompts.count, prompts)) >= 2]
    static_rows = {name: m for name, m in summary["methods"].items() if m["kind"] in ("best_static", "oracle")}
    assert sorted((m["kind"], m.get("oracle", {}).get("kind", ""), _target_of(m)) for m in static_rows.values()) == sorted(
        [("best_static", "", s["target_total_fraction"]) for s in searches.values()]
        + [("oracle", k, s["target_total_fraction"]) for s in searches.values() for k in oracle_kinds])
    for name, m in static_rows.items():
        target = _target_of(m)
        (label,) = [lab for lab, s in searches.items() if s["target_total_fraction"] == target]
        check_rows_fit(generator, rows[name], total_budget=target)
        if m["kind"] == "best_static":
            assert all(schedule_of(r["ratios"]) == bests[label] for r in rows[name]), name
        else:
            assert m["oracle"]["candidates"] == len(pools[label]), name
            check_oracle(rows, name, m["oracle"]["kind"], pools[label], test_cache)


def check_frontier(generator, summary: dict, cache_dir: Path, first: int, val_items: list[tuple[str, int]]) -> None:
    """The static frontier against the points it is drawn from (every grid schedule within the largest
    target and each best static schedule; FLOPs recomputed, validation quality from the cache): each
    frontier point is one of them, with its FLOPs and quality, and none at or below its FLOPs is better;
    and every point is matched or beaten by a frontier point at or below its FLOPs."""
    val_cache = grid_caches(cache_dir)[len(val_items)]
    searches = list(summary["static_search"].values())
    grid = grid_for(generator, first, searches[0], summary["grid"]["grid_ratios"])
    top = summary["grid"]["largest_target_total_fraction"]
    schedules = [s for s in grid if schedule_fractions(generator, s)[1] <= top + 1e-12]
    schedules += [StaticSchedule(tuple(r["ratios"]), tuple(r["drop_uncond"])) for r in searches]
    widths = tuple(generator.scale_widths)
    points = {s.describe(widths): (schedule_fractions(generator, s)[1], float(np.nanmean(val_cache[schedule_key(s)]["quality"])))
              for s in schedules}
    front = summary["static_frontier"]
    assert front
    for e in front:
        tot, q = points[e["schedule"]]
        assert (e["total_fraction"], e["val_quality"]) == (pytest.approx(tot, rel=1e-12), pytest.approx(q, rel=1e-12))
        beaten = [d for d, (t, v) in points.items() if t <= tot + 1e-12 and v > q]
        assert not beaten, f"frontier point {e['schedule']} is beaten by {beaten}"
    for d, (t, v) in points.items():
        assert any(e["total_fraction"] <= t + 1e-12 and e["val_quality"] >= v for e in front), f"{d} is above the frontier"
