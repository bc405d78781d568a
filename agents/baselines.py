"""Fixed schedules (FastVAR, the unpruned original) run through a training run's validation env:
the baselines a run's evaluations are read against (``baselines.json``)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def evaluate_baselines(baseline_env: Callable[[], object], num_scales: int, episodes: int) -> dict:
    """{"fastvar": ..., "original": ...}: ``evaluate_fixed_schedule`` of each on a fresh validation env."""
    from generator.schedules import FastVARSchedule, schedule_ratios

    baselines = {}
    for name, sched in (("fastvar", FastVARSchedule()),):
        baselines[name] = evaluate_fixed_schedule(baseline_env(), schedule_ratios(sched, num_scales), episodes)
    baselines["original"] = evaluate_fixed_schedule(baseline_env(), [0.0] * num_scales, episodes)
    return baselines


def evaluate_fixed_schedule(env, ratios: list[float], episodes: int) -> dict:
    """Run a fixed ratio list through the (cycling) validation env, a ``VarPruneEnv`` or a
    ``BatchedVarPruneEnv`` (episodes planned as ``evaluate_policy`` counts them); mean reward, FLOPs and
    quality. In a budget-conditioned env every episode gets the schedule's own FLOPs as its budget
    (clipped to the trained range), so the guard leaves the schedule as it is wherever the range allows."""
    from envs.batched import BatchedVarPruneEnv

    options = None
    if env.config.budget_range is not None:
        lo, hi = env.config.budget_range
        options = {"budget": min(max(env.generator.flops_fraction(ratios), lo), hi)}
    if isinstance(env, BatchedVarPruneEnv):
        infos = _batched_episodes(env, ratios, episodes, options)
    else:
        infos = _single_episodes(env, ratios, episodes, options)
    rewards = [total for total, _ in infos]
    fracs = [info["flops_fraction"] for _, info in infos]
    clips = [info.get("clip_delta", float("nan")) for _, info in infos]
    ssims = [info.get("ssim", float("nan")) for _, info in infos]
    return {"mean_reward": float(np.mean(rewards)), "std_reward": float(np.std(rewards)),
            "flops_fraction": float(np.mean(fracs)), "clip_delta": float(np.nanmean(clips)) if clips else None,
            "ssim": float(np.nanmean(ssims)) if ssims else None, "episodes": episodes}


def _batched_episodes(env, ratios: list[float], episodes: int, options: dict | None) -> list[tuple[float, dict]]:
    """(episode reward, terminal info) of ``episodes`` episodes of a ``BatchedVarPruneEnv``, each slot
    counting as many as ``evaluate_policy`` would take from it."""
    n = env.num_envs
    env.plan_episodes(episodes)
    env.episode_options = options or {}
    targets = [(episodes + i) // n for i in range(n)]
    env.reset()
    totals, counts = np.zeros(n), [0] * n
    infos = []
    while any(c < t for c, t in zip(counts, targets)):
        k = env._state.scale_index
        _, r, dones, step_infos = env.step(np.stack([env.ratio_to_action(ratios[k])] * n))
        totals += r
        if dones[0]:
            for i in range(n):
                if counts[i] < targets[i]:
                    infos.append((float(totals[i]), step_infos[i]))
                    counts[i] += 1
            totals[:] = 0.0
    return infos


def _single_episodes(env, ratios: list[float], episodes: int, options: dict | None) -> list[tuple[float, dict]]:
    """(episode reward, terminal info) of ``episodes`` episodes of a single ``VarPruneEnv``."""
    infos = []
    for _ in range(episodes):
        env.reset(options=options)
        total, done, info = 0.0, False, {}
        while not done:
            k = env.unwrapped._state.scale_index
            _, r, done, _, info = env.step(env.unwrapped.ratio_to_action(ratios[k]))
            total += r
        infos.append((total, info))
    return infos
