"""VarPrune-v0 on the shipped embedded generator and CLIP (weights in weights/)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.config import EnvConfig
from envs.var_prune import VarPruneEnv
from generator.schedules import FastVARSchedule, schedule_ratios

PROMPTS = ["a large red solid circle in the centre on a plain gray background",
           "a small blue striped square at the top left on a noisy navy background"]


@pytest.fixture(scope="module")
def shared():
    from envs.factory import make_clip, make_generator
    from rewards import ReferenceCache

    torch.set_num_threads(2)
    cfg = EnvConfig()
    return dict(generator=make_generator(cfg), clip=make_clip(cfg), reference_cache=ReferenceCache(max_items=64))


def make(shared, render_mode=None, **kw):
    return VarPruneEnv(EnvConfig(**kw), render_mode=render_mode, prompts=PROMPTS, **shared)


def rollout(env, actions, seed=0, options=None):
    obs, _ = env.reset(seed=seed, options=options)
    obs_list, rewards, info = [obs], [], {}
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        obs_list.append(obs)
        rewards.append(r)
    assert term and not trunc
    return np.stack(obs_list), rewards, info


def test_registered_and_made_through_gymnasium(shared):
    env = gym.make(envs.ENV_ID, prompts=PROMPTS, **shared)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["prompt"] in PROMPTS
    assert env.action_space.shape == (1,)


def test_gymnasium_and_sb3_env_checkers(shared):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(shared)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
        sb3_check_env(make(shared), warn=True)
    messages = [str(w.message) for w in caught]
    # the one warning we keep on purpose: unbounded observation features (log-scaled statistics
    # and a prompt embedding have no natural bound; train.py normalises observations)
    unexpected = [m for m in messages if "infinity" not in m.lower() and "unbounded" not in m.lower()]
    assert unexpected == [], unexpected


def test_same_seed_and_actions_give_identical_episodes(shared):
    acts = [np.array([a], np.float32) for a in (-0.2, 0.1, 0.5, 0.95)]
    o1, r1, i1 = rollout(make(shared), acts, seed=11)
    o2, r2, i2 = rollout(make(shared), acts, seed=11)
    assert np.array_equal(o1, o2) and r1 == r2
    assert i1["prompt"] == i2["prompt"] and i1["image_seed"] == i2["image_seed"]


def test_all_zero_actions_reproduce_the_unpruned_reference(shared):
    env = make(shared, render_mode="rgb_array")
    zero = env.ratio_to_action(0.0)
    _, rewards, info = rollout(env, [zero] * env.controllable, options={"prompt": PROMPTS[1], "seed": 3})
    ref, _ = shared["generator"].generate([PROMPTS[1]], [3])
    img = torch.from_numpy(env.render()).permute(2, 0, 1).float() / 255
    assert torch.equal((ref[0].clamp(0, 1) * 255).round() / 255, img)
    assert info["flops_fraction"] == pytest.approx(1.0)
    assert info["ssim"] == pytest.approx(1.0, abs=1e-6) and info["clip_delta"] == pytest.approx(0.0, abs=1e-6)
    assert info["quality_reward"] == pytest.approx(0.0, abs=1e-6)
    rc = env.config.reward  # the embedded preset has a FLOPs budget: spending everything costs its penalty
    assert sum(rewards) == pytest.approx(-rc.budget_penalty * (1.0 - rc.flops_budget), abs=1e-6)


def test_fastvar_through_the_env_matches_the_generator_accounting(shared):
    env = make(shared)
    gen = shared["generator"]
    ratios = schedule_ratios(FastVARSchedule(), gen.num_scales)
    acts = [env.ratio_to_action(r) for r in ratios[env.first_controllable:]]
    _, rewards, info = rollout(env, acts, options={"prompt": PROMPTS[0], "seed": 0})
    _, st = gen.generate([PROMPTS[0]], [0], schedule=FastVARSchedule())
    assert info["ratios"] == ratios
    assert info["flops_used"] == pytest.approx(st.flops_used, rel=1e-12)
    saved = 1 - st.flops_used / gen.flops_full()
    flops_reward = sum(rewards) - info["terminal_reward"]
    assert flops_reward == pytest.approx(env.config.reward.flops_weight * saved, rel=1e-9)


def test_discrete_actions_and_dropping_the_unconditional_branch(shared):
    env = make(shared, action_mode="discrete", allow_drop_unconditional=True)
    assert env.action_space.n == 2 * len(env.config.ratio_grid)
    env.reset(seed=0)
    g = len(env.config.ratio_grid)
    _, _, _, _, info = env.step(g + 0)  # ratio 0, drop the unconditional branch
    st = env.unwrapped._state
    assert st.reports[-1].unconditional is False and st.reports[-1].ratio == 0.0


@pytest.mark.parametrize("bad", [np.array([np.nan], np.float32), np.array([np.inf], np.float32),
                                 np.array([1.5], np.float32), np.array([0.1, 0.2], np.float32)])
def test_bad_actions_are_clear_errors(shared, bad):
    env = make(shared)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


def test_stepping_after_the_end_and_bad_prompts(shared, tmp_path):
    env = make(shared)
    rollout(env, [env.ratio_to_action(0.0)] * env.controllable)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.ratio_to_action(0.0))
    with pytest.raises(ValueError, match="prompt"):
        env.reset(options={"prompt": "   "})
    with pytest.raises((FileNotFoundError, ValueError), match="nope.txt"):
        VarPruneEnv(EnvConfig(prompts=str(tmp_path / "nope.txt")), **shared)


def test_cycle_order_visits_every_prompt(shared):
    env = make(shared, prompt_order="cycle", image_seeds=1)
    seen = []
    for _ in range(4):
        _, info = env.reset()
        seen.append((info["prompt"], info["image_seed"]))
    assert seen == [(PROMPTS[0], 0), (PROMPTS[1], 0)] * 2
