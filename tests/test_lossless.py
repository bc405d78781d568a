"""Lossless mode (--objective iso-quality): the reward's formula, the env's episode reward, the flags,
and the lossless selector (its rule, its operating points, its file, its run and its images)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.selector import LosslessLevel, LosslessSelector, load_lossless, save_lossless
from envs.config import EnvConfig
from evaluation.selector_iso import choose_levels, pareto_by_loss
from generator.schedules import StaticSchedule
from rewards.reward import RewardConfig

PROMPTS = ["a small red circle at the top left on a plain blue background",
           "a large green square in the center on a plain white background",
           "a medium yellow star at the bottom right on a noisy gray background"]


def test_iso_reward_caps_clip_and_charges_only_beyond_epsilon():
    r = RewardConfig.embedded_iso(epsilon=0.1, lossless_penalty=10.0)
    assert r.quality(1.0, math.inf, clip_delta=0.0) == 0.0
    assert r.quality(0.9, 30.0, clip_delta=5.0) == pytest.approx(-0.1)      # a CLIP gain earns nothing
    assert r.quality(0.9, 30.0, clip_delta=-5.0) == pytest.approx(-0.2)     # a CLIP loss costs
    assert RewardConfig.embedded_budget().quality(0.9, 30.0, clip_delta=5.0) == pytest.approx(0.0)  # budget: uncapped
    assert r.episode_reward(0.0, 1.0) == 0.0                                # the unpruned image
    assert r.episode_reward(-0.1, 0.6) == pytest.approx(0.4)               # within epsilon: FLOPs saved only
    assert r.episode_reward(-0.15, 0.6) == pytest.approx(0.4 - 10 * 0.05)  # beyond: the penalty
    with pytest.raises(ValueError, match="objective must be one of"):
        RewardConfig(objective="lossless").validate()
    with pytest.raises(ValueError, match="no FLOPs budget"):
        RewardConfig.embedded_iso(flops_budget=0.5).validate()
    with pytest.raises(ValueError, match="epsilon must be"):
        RewardConfig.embedded_iso(epsilon=-0.1).validate()
    with pytest.raises(ValueError, match="takes no budget range"):
        EnvConfig(reward=RewardConfig.embedded_iso(), budget_range=(0.2, 0.6)).validate()


def test_iso_env_episode_reward_is_the_formula():
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    cfg = EnvConfig(reward=RewardConfig.embedded_iso(), allow_drop_unconditional=True)
    env = gym.make("VarPrune-v0", config=cfg).unwrapped
    for action in (np.full(env.action_space.shape, -1.0, np.float32), np.full(env.action_space.shape, 0.6, np.float32)):
        env.reset(seed=3)
        total, done, info = 0.0, False, {}
        while not done:
            _, rew, done, _, info = env.step(action)
            total += rew
        q, u = info["quality_reward"], info["flops_fraction"]
        assert total == pytest.approx(cfg.reward.episode_reward(q, u), abs=1e-9)
        assert q <= 0.0
    assert u < 1.0 and total < 1.0 - u + 1e-9  # the pruned episode saved FLOPs


@pytest.mark.parametrize("argv, message", [
    (["--algo", "ppo-residual"], "not ppo-residual"),
    (["--budget-range", "0.2", "0.6"], "drop --budget-range"),
    (["--fixed-budget"], "drop --fixed-budget"),
])
def test_iso_flags_are_checked(tmp_path, capsys, argv, message):
    import train

    assert train.main(["--objective", "iso-quality", "--out", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err
    assert train.main(["--epsilon", "0.1", "--out", str(tmp_path)]) == 2
    assert "--epsilon is for --objective iso-quality" in capsys.readouterr().err
    assert train.main(["--algo", "ppo", "--selector-epsilons", "0.1", "--objective", "iso-quality",
                       "--out", str(tmp_path)]) == 2
    assert "--selector-epsilons is for --algo selector --objective iso-quality" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _selector(levels=()) -> LosslessSelector:
    z = (0.0,) * 3
    cands = [StaticSchedule(z + (0.0, 0.0, 0.0, 1.0)), StaticSchedule(z + (0.0, 0.0, 0.5, 0.0)),
             StaticSchedule((0.0,) * 7)]
    W = np.zeros((3, 3))
    W[0, 0], W[0, -1] = 0.1, 0.1   # the cheap candidate's loss grows with feature 0
    W[1, -1] = 0.05
    return LosslessSelector(cands, np.array([0.6, 0.9, 1.0]), W, np.zeros(2), np.ones(2), list(levels))


def test_lossless_rule_prices_flops_against_predicted_loss():
    sel = _selector()
    X = np.array([[-2.0, 0.0], [0.0, 0.0], [3.0, 0.0]])  # predicted cheap loss 0 (floored), 0.1, 0.4
    assert list(sel.choose_at(X, "price", 0.0)) == [0, 0, 0]          # FLOPs alone: the cheapest
    assert list(sel.choose_at(X, "price", 1e6)) == [0, 2, 2]          # loss alone: least loss, FLOPs break ties
    assert list(sel.choose_at(X, "price", 1.5)) == [0, 0, 1]          # 0.6 + 0.15 < 0.975; 0.6 + 0.6 > 0.975 < 1.0
    assert list(sel.choose_at(X, "static", 1)) == [1, 1, 1]


def test_lossless_levels_keep_the_best_static_unless_surely_cheaper():
    sel = _selector()
    rng = np.random.default_rng(0)
    X = np.stack([rng.normal(size=400), np.zeros(400)], axis=1)
    true = np.stack([np.maximum(0.1 + 0.1 * X[:, 0], 0), np.full(400, 0.05), np.zeros(400)], axis=1)
    levels, report = choose_levels(sel, X, true, [0.0, 0.06, 0.5], [0.1, 1.0, 10.0, 100.0], ["cheap", "mid", "orig"])
    assert [lv.rule for lv in levels] == ["static", "price", "static"]
    assert levels[0].value == 2 and levels[2].value == 0               # nothing but Original within 0; all within 0.5
    assert report[1]["val_loss"] <= 0.06 and report[1]["val_flops"] < 0.9   # cheaper than "mid" (the best static)
    assert report[1]["val_saving_lower_bound"] > 0
    # losses the features do not predict, the best static schedule below the line from "cheap" to "orig": no
    # price rule spends less within epsilon, the best static schedule stays
    flat = np.stack([np.full(400, 0.2), np.full(400, 0.04), np.zeros(400)], axis=1)
    levels, report = choose_levels(_selector(), X, flat, [0.04], list(np.geomspace(0.1, 1000, 41)), ["c", "m", "o"])
    assert levels[0].rule == "static" and levels[0].value == 1 and report[0]["val_flops_saving_vs_static"] == 0.0


def test_lossless_file_round_trip_and_operating_points(tmp_path):
    sel = _selector([LosslessLevel(0.02, "static", 2), LosslessLevel(0.1, "price", 4.0)])
    save_lossless(tmp_path / "s.safetensors", sel, {"fit": {"x": 1}})
    back, info = load_lossless(tmp_path / "s.safetensors")
    assert info == {"fit": {"x": 1}} and back.candidates == sel.candidates
    np.testing.assert_array_equal(back.weights, sel.weights)
    assert back.at(0.05).levels[back.at(0.05).level].epsilon == 0.02 and back.at(0.5).budget == 0.1
    with pytest.raises(ValueError, match="below the lossless selector's smallest trained epsilon"):
        back.at(0.01)
    from agents.selector import load_selectors

    with pytest.raises(ValueError, match="lossless selector"):
        load_selectors(tmp_path / "s.safetensors")


def test_pareto_by_loss():
    f = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 1.0}
    assert pareto_by_loss(f, {"a": 0.3, "b": 0.35, "c": 0.1, "d": 0.0}) == ["a", "c", "d"]


def test_train_lossless_selector_run_loads_and_generates(tmp_path):
    import train
    from agents.schedule import RunError, load_agent_schedule
    from envs.factory import make_generator
    from tests.test_selector import _frontier_file

    g = make_generator(EnvConfig())
    f = _frontier_file(tmp_path, g)
    common = ["--algo", "selector", "--objective", "iso-quality", "--frontier", f, "--search-num-prompts", "3",
              "--selector-train-prompts", "4", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "runs")]
    assert train.main(common + ["--selector-epsilons", "0.05", "0.2", "--epsilon", "0.1", "--name", "iso"]) == 0
    run = tmp_path / "runs" / "iso"
    sel, info = load_lossless(run / "selector.safetensors")
    assert [lv.epsilon for lv in sel.levels] == [0.05, 0.1, 0.2]
    assert sel.candidates[-1] == StaticSchedule((0.0,) * g.num_scales)   # the unpruned schedule closes the set
    assert list(sel.flops) == sorted(sel.flops)
    sched = load_agent_schedule(run, g)                                   # default: the run's epsilon
    assert sched.selector.budget == 0.1
    with torch.no_grad():
        images, st = g.generate(PROMPTS, [0, 1, 2], schedule=sched)
        for b, s in enumerate(sched._chosen):                            # each image is its candidate's
            want, _ = g.generate(PROMPTS, [0, 1, 2], schedule=s)
            assert torch.equal(images[b], want[b])
    with pytest.raises(RunError, match="takes a tolerance"):
        load_agent_schedule(run, g, budget=0.5)
    with pytest.raises(RunError, match="smallest trained epsilon"):
        load_agent_schedule(run, g, tolerance=0.01)
    import generate

    out = tmp_path / "gen"
    assert generate.main(["--agent", str(run), "--tolerance", "0.2", "--prompt", PROMPTS[0], "--out", str(out)]) == 0
    assert any(out.rglob("*.jpg")) or any(out.rglob("*.png"))

    # evaluate_agent.py on a lossless run: its row at its own spend, and (--iso-quality auto) the lossless rows,
    # where the iso-quality tool lists its operating points as the family's candidates
    import json

    import evaluate_agent

    out = tmp_path / "ev"
    assert evaluate_agent.main(["--run", str(run), "--num-prompts", "2", "--seeds", "0", "--search-num-prompts", "2",
                                "--no-static-search", "--latency-images", "0", "--grid-prompts", "1",
                                "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    fam = json.loads((out / "iso" / "iso.json").read_text())["families"]["rl:iso"]
    assert [c["label"] for c in fam["candidates"]] == ["eps=0.05", "eps=0.1", "eps=0.2"]
    assert all(0 < c["transformer"] <= 1.0 and "val_delta_attr" in c for c in fam["candidates"])
    assert all("vs_static_frontier" in op for op in fam["operating_points"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["iso_quality"]) == {"fastvar_scaled", "static_frontier", "rl:iso"}
    assert "### Lossless rows" in (out / "table.md").read_text()
    # its own signal on held-out items: the saving is the static option's FLOPs minus the selector's, per level
    from evaluation.lossless_test import lossless_test

    held = lossless_test(run, "test", 2, [0], tmp_path / "cache")
    assert [r["epsilon"] for r in held["levels"]] == [0.05, 0.1, 0.2]
    for r in held["levels"]:
        assert r["flops_saving_vs_static"]["mean_diff"] == pytest.approx(r["static_flops"] - r["flops"])
        assert r["loss_minus_static"]["mean_diff"] == pytest.approx(r["loss"] - r["static_loss"])
        assert 0 <= r["deviation_rate"] <= 1 and r["loss"] >= 0
