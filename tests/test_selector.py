"""The selector: its ridge fit, its fallback, its files, and its images through the schedule protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.selector import BudgetSelector, SelectorSchedule, load_selectors, save_selectors, selector_for
from envs.config import EnvConfig
from envs.factory import make_clip, make_generator
from envs.observation import ObservationBuilder
from evaluation.selector_fit import NEVER, first_scale_features, fit_ridge, realised_gain
from generator.schedules import StaticSchedule

PROMPTS = ["a small red circle at the top left on a plain blue background",
           "a large green square in the center on a plain white background",
           "a medium yellow star at the bottom right on a noisy gray background"]


@pytest.fixture(scope="module")
def setup():
    cfg = EnvConfig()
    g = make_generator(cfg)
    clip = make_clip(cfg)
    return g, ObservationBuilder(g, 3, cfg.prompt_embedding_dim, clip)


def _cands() -> list[StaticSchedule]:
    z = (0.0, 0.0, 0.0)
    return [StaticSchedule(z + (0.0, 0.5, 1.0, 1.0)), StaticSchedule(z + (0.5, 0.0, 1.0, 1.0)),
            StaticSchedule(z + (0.25, 0.25, 0.75, 1.0), (False,) * 5 + (True, False))]


def test_ridge_recovers_a_linear_gain_and_the_fallback_holds():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)) * [1, 2, 3, 4, 0] + [0, 1, 2, 3, 7]  # last feature constant
    Y = np.stack([np.zeros(400), X[:, 0] - 0.5 * X[:, 2], 0.3 + 0 * X[:, 1]], axis=1)
    W, mean, std = fit_ridge(X, Y, lam=1e-9)
    sel = BudgetSelector(0.3, _cands(), W, mean, std, margin=0.0)
    np.testing.assert_allclose(sel.predicted_gain(X), Y, atol=1e-6)
    assert std[-1] == 1.0
    best = np.argmax(Y, axis=1)
    assert (sel.choose(X) == np.where(Y.max(axis=1) > 0, best, 0)).all()
    assert (sel.choose(X, margin=NEVER) == 0).all()          # never deviates
    assert (sel.choose(X, margin=0.31) == np.where(Y[:, 1] > 0.31, 1, 0)).all()  # candidate 2's 0.3 is not enough
    g, dev, lower = realised_gain(sel, X, Y, 0.0)
    assert g == pytest.approx(Y.max(axis=1).mean()) and dev == pytest.approx((Y.max(axis=1) > 0).mean())
    assert lower < g


def test_selector_file_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    sels = [BudgetSelector(b, _cands(), rng.normal(size=(3, 6)), rng.normal(size=5), rng.random(5) + 0.5, m)
            for b, m in ((0.35, 0.02), (0.28, NEVER))]
    save_selectors(tmp_path / "s.safetensors", sels, {"note": "x"})
    back, info = load_selectors(tmp_path / "s.safetensors")
    assert info == {"note": "x"} and [s.budget for s in back] == [0.28, 0.35]
    for a, b in zip(sorted(sels, key=lambda s: s.budget), back):
        assert a.candidates == b.candidates and a.margin == b.margin
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.feature_std, b.feature_std)
    assert selector_for(back, 0.3).budget == 0.28 and selector_for(back, 0.9).budget == 0.35
    with pytest.raises(ValueError, match="below the selector's smallest trained budget"):
        selector_for(back, 0.2)


def _forced(setup, index: int | None) -> SelectorSchedule:
    """A selector whose model predicts candidate ``index`` best by far for every image (None: never deviates)."""
    g, obs = setup
    W = np.zeros((3, obs.dim + 1))
    if index is not None:
        W[index, -1] = 1.0
    sel = BudgetSelector(0.4, _cands(), W, np.zeros(obs.dim), np.ones(obs.dim), margin=0.5 if index else NEVER)
    return SelectorSchedule(sel, obs, 3)


@pytest.mark.parametrize("index", [None, 2])
def test_selector_images_are_its_candidates_images(setup, index):
    g, _ = setup
    seeds = [0, 1, 2]
    with torch.no_grad():
        got, st = g.generate(PROMPTS, seeds, schedule=_forced(setup, index))
        want, st_w = g.generate(PROMPTS, seeds, schedule=_cands()[index or 0])
    assert torch.equal(got, want)
    assert st.flops_used_per_image == st_w.flops_used_per_image


def test_selector_decides_per_image_as_alone(setup):
    g, obs = setup
    with torch.no_grad():
        X = first_scale_features(g, obs, list(zip(PROMPTS, [0, 1, 2])), 3, batch_size=3)
        X1 = np.concatenate([first_scale_features(g, obs, [(p, s)], 3, batch_size=1) for p, s in zip(PROMPTS, [0, 1, 2])])
    np.testing.assert_allclose(X, X1, atol=1e-5)
    # a model on a content feature: the decisions of a batch equal the decisions one image at a time
    W = np.zeros((3, obs.dim + 1))
    col = 3 + 4  # the first content feature (log1p code deviation)
    W[1, col], W[1, -1] = 1.0, -float(np.median(X[:, col]))
    sel = BudgetSelector(0.4, _cands(), W, np.zeros(obs.dim), np.ones(obs.dim), margin=0.0)
    assert (sel.choose(X) == sel.choose(X1)).all()
    assert math.isfinite(X.sum())


def _frontier_file(tmp_path, g) -> str:
    from envs.frontier import Frontier, FrontierEntry
    from evaluation.static_search import FlopsTable

    flops = FlopsTable(g)
    z = (0.0, 0.0, 0.0)
    scheds = [StaticSchedule(z + (0.5, 0.75, 1.0, 1.0)), StaticSchedule(z + (0.75, 0.5, 1.0, 1.0)),
              StaticSchedule(z + (0.5, 0.5, 1.0, 1.0))]  # 0.318, 0.326, 0.340 of the FLOPs: all within FastVAR's
    entries = tuple(FrontierEntry(flops.transformer(s), s, flops.transformer(s), flops.total(s), -1.0 + 0.1 * i)
                    for i, s in enumerate(scheds))
    Frontier(entries, g.num_scales, 3, g.fingerprint()).save(tmp_path / "frontier.json")
    return str(tmp_path / "frontier.json")


def test_train_selector_run_loads_and_generates(tmp_path, setup):
    import train
    from agents.schedule import load_agent_schedule

    g, _ = setup
    f = _frontier_file(tmp_path, g)
    common = ["--algo", "selector", "--frontier", f, "--search-num-prompts", "3", "--selector-train-prompts", "4",
              "--selector-k", "3", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "runs")]
    assert train.main(common + ["--selector-k", "1", "--name", "bad"]) == 2
    assert train.main(common + ["--selector-budgets", "1.5", "--name", "bad2"]) == 2
    assert not (tmp_path / "runs" / "bad").exists() and not (tmp_path / "runs" / "bad2").exists()
    assert train.main(common + ["--selector-budgets", "fastvar", "--name", "sel"]) == 0
    run = tmp_path / "runs" / "sel"
    for name in ("config.json", "frontier.json", "selector.safetensors", "summary.json"):
        assert (run / name).is_file()
    from generator.schedules import FastVARSchedule, schedule_ratios

    fv = g.flops_fraction(schedule_ratios(FastVARSchedule(), g.num_scales))
    sched = load_agent_schedule(run, g, budget=fv)
    assert isinstance(sched, SelectorSchedule) and len(sched.selector.candidates) == 3
    with torch.no_grad():
        images, st = g.generate(PROMPTS, [0, 1, 2], schedule=sched)
    chosen = sched._chosen
    for b, s in enumerate(chosen):  # each image is its candidate's image (same batch shape), within the budget
        with torch.no_grad():
            want, _ = g.generate(PROMPTS, [0, 1, 2], schedule=s)
        assert torch.equal(images[b], want[b])
        assert st.flops_used_per_image[b] / g.flops_full() <= fv + 1e-9
    # compare mode's deviation rate: the share of images not on the run's frontier schedule
    from types import SimpleNamespace

    from evaluation.compare import frontier_deviation
    from evaluation.generation import MethodSpec, generate_items

    items = list(zip(PROMPTS, [0, 1, 2]))
    _, recs = generate_items(g, MethodSpec(agent_run=str(run), agent_budget=fv), items, 3, schedule=sched)
    off = float(np.mean([s != sched.selector.candidates[0] for s in sched._chosen]))
    assert frontier_deviation(SimpleNamespace(budget=fv, run=SimpleNamespace(path=run)), recs) == pytest.approx(off)
    from agents.schedule import RunError

    with pytest.raises(RunError, match="below the selector's smallest trained budget|outside"):
        load_agent_schedule(run, g, budget=0.1)
    _check_neighbourhood_oracle_rows(run, g, fv, tmp_path)


def _check_neighbourhood_oracle_rows(run, g, fv: float, tmp_path) -> None:
    """evaluate_agent.py on a frontier-based run adds the neighbourhood oracles (the go / no-go of a residual
    policy): every image of theirs is the run's frontier schedule or one of its one-move neighbours, within
    the budget."""
    import csv
    import json

    import evaluate_agent
    from envs.frontier import Frontier
    from evaluation.frontier_build import neighbourhood
    from evaluation.static_search import FlopsTable, guided_scales

    out = tmp_path / "ev"
    assert evaluate_agent.main(["--run", str(run), "--budgets", "fastvar", "--num-prompts", "2", "--seeds", "0", "1",
                                "--search-num-prompts", "2", "--grid-ratios", "0.5", "--refine-rounds", "0",
                                "--latency-images", "0", "--grid-prompts", "1", "--iso-quality", "off", "--oracle-candidates", "4",
                                "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    nb = {k: m for k, m in summary["methods"].items() if k.startswith("nb_oracle")}
    assert set(nb) == {"nb_oracle_cv", "nb_oracle_image"}
    assert all(m["kind"] == "oracle" and m["upper_bound"] and "residual policy" in m["bounds"] for m in nb.values())
    assert summary["budgets"][0]["nb_oracle_cv"] == "nb_oracle_cv" and "nb_oracle_cv" in (out / "table.md").read_text()
    widths = tuple(g.scale_widths)
    base, near = neighbourhood(Frontier.load(run / "frontier.json"), fv, FlopsTable(g), guided_scales(g))
    allowed = {" ".join(f"{r:g}" + ("d" if d else "") for r, d in zip(s.ratios, s.drop_uncond)) for s in [base] + near}
    with open(out / "per_image.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"].startswith("nb_oracle")]
    assert len(rows) == 2 * 4 and all(r["ratios"] in allowed for r in rows), (allowed, [r["ratios"] for r in rows])
    assert all(float(r["flops_fraction"]) <= fv + 1e-9 for r in rows) and len(near) > 0
    assert base.describe(widths) in nb["nb_oracle_cv"]["note"]
