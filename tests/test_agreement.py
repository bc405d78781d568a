"""Reward <-> judge agreement (evaluation/agreement.py, scripts/reward_judge_agreement.py): the statistics on
constructed numbers, the schedule subsets, and the command end to end on a tiny setting (tau from the
cached arrays, the judge's cache apart from the static search's, the outputs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from evaluation.agreement import (
    AgreementSettings, choices, discordant_pairs, plan_budgets, rank_agreement, regret, select_schedules,
)
from generator.schedules import StaticSchedule


# ---- the pure analysis ------------------------------------------------------------------------------

def test_tau_is_scipys_and_undefined_below_two_schedules():
    rng = np.random.default_rng(3)
    q, j = rng.normal(size=9), rng.normal(size=9)
    j[2] = j[5]  # a tie: tau-b
    got = rank_agreement(q, j)
    want = kendalltau(q, j)
    assert got["tau"] == want.statistic and got["p"] == want.pvalue and got["n"] == 9
    assert rank_agreement(q, -q)["tau"] == pytest.approx(-1.0)
    one = rank_agreement(q[:1], j[:1])
    assert math.isnan(one["tau"]) and math.isnan(one["p"]) and one["n"] == 1
    with pytest.raises(ValueError, match="one QUALITY and one DomainEval value per schedule"):
        rank_agreement(q, j[:3])


def test_choices_take_the_best_of_each_with_scene_breaking_attribute_ties():
    quality = np.array([0.1, 0.9, 0.3, 0.2])
    attribute = np.array([0.5, 0.4, 0.7, 0.7])
    scene = np.array([0.0, 0.0, 0.1, 0.3])
    assert choices(quality, attribute, scene) == (1, 3)
    assert choices(quality, attribute, np.zeros(4)) == (1, 2)  # full tie: the first
    with pytest.raises(ValueError, match="same non-zero number"):
        choices(quality, attribute[:2], scene)


def test_regret_is_zero_when_the_choices_coincide_and_positive_when_the_judges_choice_is_better():
    prompts = ["a", "a", "b", "b", "c", "c"]
    reward_choice = np.array([0.6, 0.4, 0.8, 0.8, 0.2, 0.6])
    same = regret(reward_choice, reward_choice, prompts)
    assert same["mean_diff"] == 0.0 and same["ci95"] == 0.0 and same["n"] == 3
    judge_choice = reward_choice + np.array([0.2, 0.0, 0.1, 0.1, 0.4, 0.0])  # prompt means +0.1, +0.1, +0.2
    worse = regret(judge_choice, reward_choice, prompts)
    assert worse["mean_diff"] == pytest.approx(0.4 / 3) and worse["wins"] == 3 and worse["ci95"] > 0


def test_discordant_pairs_are_the_most_reversed_pairs_each_schedule_once():
    quality = np.array([4.0, 3.0, 2.0, 1.0, 0.0])
    judge = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # exactly reversed
    assert discordant_pairs(quality, judge, 3) == [(0, 4, 16.0), (1, 3, 4.0)]  # 2 is left without a partner
    assert discordant_pairs(quality, quality + 1, 3) == []  # same order: nothing to show
    mixed = discordant_pairs(np.array([3.0, 2.0, 1.0]), np.array([1.0, 3.0, 2.0]), 1)
    # judge ranks 1, 2, 0; quality 0, 1, 2: pairs (0, 1) and (0, 2) both have gaps 1 x 2; ties go to the lower index
    assert mixed == [(0, 1, 2.0)]


def test_subsets_keep_the_costliest_or_a_nested_random_sample():
    grid = [StaticSchedule((0, 0, 0, r, 0, 0, 0)) for r in (0.0, 0.25, 0.5, 0.75)]
    cost = {s: 1.0 - s.ratios[3] for s in grid}  # ratio 0 costs most
    assert select_schedules(grid, cost.get, 2, "closest") == grid[:2]
    assert select_schedules(grid, cost.get, 0, "closest") == grid and select_schedules(grid, cost.get, 9, "random") == grid
    rank = {grid[0]: 3, grid[1]: 0, grid[2]: 2, grid[3]: 1}
    assert select_schedules(grid, cost.get, 2, "random", rank) == [grid[1], grid[3]]
    assert select_schedules(grid[:3], cost.get, 2, "random", rank) == [grid[1], grid[2]]  # next in the same order
    with pytest.raises(ValueError, match="subset rule must be one of closest, random"):
        select_schedules(grid, cost.get, 2, "best")


def test_budgets_plan_and_their_errors():
    from embedded.loaders import random_generator
    from evaluation.static_search import FlopsTable, grid_schedules

    gen = random_generator(0)
    flops, grid = FlopsTable(gen), grid_schedules(gen, 3)
    plans = plan_budgets(grid, flops, ("0.95", "fastvar"), 0.347, 5, "closest", 0)
    assert [p.token for p in plans] == ["0.95", "fastvar"] and all(len(p.schedules) == 5 for p in plans)
    assert all(flops.transformer(s) <= p.fraction for p in plans for s in p.schedules)
    top = max(flops.transformer(s) for s in grid if flops.transformer(s) <= 0.95)
    assert max(flops.transformer(s) for s in plans[0].schedules) == top
    with pytest.raises(ValueError, match=r"budget '0.01' \(0.0100 of the transformer FLOPs\): no grid schedule fits"):
        plan_budgets(grid, flops, ("0.01",), 0.347, 5, "closest", 0)
    with pytest.raises(ValueError, match="lists the budget 0.3470 twice"):
        plan_budgets(grid, flops, ("fastvar", "0.347"), 0.347, 5, "closest", 0)


@pytest.mark.parametrize("change, message", [
    ({"subset": "best"}, "--subset must be one of closest, random, got 'best'"),
    ({"budgets": ("0.9", "0.9")}, "budgets in --budgets 0.9 0.9"),
    ({"budgets": ("lots",)}, "'lots' is not a budget"),
    ({"figure_budget": "0.5"}, "--figure-budget '0.5' is not one of --budgets"),
    ({"max_schedules": -1}, "--max-schedules must be an integer >= 0, got -1"),
    ({"val_seeds": (0, 0)}, "seeds in --val-seeds 0 0"),
])
def test_bad_settings_name_the_flag(change, message):
    import dataclasses

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(AgreementSettings(), **change).check()


# ---- the command, end to end ------------------------------------------------------------------------

def test_command_on_a_tiny_setting(tmp_path, capsys):
    """Two validation and two test prompts, seed 0, two budgets, three schedules each: tau is scipy's on
    the arrays in the caches, the static search's cache file holds QUALITY and no judge score (and the
    static search's own evaluator reads it without generating), the judge's file is apart, the outputs
    are written, and a rerun finds everything cached."""
    import torch

    from envs.config import EnvConfig
    from envs.factory import make_generator
    from evaluation.agreement import judge_cache, load_items
    from evaluation.grid_evaluation import GridCache, GridEvaluator, QualityScorer
    from evaluation.scoreboard import DomainEval
    from rewards import ClipScorer, RewardConfig, RewardFunction
    from scripts.reward_judge_agreement import main

    torch.set_num_threads(1)
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--num-prompts", "2", "--val-seeds", "0", "--test-seeds", "0", "--budgets", "fastvar", "0.9",
            "--max-schedules", "3", "--figure-items", "2", "--cache-dir", str(cache), "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "agreement.json").read_text())
    table = (out / "agreement.md").read_text()
    assert "| budget | n schedules | τ | p | regret ± CI |" in table and "| 0.9 (0.900) | 3 of " in table
    assert (out / "disagreement.png").is_file() == bool(record["figure_pairs"])

    gen = make_generator(EnvConfig(allow_drop_unconditional=True))
    settings = AgreementSettings(num_prompts=2, test_num_prompts=2, val_seeds=(0,), test_seeds=(0,))
    val_items, test_items = load_items(settings)
    refs = torch.cat([gen.generate([p], [s])[0] for p, s in val_items])
    scorer = QualityScorer(RewardFunction(RewardConfig.embedded_budget(), clip=ClipScorer.embedded()), refs,
                           [p for p, _ in val_items])
    grid_cache = GridCache(cache, gen.fingerprint(), val_items, scorer.identity())
    judged = judge_cache(cache, gen, val_items, DomainEval.load())
    assert grid_cache.path.is_file() and judged.path.is_file() and judged.path.parent == cache / "domaineval"
    assert sorted(p.name for p in cache.glob("*.npz")) == [grid_cache.path.name]  # the judge's is not there
    assert not any(m.startswith("domain_") for row in grid_cache.rows.values() for m in row)
    assert all("domain_attribute" in row and "quality" not in row for row in judged.rows.values())

    for b in record["budgets"]:
        keys = [r["key"] for r in b["schedules"]]
        q = [float(np.nanmean(grid_cache.rows[k]["quality"])) for k in keys]
        a = [float(np.nanmean(judged.rows[k]["domain_attribute"])) for k in keys]
        assert [r["val_quality"] for r in b["schedules"]] == q
        want = kendalltau(q, a).statistic
        assert (b["tau"] is None and math.isnan(want)) or b["tau"] == want
        assert b["n_schedules"] == 3 and b["reward_choice"]["val_quality"] == max(q)
        if b["same_choice"]:
            assert b["regret"]["mean_diff"] == 0.0
    schedules = [StaticSchedule(tuple(float(x.rstrip("d")) for x in k.split(",")), tuple(x.endswith("d") for x in k.split(",")))
                 for k in grid_cache.rows]
    static_search = GridEvaluator(gen, val_items, [scorer], cache=grid_cache)
    static_search.evaluate(schedules)
    assert static_search.generated == 0  # the static search reads the rows this analysis wrote

    capsys.readouterr()
    assert main(argv + ["--estimate-only"]) == 0
    assert "0 need generation and QUALITY, 0 only the judge" in capsys.readouterr().err
