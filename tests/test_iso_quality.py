"""Iso-quality speed-up: the operating point, the bootstraps, the scaled-FastVAR family, the static
candidates and their cost, the split caches, and a tiny run of the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedded.loaders import random_generator
from evaluation.iso_candidates import near_lossless_schedules, prefix_tree_flops, scaled_fastvar
from evaluation.operating_point import (
    bootstrap_choices, bootstrap_paired_ci, bootstrap_savings, choose_operating_point, percentile_ci,
)
from evaluation.static_search import FlopsTable, guided_scales
from generator.schedules import FastVARSchedule, StaticSchedule, schedule_ratios


@pytest.fixture(scope="module")
def gen():
    return random_generator(0)


# ---- the operating point ----------------------------------------------------------------------------

def test_operating_point_is_the_cheapest_candidate_within_the_tolerance():
    flops = [1.0, 0.9, 0.8, 0.7, 0.6]
    loss = [0.0, 0.005, 0.012, 0.009, 0.05]   # not monotone: 0.8 is outside 0.01, the cheaper 0.7 inside
    assert choose_operating_point(flops, loss, 0.01) == 3
    assert choose_operating_point(flops, loss, 0.001) == 0
    assert choose_operating_point(flops, loss, 0.05) == 4
    assert choose_operating_point(flops[1:], loss[1:], 0.004) is None          # none: the point is Original
    assert choose_operating_point([0.5, 0.7], [float("nan"), 0.0], 0.01) == 1  # not evaluated: never chosen
    assert choose_operating_point([0.7, 0.7, 0.7], [0.008, 0.002, 0.002], 0.01) == 1  # equally cheap: smaller loss
    assert choose_operating_point([0.6, 0.9], [-0.03, 0.0], 0.0) == 0           # better than Original counts


@pytest.mark.parametrize("flops, loss, tol, message", [
    ([1.0, 0.9], [0.0], 0.01, "one FLOPs value and one loss per candidate"),
    ([1.0], [0.0], -0.01, "tolerance must be a finite number >= 0"),
    ([float("nan")], [0.0], 0.01, "FLOPs must be finite"),
])
def test_operating_point_bad_input_names_it(flops, loss, tol, message):
    with pytest.raises(ValueError, match=message):
        choose_operating_point(flops, loss, tol)


# ---- bootstraps -------------------------------------------------------------------------------------

def _paired_data(rng, n_prompts: int, seeds: int, true_diff: float):
    prompts = [f"p{i}" for i in range(n_prompts) for _ in range(seeds)]
    effect = np.repeat(rng.normal(true_diff, 0.05, n_prompts), seeds)  # prompts differ: clustered
    b = rng.uniform(0.4, 0.9, n_prompts * seeds)
    return list(b + effect + rng.normal(0, 0.02, b.size)), list(b), prompts


def test_paired_bootstrap_is_deterministic_given_its_seed_and_covers_the_mean():
    a, b, prompts = _paired_data(np.random.default_rng(1), 30, 2, -0.02)
    r1 = bootstrap_paired_ci(a, b, prompts, n_boot=500, seed=7)
    r2 = bootstrap_paired_ci(a, b, prompts, n_boot=500, seed=7)
    r3 = bootstrap_paired_ci(a, b, prompts, n_boot=500, seed=8)
    assert r1 == r2 and (r3["lo"], r3["hi"]) != (r1["lo"], r1["hi"])
    assert r1["lo"] < r1["mean_diff"] < r1["hi"] and r1["n"] == 30
    per_prompt = (np.asarray(a) - np.asarray(b)).reshape(30, 2).mean(axis=1)  # seeds averaged first
    assert r1["mean_diff"] == pytest.approx(per_prompt.mean(), abs=1e-12)
    assert 2 * per_prompt.std() / np.sqrt(30) * 0.7 < (r1["hi"] - r1["lo"]) / 2 < 2 * per_prompt.std() / np.sqrt(30) * 1.3
    const = bootstrap_paired_ci([0.5] * 6, [0.4] * 6, ["x", "x", "y", "y", "z", "z"], n_boot=100, seed=0)
    assert const["lo"] == pytest.approx(0.1) and const["hi"] == pytest.approx(0.1)


def test_paired_bootstrap_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(200):
        a, b, prompts = _paired_data(rng, 40, 2, 0.03)
        r = bootstrap_paired_ci(a, b, prompts, n_boot=400, seed=trial)
        hits += r["lo"] <= 0.03 <= r["hi"]
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_choices_follow_the_evidence_and_savings_map_choices_to_test():
    # candidate 0 (FLOPs 0.6) loses ~0.1 on every prompt, candidate 1 (0.8) ~0.0, candidate 2 (0.7) ~0.015
    rng = np.random.default_rng(0)
    loss = np.stack([rng.normal(0.1, 0.01, 50), rng.normal(0.0, 0.01, 50), rng.normal(0.015, 0.02, 50)])
    choices = bootstrap_choices([0.6, 0.8, 0.7], loss, 0.01, n_boot=300, seed=5)
    assert np.array_equal(choices, bootstrap_choices([0.6, 0.8, 0.7], loss, 0.01, n_boot=300, seed=5))
    assert set(np.unique(choices)) <= {1, 2} and (choices == 1).mean() > 0.8
    assert set(np.unique(bootstrap_choices([0.6, 0.8, 0.7], loss, 0.5, n_boot=50, seed=0))) == {0}
    assert set(np.unique(bootstrap_choices([0.6, 0.8, 0.7], loss, 0.0, n_boot=50, seed=0))) <= {-1, 1}
    test = {1: np.full(20, 0.2), 2: np.linspace(0.25, 0.35, 20)}  # static: constant; agent: varies per prompt
    s = bootstrap_savings(choices, test, 20, seed=1)
    assert np.all(s[choices == 1] == pytest.approx(0.2)) and np.all((s[choices == 2] > 0.25) & (s[choices == 2] < 0.35))
    assert np.all(bootstrap_savings(np.array([-1, -1]), {}, 20) == 0.0)  # Original saves nothing
    with pytest.raises(ValueError, match=r"no test savings for chosen candidate\(s\) \[2\]"):
        bootstrap_savings(choices, {1: test[1]}, 20)
    lo, hi = percentile_ci(np.arange(101.0), 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))


# ---- the scaled-FastVAR family and the static candidates --------------------------------------------

def test_scaled_fastvar_runs_from_original_to_fastvar_with_non_increasing_flops(gen):
    n = gen.num_scales
    flops = FlopsTable(gen)
    assert scaled_fastvar(n, 0.0) == StaticSchedule((0.0,) * n)
    assert flops(scaled_fastvar(n, 0.0)) == (1.0, 1.0)
    fv = scaled_fastvar(n, 1.0)
    assert list(fv.ratios) == schedule_ratios(FastVARSchedule(), n) and not any(fv.drop_uncond)
    assert flops.transformer(fv) == gen.flops_fraction(schedule_ratios(FastVARSchedule(), n))
    strengths = np.linspace(0, 1, 101)
    t = [flops.transformer(scaled_fastvar(n, float(s))) for s in strengths]
    tot = [flops.total(scaled_fastvar(n, float(s))) for s in strengths]
    assert all(x >= y for x, y in zip(t, t[1:])) and all(x >= y for x, y in zip(tot, tot[1:]))
    assert t[50] < t[0] and t[-1] < t[99]  # it does get cheaper, and the final skip saves more than a 0.99 prune
    with pytest.raises(ValueError, match=r"FastVAR strength must be a number in \[0, 1\].*got 1.5"):
        scaled_fastvar(n, 1.5)


def test_near_lossless_candidates_are_one_and_two_scale_changes_on_the_controllable_scales(gen):
    n, guided = gen.num_scales, guided_scales(gen)
    cands = near_lossless_schedules(n, 3, guided, (0.0, 0.125, 0.25, 0.5), (0.25,), allow_drop=True)
    assert len(cands) == len(set(cands)) == 1 + 4 * 8 + 6 and cands[0] == StaticSchedule((0.0,) * n)
    for s in cands:
        changed = [k for k in range(n) if s.ratios[k] > 0 or s.drop_uncond[k]]
        assert len(changed) <= 2 and all(k >= 3 for k in changed)
    assert StaticSchedule((0, 0, 0, 0, 0, 0, 0), (False,) * 6 + (True,)) in cands          # ratio 0, CFG dropped
    assert StaticSchedule((0, 0, 0, 0, 0, 1, 0)) in cands and StaticSchedule((0, 0, 0, 0.25, 0, 0, 0.25)) in cands
    no_drop = near_lossless_schedules(n, 3, guided, (0.0, 0.25), (), allow_drop=False)
    assert len(no_drop) == 1 + 4 * 2 and not any(any(s.drop_uncond) for s in no_drop)
    with pytest.raises(ValueError, match=r"one-scale ratios must be pruning ratios in \[0, 0.9\).*\[0.95\]"):
        near_lossless_schedules(n, 3, guided, (0.95,), (), allow_drop=True)


def test_prefix_tree_flops_pays_each_shared_prefix_once(gen):
    n = gen.num_scales
    prefill = gen.flops_full() - sum(gen.schedule_flops([0.0] * n))
    a = StaticSchedule((0.0,) * n)
    b = StaticSchedule((0.0,) * (n - 1) + (0.5,))
    c = StaticSchedule((0.0,) * (n - 2) + (0.5, 0.0))
    assert prefix_tree_flops(gen, [a]) == pytest.approx(gen.flops_full())
    steps_b, steps_c = gen.schedule_flops(list(b.ratios)), gen.schedule_flops(list(c.ratios))
    # a and b differ first at the last scale: GridEvaluator runs them as two groups, two passes
    assert prefix_tree_flops(gen, [a, b]) == pytest.approx(gen.flops_full() + prefill + sum(steps_b))
    # with c (different at scale n-2) the groups are {a, b} and {c}: a and b share every scale but the last
    assert prefix_tree_flops(gen, [a, b, c]) == pytest.approx(gen.flops_full() + steps_b[-1] + prefill + sum(steps_c))
    assert prefix_tree_flops(gen, [a, a]) == prefix_tree_flops(gen, [a]) and prefix_tree_flops(gen, []) == 0.0


# ---- the judge's cache apart from the static search's -----------------------------------------------

def test_new_grid_results_are_split_between_the_quality_cache_and_the_judges(tmp_path):
    from evaluation.grid_evaluation import GridCache
    from evaluation.iso_families import NamedRows, QualityThenJudge

    items = [("a red circle", 0), ("a blue star", 0)]
    grid = GridCache(tmp_path, "gen", items, {"reward": 1})
    judge = NamedRows(tmp_path / "judge", "gen", items, {"judge": "j", "rows": "static"})
    both = QualityThenJudge(grid, judge)
    s = StaticSchedule((0.0, 0.5))
    both.put(s, {"quality": np.array([-0.1, -0.2]), "ssim": np.array([0.9, 0.8]),
                 "domain_attribute": np.array([1.0, 0.5]), "domain_scene": np.array([1.0, 0.0])})
    both.save()
    again = GridCache(tmp_path, "gen", items, {"reward": 1})
    assert set(again.get(s)) == {"quality", "ssim"}  # the static search's cache never holds a judge score
    judged = NamedRows(tmp_path / "judge", "gen", items, {"judge": "j", "rows": "static"})
    assert set(judged.get(s)) == {"domain_attribute", "domain_scene"}
    assert both.get(StaticSchedule((0.0, 0.25))) is None and both.get(s) is not None


# ---- the command line -------------------------------------------------------------------------------

def test_cli_tiny_run_writes_the_table_and_reads_the_caches_on_a_rerun(budget_run, tmp_path, capsys):
    from evaluation.iso_quality import main

    argv = ["--out", str(tmp_path / "iso"), "--run", str(budget_run), "--val-prompts", "2", "--test-prompts", "2",
            "--test-seeds", "0", "--strengths", "0.5", "1", "--one-scale-ratios", "0.5", "--two-scale-ratios",
            "--no-cfg-drop", "--budgets", "0.9", "0.5", "--n-boot", "50", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "estimate on this machine" in out.err
    summary = json.loads((tmp_path / "iso" / "iso.json").read_text())
    assert list(summary["families"]) == ["fastvar_scaled", "static_frontier", "rl:b"]
    agent = summary["families"]["rl:b"]["candidates"]
    assert agent[0]["note"].startswith("n/a: outside the range [0.25, 0.6]") and "val_delta_attr" not in agent[0]
    assert agent[1]["budget"] == 0.5 and agent[1]["transformer"] <= 0.5 + 1e-9 and "val_delta_attr" in agent[1]
    for fam in summary["families"].values():
        assert [op["tolerance"] for op in fam["operating_points"]] == [0.01, 0.02]
        for op in fam["operating_points"]:
            assert op["transformer_speedup"]["point"] == pytest.approx(1 / op["transformer"])
            assert op["total_speedup"]["point"] == pytest.approx(1 / op["total"])
            assert op["transformer"] <= op["total"] <= 1.0 or op["transformer"] == op["total"] == 1.0
    static_ops = summary["families"]["static_frontier"]["operating_points"]
    for name in ("fastvar_scaled", "rl:b"):  # the paired difference in saving against the static frontier
        for op, ref in zip(summary["families"][name]["operating_points"], static_ops):
            v = op["vs_static_frontier"]["transformer"]
            assert v["point"] == pytest.approx(op["transformer_saving"]["point"] - ref["transformer_saving"]["point"])
            assert v["lo"] <= v["hi"] and "_boot" not in op
    assert "vs_static_frontier" not in static_ops[0]
    table = (tmp_path / "iso" / "iso.md").read_text()
    assert "| method | tolerance | op. point | transformer FLOPs | total FLOPs |" in table and "| rl:b | 0.01 |" in table
    assert (tmp_path / "iso" / "iso.png").stat().st_size > 0
    assert main(argv) == 0  # everything from the caches: nothing of the static grid generated again
    again = json.loads((tmp_path / "iso" / "iso.json").read_text())
    assert again["static_search"]["generated"] == 0 and again["families"] == summary["families"]


def test_cli_bad_values_are_named_before_any_image(tmp_path, capsys):
    from evaluation.iso_quality import main

    for argv, message in ((["--tolerances", "1.5"], "--tolerances: 1.5 is not an attribute-accuracy loss in [0, 1)"),
                          (["--strengths", "2"], "FastVAR strength must be a number in [0, 1]"),
                          (["--val-prompts", "0"], "--val-prompts")):
        assert main(argv + ["--out", str(tmp_path / "o"), "--no-agents"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- the Pareto plot of compare mode ----------------------------------------------------------------

def _metric(mean: float, ci: float = 0.02) -> dict:
    return {"mean": mean, "ci95": ci, "n": 10, "n_images": 20}


def test_pareto_plot_marks_budgets_and_families(tmp_path):
    """Two agents at two budgets (the second is FastVAR's): every row made for an agent row shares its
    budget's marker; FastVAR and the rows chosen at its FLOPs share FastVAR's; Original and tail have none."""
    from matplotlib.image import imread

    from evaluation.report import budget_of_methods, pareto_plot

    fv = 0.347
    methods = {"original": ("baseline", 1.0, 1.0), "fastvar": ("baseline", fv, 0.515), "tail": ("baseline", 0.3, 0.5),
               "best_static@fastvar": ("best_static", fv, 0.51), "oracle@fastvar": ("oracle", fv, 0.51)}
    budgets = []
    for run in ("a", "b"):
        for b in (0.6, fv):
            sfx = f":{run}@{b:.3f}"
            budgets.append({"agent": f"rl{sfx}", "budget": b, "best_static": f"best_static{sfx}",
                            "oracle": f"oracle{sfx}", "random": f"random{sfx}"})
            methods.update({f"rl{sfx}": ("rl", b, b + 0.15), f"best_static{sfx}": ("best_static", b, b + 0.16),
                            f"oracle{sfx}": ("oracle", b, b + 0.14), f"oracle_cv{sfx}": ("oracle", b, b + 0.14),
                            f"random{sfx}": ("random", b, b + 0.15)})
    summary = {"num_prompts": 10, "budgets": budgets, "static_frontier": [],
               "methods": {n: {"kind": k, "upper_bound": k == "oracle",
                               "metrics": {"flops_fraction": _metric(t, 0.0), "total_flops_fraction": _metric(tot, 0.0),
                                           "domain_attribute": _metric(0.7 - (1 - tot) / 2), "ssim": _metric(tot)}}
                           for n, (k, t, tot) in methods.items()}}
    marks = budget_of_methods(summary)
    assert "original" not in marks and "tail" not in marks
    assert {marks[n] for n in ("fastvar", "best_static@fastvar", "oracle@fastvar", "rl:a@0.347", "oracle_cv:b@0.347",
                               "random:b@0.347")} == {"0.347 (FastVAR's)"}
    assert {marks[n] for n in ("rl:a@0.600", "best_static:a@0.600", "oracle_cv:a@0.600", "random:b@0.600")} == {"0.600"}
    pareto_plot(summary, tmp_path / "pareto.png")
    img = imread(tmp_path / "pareto.png")
    assert img.shape[0] > 600 and img.shape[1] > 1000  # two metrics x (all, zoom) panels and the legends
