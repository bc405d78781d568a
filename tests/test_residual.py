"""The residual agent (issue #25): VarPruneResidual-v0's moves, masks and paired reward, its batched env,
ppo-residual in train.py, and residual runs as schedules, on the shipped embedded generator and CLIP.

The test frontier is a few hand-picked static schedules, each entered at its own FLOPs (no search)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

import train
from envs.config import EnvConfig
from envs.frontier import Frontier, FrontierEntry, FrontierError
from envs.residual import ResidualPruneEnv
from envs.residual_batched import BatchedResidualEnv
from envs.residual_core import GRID_RATIOS, MOVES, SKIP, ResidualCore, apply_move, check_move
from generator.schedules import StaticSchedule
from rewards import ReferenceCache
from rewards.reward import RewardConfig

RANGE = (0.2, 0.6)
PROMPTS = ["a large red solid circle in the centre on a plain gray background",
           "a small blue striped square at the top left on a noisy navy background",
           "a medium green striped cross on the left on a plain black background"]
#: (ratios, CFG-drop flags) of the last four scales: skip all; 4x4 only; on- and off-grid ratios
PICKS = [([1, 1, 1, 1], [0, 0, 0, 0]), ([0, 1, 1, 1], [1, 0, 0, 0]), ([0, 0.5, 1, 1], [1, 0, 0, 0]),
         ([0, 0.125, 0.825, 1], [1, 1, 1, 0]), ([0, 0.25, 0.75, 1], [1, 1, 0, 0]), ([0, 0, 0.5, 0.75], [0, 1, 0, 1])]


def make_frontier(g) -> Frontier:
    n = g.num_scales
    f = n - 4
    guided = [g.uses_unconditional(k) for k in range(n)]
    entries = []
    for r, d in PICKS:
        s = StaticSchedule(tuple([0.0] * f + r), tuple([False] * f + d))
        used = g.flops_fraction(list(s.ratios), s.unconditional_flags(guided))
        entries.append(FrontierEntry(used, s, used, used, 0.0))
    return Frontier(tuple(entries), n, f, g.fingerprint())


@pytest.fixture(scope="module")
def shared():
    from envs.factory import make_clip, make_generator

    torch.set_num_threads(2)
    cfg = EnvConfig()
    g = make_generator(cfg)
    return dict(generator=g, clip=make_clip(cfg)), make_frontier(g)


def config(**kw) -> EnvConfig:
    return EnvConfig(budget_range=RANGE, allow_drop_unconditional=True, reward=RewardConfig.embedded_budget(), **kw)


def episode(env, budget, moves, prompt=PROMPTS[0], seed=1):
    env.reset(seed=0, options={"prompt": prompt, "seed": seed, "budget": budget})
    done, total, info = False, 0.0, {}
    for m in moves:
        _, r, done, _, info = env.step(m)
        total += r
    assert done
    return total, info


def test_grid_is_the_static_searchs_and_moves_at_the_edges():
    from evaluation.static_search import GRID_RATIOS as SEARCH_GRID, SKIP as SEARCH_SKIP

    assert GRID_RATIOS == SEARCH_GRID and SKIP == SEARCH_SKIP and len(MOVES) == 5
    cases = {(0.0, False, 1, True): None, (0.0, False, 2, True): (0.25, False), (0.125, True, 2, True): (0.25, True),
             (0.125, True, 1, True): (0.0, True), (0.825, True, 1, True): (0.75, True), (0.825, True, 2, True): (1.0, False),
             (0.75, True, 2, True): (1.0, False), (1.0, False, 2, True): None, (1.0, False, 1, True): (0.75, False),
             (1.0, False, 3, True): None, (0.5, False, 3, False): None, (0.5, True, 3, True): (0.5, False),
             (0.5, True, 4, True): (1.0, False), (1.0, False, 4, True): (0.75, False), (0.25, True, 0, True): (0.25, True)}
    for (r, d, m, guided), want in cases.items():
        assert apply_move(r, d, m, guided) == want, (r, d, m, guided)
    for bad in (5, -1, 1.5, "keep", float("nan")):
        with pytest.raises(ValueError, match=r"0\.\.4"):
            check_move(bad)


def test_frontier_schedules_fit_their_budgets_and_one_that_does_not_is_refused(shared):
    kw, frontier = shared
    g = kw["generator"]
    core = ResidualCore(g, frontier, g.num_scales - 4)
    for e in frontier.entries:  # what makes "keep" always allowed: the schedule for b fits b
        assert core.schedule_fraction(e.schedule) <= e.budget
    e = frontier.entries[2]
    over = Frontier((FrontierEntry(e.budget - 0.01, e.schedule, e.budget - 0.01, e.budget, 0.0),), g.num_scales,
                    g.num_scales - 4, g.fingerprint())
    with pytest.raises(FrontierError, match="over its budget"):
        ResidualCore(g, over, g.num_scales - 4)
    with pytest.raises(FrontierError, match="below the frontier's smallest budget"):
        ResidualPruneEnv(EnvConfig(budget_range=(0.19, 0.6), reward=RewardConfig.embedded_budget()),
                         frontier=Frontier(frontier.entries[1:], g.num_scales, g.num_scales - 4), **kw)
    with pytest.raises(ValueError, match="budget_range"):
        ResidualPruneEnv(EnvConfig(reward=RewardConfig.embedded_budget()), frontier=frontier, **kw)


def test_keep_everywhere_is_the_frontier_with_reward_exactly_zero_and_a_deviation_is_not(shared):
    kw, frontier = shared
    env = ResidualPruneEnv(config(), frontier=frontier, reference_cache=ReferenceCache(), **kw)
    g = kw["generator"]
    obs, _ = env.reset(seed=0, options={"prompt": PROMPTS[0], "seed": 1, "budget": 0.35})
    sched = frontier.schedule_for(0.35)
    extra = obs[-7:]  # frontier ratio and drop at the first controllable scale, spend gap, 4 CFG flags
    assert extra[0] == np.float32(sched.ratios[3]) and extra[1] == np.float32(sched.drop_uncond[3])
    assert extra[2] == pytest.approx(0.0, abs=1e-6) and list(extra[3:]) == [-1.0] * 4
    total, info = episode(env, 0.35, [0, 0, 0, 0])
    assert total == 0.0 and info["paired_reward"] == 0.0 and info["first_deviation"] is None
    assert info["quality"] == info["frontier_quality"] and info["ratios"] == list(sched.ratios)
    assert not env.pairing.cache  # nothing deviated: no frontier image was made
    # a deviation at the second controllable scale: the frontier image is made from the shared prefix
    total, info = episode(env, 0.35, [0, 2, 0, 0])
    assert info["first_deviation"] == 4 and total != 0.0 and info["quality"] != info["frontier_quality"]
    img, _ = g.generate([PROMPTS[0]], [1], schedule=sched)
    ref, ref_clip = env._reference(PROMPTS[0], 1)
    _, fterms = env.reward_fn.terminal(img, ref, PROMPTS[0], 0.0, reference_clip=ref_clip)
    assert info["frontier_quality"] == pytest.approx(fterms["quality_reward"], abs=1e-6)
    assert total == pytest.approx(env.config.reward.paired_quality(info, fterms), abs=1e-6)
    cached = dict(env.pairing.cache)
    again, _ = episode(env, 0.35, [0, 2, 0, 0])  # the frontier's terms come from the cache
    assert again == total and env.pairing.cache == cached
    absolute = ResidualPruneEnv(config(), frontier=frontier, reward_mode="absolute", reference_cache=ReferenceCache(), **kw)
    total_abs, info_abs = episode(absolute, 0.35, [0, 2, 0, 0])
    assert total_abs == info_abs["quality"] == pytest.approx(info["quality"], abs=1e-12)


def test_paired_quality_caps_only_the_clip_term():
    rc = RewardConfig.embedded_budget()
    base = {"ssim": 0.8, "psnr": 20.0, "clip_delta": -5.0}
    assert rc.paired_quality(base, dict(base)) == 0.0
    better_clip = dict(base, clip_delta=+5.0)  # more CLIP-typical than the frontier: nothing from CLIP
    assert rc.paired_quality(better_clip, base) == 0.0
    assert rc.paired_quality(base, better_clip) == pytest.approx(-rc.clip_weight * 10.0)
    assert rc.paired_quality(dict(base, ssim=0.9), base) == pytest.approx(rc.ssim_weight * 0.1)


def test_masked_moves_are_clear_errors(shared):
    kw, frontier = shared
    env = ResidualPruneEnv(config(), frontier=frontier, reference_cache=ReferenceCache(), **kw)
    env.reset(seed=0, options={"prompt": PROMPTS[1], "seed": 0, "budget": 0.35})
    mask = env.action_masks()
    assert mask[0] and not mask[1]  # the frontier runs the first controllable scale at ratio 0: no "less"
    with pytest.raises(ValueError, match=r"move 1 \(less pruning\) is masked at scale 3: it is invalid.*allowed: 0 \(keep\)"):
        env.step(1)
    over = [m for m in range(5) if not mask[m] and env.core.decision(env._schedule, 3, m) is not None]
    assert over, "budget 0.35 should mask a move that adds compute"
    with pytest.raises(ValueError, match="would exceed the budget 0.3500"):
        env.step(over[0])
    with pytest.raises(ValueError, match=r"0\.\.4"):
        env.step(7)
    batched = BatchedResidualEnv(config(), 2, frontier=frontier, prompts=PROMPTS, reference_cache=ReferenceCache(), **kw)
    batched.episode_options = {"budget": 0.35}
    batched.reset()
    with pytest.raises(ValueError, match="slot 1: move 1"):
        batched.step(np.asarray([0, 1]))


def test_masks_keep_every_episode_within_its_budget(shared):
    """Random masked moves, budgets drawn over the whole range, through VecNormalize / VecMonitor as in
    training (sb3-contrib's get_action_masks): keep is always allowed, every image ends within its budget."""
    kw, frontier = shared
    inner = BatchedResidualEnv(config(), 8, frontier=frontier, reference_cache=ReferenceCache(), **kw)
    venv = VecNormalize(VecMonitor(inner), norm_reward=False)
    venv.seed(3)
    venv.reset()
    rng = np.random.default_rng(0)
    ends = []
    for _ in range(4 * 6):
        masks = get_action_masks(venv)
        assert masks.shape == (8, 5) and masks[:, 0].all()
        actions = np.asarray([rng.choice(np.flatnonzero(m)) for m in masks])
        _, _, dones, infos = venv.step(actions)
        if dones[0]:
            ends += infos
    assert len(ends) == 48 and len({round(i["budget"], 6) for i in ends}) == 48
    assert all(i["flops_fraction"] <= i["budget"] + 1e-9 for i in ends)
    assert sum(i["first_deviation"] is not None for i in ends) > 24  # mostly deviating: the masks were exercised


def test_batched_residual_env_equals_single_envs(shared):
    kw, frontier = shared
    n = 3
    batched = BatchedResidualEnv(config(), n, frontier=frontier, prompts=PROMPTS, reference_cache=ReferenceCache(), **kw)
    dummy = DummyVecEnv([lambda: ResidualPruneEnv(config(), frontier=frontier, prompts=PROMPTS,
                                                  reference_cache=ReferenceCache(), **kw) for _ in range(n)])
    batched.seed(5)
    dummy.seed(5)
    ob, od = batched.reset(), dummy.reset()
    assert np.array_equal(ob, od)
    rng = np.random.default_rng(1)
    for _ in range(8):
        mb, md = get_action_masks(batched), get_action_masks(dummy)
        assert np.array_equal(mb, md)
        actions = np.asarray([rng.choice(np.flatnonzero(m)) for m in mb])
        (ob, rb, db, ib), (od, rd, dd, idd) = batched.step(actions), dummy.step(actions)
        assert np.array_equal(ob, od) and np.array_equal(db, dd)
        np.testing.assert_allclose(rb, rd, atol=1e-5)  # terminal metrics on a batch round differently
        assert [i["moves"] for i in ib] == [i["moves"] for i in idd]


def _moves_and_state(g, agent, prompts, seeds):
    """Generate with ``agent`` and record its moves per scale (image-major: moves[b] per controllable scale)."""
    st = g.start(prompts, seeds)
    moves = [[] for _ in prompts]
    while not st.finished:
        k = st.scale_index
        if k < agent.layout["first_controllable_scale"]:
            g.step(st, 0.0)
            continue
        ms = agent.moves(st)
        decisions = [agent.core.decision(agent.schedule, k, m) for m in ms]
        for b, m in enumerate(ms):
            moves[b].append(m)
        g.step(st, [r for r, _ in decisions], drop_unconditional=[d for _, d in decisions])
    return moves, st


def test_untrained_keep_biased_policy_reproduces_the_frontier(shared):
    from agents.algos import build_model, load_hyperparams
    from agents.schedule import ResidualAgentSchedule

    kw, frontier = shared
    g = kw["generator"]
    env = ResidualPruneEnv(config(), frontier=frontier, reference_cache=ReferenceCache(), **kw)
    model = build_model("ppo-residual", load_hyperparams("ppo-residual"), DummyVecEnv([lambda: env]), seed=0,
                        tensorboard_log=None)
    assert torch.softmax(model.policy.action_net.bias.detach(), 0)[0].item() == pytest.approx(0.8, abs=1e-6)
    obs, _ = env.reset(seed=0, options={"budget": 0.5})
    probs = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.probs[0]
    assert 0.75 < probs[0].item() < 0.85  # about 0.8, not 1
    for budget in (0.2, 0.3, 0.35, 0.45, 0.6):
        agent = ResidualAgentSchedule(model, env.observer, env.core, None, env.observation_layout, budget)
        img, st = g.generate(PROMPTS, [0, 1, 2], schedule=agent)
        ref, ref_st = g.generate(PROMPTS, [0, 1, 2], schedule=frontier.schedule_for(budget))
        assert torch.equal(img, ref) and st.flops_used_per_image == ref_st.flops_used_per_image
        for k in range(g.num_scales):
            for b in range(3):
                a, c = st.image_codes(b, k), ref_st.image_codes(b, k)
                assert (a is None and c is None) or torch.equal(a, c)
        moves, _ = _moves_and_state(g, agent, PROMPTS, [0, 1, 2])
        assert moves == [[0] * 4] * 3


def test_train_ppo_residual_and_load_the_run(shared, tmp_path, capsys):
    from agents.algos import algo_class, load_hyperparams
    from agents.schedule import load_agent_schedule

    kw, frontier = shared
    g = kw["generator"]
    front = tmp_path / "frontier.json"
    frontier.save(front, g.scale_widths)
    short = ["--total-timesteps", "64", "--eval-freq", "64", "--checkpoint-freq", "64", "--eval-episodes", "2",
             "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=1", "--no-progress",
             "--precompute-references", "off", "--out", str(tmp_path)]
    assert train.main(short + ["--algo", "ppo-residual", "--frontier", str(tmp_path / "none.json"), "--name", "nofile"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert train.main(short + ["--algo", "ppo", "--frontier", str(front), "--name", "x"]) == 2
    assert train.main(short + ["--algo", "ppo-residual", "--frontier", str(front), "--name", "r"]) == 0
    run = tmp_path / "r"
    assert (run / "frontier.json").read_bytes() == front.read_bytes()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo"] == "ppo-residual" and cfg["residual"]["reward_mode"] == "paired"
    assert cfg["observation_layout"]["action_mode"] == "residual"
    assert load_hyperparams("ppo-gaussian") == load_hyperparams("ppo") and algo_class("ppo-gaussian") is algo_class("ppo")
    for budget in (0.25, 0.4):
        agent = load_agent_schedule(run, g, budget=budget)
        _, st = g.generate(PROMPTS, [0, 1, 2], schedule=agent)
        assert all(f <= budget * g.flops_full() * (1 + 1e-12) for f in st.flops_used_per_image)
        batch_moves, _ = _moves_and_state(g, agent, PROMPTS, [0, 1, 2])
        alone = [_moves_and_state(g, agent, [p], [s])[0][0] for p, s in zip(PROMPTS, [0, 1, 2])]
        assert batch_moves == alone
    from agents.schedule import RunError

    with pytest.raises(RunError, match="budget"):
        load_agent_schedule(run, g)


def test_model_selection_keeps_the_untrained_policy(shared, tmp_path):
    """No evaluation beat it (none ran): the served model is the untrained one, which keeps the frontier."""
    from agents.callbacks import lower_bound
    from agents.schedule import load_agent_schedule

    assert lower_bound([1.0]) == float("-inf") and lower_bound([0.1, 0.1, 0.1]) == pytest.approx(0.1)
    assert lower_bound([0.5, -0.3, 0.4, -0.2]) < 0 < lower_bound([0.5, 0.3, 0.4, 0.2])
    kw, frontier = shared
    g = kw["generator"]
    front = tmp_path / "frontier.json"
    frontier.save(front, g.scale_widths)
    args = ["--algo", "ppo-residual", "--frontier", str(front), "--total-timesteps", "64", "--eval-freq", "100000",
            "--checkpoint-freq", "64", "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=4",
            "--hp", "learning_rate=0.05", "--no-progress", "--precompute-references", "off", "--out", str(tmp_path),
            "--name", "sel"]
    assert train.main(args) == 0
    run = tmp_path / "sel"
    assert (run / "best_model.zip").read_bytes() != (run / "final_model.zip").read_bytes()
    assert json.loads((run / "served.json").read_text()) == {"served_step": 0, "untrained": True}
    assert json.loads((run / "summary.json").read_text())["served"] == "untrained policy (the static frontier)"
    for budget in (0.3, 0.45):
        agent = load_agent_schedule(run, g, budget=budget)
        img, _ = g.generate(PROMPTS, [0, 1, 2], schedule=agent)
        ref, _ = g.generate(PROMPTS, [0, 1, 2], schedule=frontier.schedule_for(budget))
        assert torch.equal(img, ref)
