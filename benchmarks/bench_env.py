"""VarPrune-v0 overhead: env episode time vs driving the generator directly with the same schedule.

    python benchmarks/bench_env.py [--episodes 30]

Both paths run the FastVAR schedule on the same prompts and seeds, interleaved, in one process.
The env's reward computation (terminal CLIP + SSIM/PSNR) is timed separately and subtracted; the
direct path computes the same reward after its timed part, so both leave the same after-effects.
"Overhead" is what the env adds to generation itself (observations, bookkeeping, reference lookup).
References are pre-generated (cached), as they are after the first epoch of training.
"""

from __future__ import annotations

import argparse
import time

import torch


class Timed:
    """Wraps one method of an object and accumulates its wall time (instrumentation, not a stand-in)."""

    def __init__(self, obj, name: str) -> None:
        self.seconds, inner = 0.0, getattr(obj, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            out = inner(*a, **kw)
            self.seconds += time.perf_counter() - t
            return out

        setattr(obj, name, timed)


class TimedReward:
    """Delegates to the env's RewardFunction and accumulates the wall time of terminal()."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def step_reward(self, saved: float) -> float:
        return self.inner.step_reward(saved)

    def terminal(self, *a, **kw):
        t = time.perf_counter()
        out = self.inner.terminal(*a, **kw)
        self.seconds += time.perf_counter() - t
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=30, help="distinct prompts")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the prompts")
    args = ap.parse_args(argv)
    from envs.config import EnvConfig
    from envs.var_prune import VarPruneEnv
    from domain import load_prompts
    from generator.schedules import FastVARSchedule, schedule_ratios

    prompts = load_prompts("val")[: args.episodes]
    env = VarPruneEnv(EnvConfig(prompts="val", prompt_order="cycle", image_seeds=1))
    g = env.generator
    ratios = schedule_ratios(FastVARSchedule(), g.num_scales)
    actions = [env.ratio_to_action(r) for r in ratios[env.first_controllable:]]
    for p in prompts:  # warm the reference cache and the text embeddings
        env.reset(options={"prompt": p, "seed": 0})
        for a in actions:
            env.step(a)
    timer = TimedReward(env.reward_fn)
    env.reward_fn = timer
    obs_timer = Timed(env.observer, "observe")
    t_env, t_gen, t_rew = [], [], []

    def env_episode(p: str) -> None:
        before = timer.seconds
        t = time.perf_counter()
        env.reset(options={"prompt": p, "seed": 0})
        for a in actions:
            env.step(a)
        t_env.append(time.perf_counter() - t)
        t_rew.append(timer.seconds - before)

    def direct(p: str) -> None:
        # the same reward is computed here too (and subtracted), so both paths leave the same
        # after-effects (allocator, caches) on whatever runs next
        t = time.perf_counter()
        with torch.no_grad():
            st = g.start([p], [0])
            while not st.finished:
                g.step(st, ratios[st.scale_index])
            img = g.decode(st)
        t_gen.append(time.perf_counter() - t)
        ref, ref_clip = env.references.get_or_create((p, 0, g.fingerprint()), lambda: None, clip=env.clip, prompt=p)
        timer.inner.terminal(img, ref, p, st.flops_used / g.flops_full(), reference_clip=ref_clip)

    for rep in range(args.rounds):
        for i, p in enumerate(prompts):  # alternate which path runs first, so neither gets the warm caches
            first, second = (env_episode, direct) if (i + rep) % 2 == 0 else (direct, env_episode)
            first(p)
            second(p)
    env_ms = 1000 * (sum(t_env) - sum(t_rew)) / len(t_env)
    gen_ms = 1000 * sum(t_gen) / len(t_gen)
    rew_ms = 1000 * sum(t_rew) / len(t_rew)
    obs_ms = 1000 * obs_timer.seconds / len(t_env)
    print(f"episodes {len(t_env)} (FastVAR schedule, batch 1, torch threads {torch.get_num_threads()})")
    print(f"generator directly           {gen_ms:8.2f} ms / image (mean)")
    print(f"env episode minus reward     {env_ms:8.2f} ms / episode (mean)")
    print(f"env overhead (excl. reward)  {100 * (env_ms / gen_ms - 1):+8.1f} %")
    print(f"  of which observations      {obs_ms:8.2f} ms / episode ({100 * obs_ms / gen_ms:.1f} % of generation)")
    print(f"reward (CLIP+SSIM+PSNR)      {rew_ms:8.2f} ms / episode = {rew_ms / gen_ms:.2f} x generation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
