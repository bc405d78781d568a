"""Env steps per second: the batched vector env vs SB3's DummyVecEnv of single VarPrune-v0 envs, the
batched env's size N, and Ray workers, all measured in one process (interleaved rounds, median).

    python benchmarks/bench_vec_env.py                          # N = 16: batched vs DummyVecEnv
    python benchmarks/bench_vec_env.py --sizes 1 4 8 16 32 64    # steps/s per N (how train.py's default was chosen)
    python benchmarks/bench_vec_env.py --ray-workers 1 2         # RayVecEnv with 1 vs 2 workers (needs ray)

Every env runs the same random actions (uniform in [-1, 1]: a mix of pruning and skipping, like an
untrained policy) on the training prompts. "warm": every unpruned reference is already cached (the
steady state of a run after its references are precomputed); "cold" (--cold): each round starts with
an empty reference cache, so the references are made too (batched in the batched env, one by one in
DummyVecEnv). ``--device cuda`` runs generator and CLIP on the GPU (every step still brings the
observations back to the CPU, which is what the timing includes). Policy time is not included (SB3's
update cost is the same for both).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def run_steps(venv, steps: int, rng: np.random.Generator) -> float:
    """Seconds for ``steps`` vector steps with random actions (the env is reset first, untimed)."""
    venv.reset()
    n = venv.num_envs
    actions = [rng.uniform(-1, 1, (n,) + venv.action_space.shape).astype(np.float32) for _ in range(steps)]
    t0 = time.perf_counter()
    for a in actions:
        venv.step(a)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="envs for the batched-vs-DummyVecEnv comparison")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per env per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[], help="also measure the batched env at these N")
    ap.add_argument("--ray-workers", type=int, nargs="*", default=[], help="also measure RayVecEnv(n, K) for these K")
    ap.add_argument("--cold", action="store_true", help="empty reference cache every round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="torch device of the generator and CLIP (cpu | cuda)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.batched import BatchedVarPruneEnv
    from envs.config import EnvConfig
    from envs.factory import load_prompts_for, make_clip, make_generator
    from envs.var_prune import VarPruneEnv
    from rewards import ReferenceCache

    cfg = EnvConfig(device=args.device).validate()
    gen, clip = make_generator(cfg), make_clip(cfg)
    prompts = load_prompts_for("train")[:64]
    warm = ReferenceCache()
    controllable = VarPruneEnv(cfg, generator=gen, clip=clip, prompts=prompts, reference_cache=warm).controllable
    steps = args.episodes * controllable

    def refs():
        return ReferenceCache() if args.cold else warm

    if not args.cold:  # every (prompt, seed) reference made once, before any timing
        keys = [(p, s, gen.fingerprint()) for p in prompts for s in range(cfg.image_seeds)]
        warm.get_or_create_many(keys, lambda ix: gen.generate([keys[i][0] for i in ix], [keys[i][1] for i in ix])[0],
                                clip=clip, prompts=[k[0] for k in keys])

    makers = {f"batched N={args.n}": lambda: BatchedVarPruneEnv(cfg, args.n, generator=gen, clip=clip, prompts=prompts,
                                                                 reference_cache=refs()),
              f"DummyVecEnv of {args.n}": lambda: DummyVecEnv(
                  [lambda r=refs(): VarPruneEnv(cfg, generator=gen, clip=clip, prompts=prompts, reference_cache=r)
                   for _ in range(args.n)])}
    for n in args.sizes:
        if n != args.n:
            makers[f"batched N={n}"] = (lambda n=n: BatchedVarPruneEnv(cfg, n, generator=gen, clip=clip, prompts=prompts,
                                                                       reference_cache=refs()))
    ray_names = {k: f"Ray {k} worker(s) x {args.n // k}" for k in args.ray_workers}
    samples: dict[str, list[float]] = {name: [] for name in list(makers) + list(ray_names.values())}
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {steps} vector steps ({args.episodes} episodes) per env per round, "
          f"{args.rounds} rounds, references {'cold' if args.cold else 'warm'}")
    for name, make in makers.items():  # untimed warm-up: first calls (allocator, CUDA kernels) are not steady state
        run_steps(make(), controllable, np.random.default_rng(0))
    for r in range(args.rounds):
        for name, make in makers.items():
            venv = make()
            venv.seed(r)
            secs = run_steps(venv, steps, np.random.default_rng(r))
            samples[name].append(venv.num_envs * steps / secs)
    for k, name in ray_names.items():  # one configuration at a time: each holds its CPUs in the local Ray
        from envs.ray_vec import RayVecEnv

        venv = RayVecEnv(cfg, args.n, k, prompts=prompts)  # built once: actor start-up is not what is measured
        for r in range(args.rounds):
            venv.seed(r)
            samples[name].append(venv.num_envs * steps / run_steps(venv, steps, np.random.default_rng(r)))
        venv.close()
    median = {k: statistics.median(v) for k, v in samples.items()}
    base = median[f"DummyVecEnv of {args.n}"]
    print("| env | env steps/s (median) | vs DummyVecEnv |")
    print("|---|---|---|")
    for name, v in median.items():
        print(f"| {name} | {v:.1f} | {v / base:.2f}x |")
    if len(ray_names) > 1:
        names = list(ray_names.values())
        print(f"Ray: {names[-1]} vs {names[0]}: {median[names[-1]] / median[names[0]]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
