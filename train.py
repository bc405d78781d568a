"""Train an RL agent that chooses per-scale token-pruning ratios (Stable-Baselines3 on VarPrune-v0).

    python train.py                               # PPO on the embedded default, ~15 min on 2 CPU cores
    python train.py --algo dqn --flops-weight 2   # discrete ratio grid, FLOPs weighted higher
    python train.py --resume runs/ppo_s0          # continue an interrupted run

Leaves runs/<name>/ with final_model.zip, best_model.zip (best mean reward on validation
prompts), *_obs_stats.json (observation normalisation), config.json (everything resolved),
eval_curve.csv, baselines.json (FastVAR and original schedules on the same validation episodes),
summary.json, tb/ (TensorBoard) and checkpoints/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from generator.weights_io import atomic_write_json

DEFAULT_OUT = Path("runs")
DEFAULT_N_ENVS = 16
REFERENCE_BATCH = 32
DEFAULT_BUDGET_RANGE = (0.2, 0.6)  # the embedded model: forced spend 0.184 .. well above FastVAR's 0.347


def build_parser() -> argparse.ArgumentParser:
    from agents.algos import ALGOS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", default="ppo", choices=ALGOS)
    ap.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                    help="override a hyperparameter of agents/hyperparams/<algo>.yml (YAML value), repeatable")
    ap.add_argument("--total-timesteps", type=int, default=None, help="default: the YAML's total_timesteps")
    ap.add_argument("--n-envs", type=int, default=DEFAULT_N_ENVS,
                    help=f"episodes run together (default {DEFAULT_N_ENVS}, measured: benchmarks/bench_vec_env.py); "
                         "n_steps / train_freq of the YAML count transitions of the whole vector env, so this changes "
                         "how many images are made together, not the algorithm")
    ap.add_argument("--vec-env", default="batched", choices=("batched", "dummy"),
                    help="batched: one generator call per scale for all episodes (envs.batched); dummy: SB3's "
                         "DummyVecEnv of single VarPrune-v0 envs (batch-1 generation, the pre-batching behaviour)")
    ap.add_argument("--workers", type=int, default=None, metavar="K",
                    help="run the --n-envs episodes in K Ray actors (each its own generator and batched env; "
                         "RAY_ADDRESS points at a cluster, else a local Ray starts); needs pip install -e \".[ray]\"")
    ap.add_argument("--reference-cache", type=Path, default=None, metavar="DIR",
                    help="unpruned reference images on disk across runs, keyed by the generator's fingerprint "
                         "(default: OUT/references; 'none' keeps them in memory only)")
    ap.add_argument("--precompute-references", default="auto", choices=("auto", "on", "off"),
                    help="make every (train prompt, image seed) reference in batches before training; auto: when the "
                         "run has at least as many episodes as there are pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="parent directory of runs")
    ap.add_argument("--name", default=None, help="run name (default <algo>_s<seed>, suffixed if taken)")
    ap.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    ap.add_argument("--generator", default="tiny", choices=("tiny", "infinity"))
    ap.add_argument("--train-prompts", default="train")
    ap.add_argument("--val-prompts", default="val")
    ap.add_argument("--eval-episodes", type=int, default=None, help="validation episodes per evaluation (default: every val prompt once)")
    ap.add_argument("--eval-freq", type=int, default=2000, help="evaluate every N environment steps")
    ap.add_argument("--checkpoint-freq", type=int, default=2000)
    ap.add_argument("--image-seeds", type=int, default=2)
    ap.add_argument("--num-controllable", type=int, default=4)
    ap.add_argument("--allow-drop-unconditional", action=argparse.BooleanOptionalAction, default=None,
                    help="per scale, the agent may drop the unconditional CFG branch (half of that scale's compute); "
                         "default: on for budget-conditioned runs (the default), off with --fixed-budget")
    ap.add_argument("--cfg", type=float, default=None,
                    help="classifier-free guidance scale (default: 3 for tiny; for infinity the options file's 'cfg', "
                         "which this overrides)")
    g = ap.add_argument_group("reward (see README 'Reward')")
    g.add_argument("--reward-preset", default=None, choices=("embedded", "embedded_budget", "infinity"),
                   help="default: embedded_budget with --budget-range on --generator tiny, embedded without; "
                        "infinity otherwise")
    g.add_argument("--budget-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="train a budget-conditioned agent: each episode's FLOPs budget (fraction of the unpruned "
                        "transformer FLOPs) is drawn from [LOW, HIGH] and observed; a budget guard keeps every "
                        f"image within it (default on --generator tiny: {DEFAULT_BUDGET_RANGE[0]} "
                        f"{DEFAULT_BUDGET_RANGE[1]})")
    g.add_argument("--fixed-budget", action="store_true",
                   help="train the earlier fixed-budget agent instead (reward: FLOPs bonus + quality, penalty beyond "
                        "--flops-budget; no budget in the observation)")
    g.add_argument("--flops-weight", type=float, default=None)
    g.add_argument("--clip-weight", type=float, default=None)
    g.add_argument("--ssim-weight", type=float, default=None)
    g.add_argument("--lpips-weight", type=float, default=None)
    g.add_argument("--flops-budget", type=float, default=None, help="target FLOPs fraction; beyond it a penalty applies")
    g.add_argument("--budget-penalty", type=float, default=None)
    i = ap.add_argument_group("CLIP / LPIPS / Infinity (see README 'Running on Infinity-2B')")
    i.add_argument("--clip-model", default=None)
    i.add_argument("--clip-pretrained", default=None)
    i.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    i.add_argument("--lpips-backbone", default=None)
    i.add_argument("--infinity-options", type=Path, default=None, help="JSON file of InfinityOptions")
    ap.add_argument("--device", default="cpu", help="device of the policy network")
    ap.add_argument("--env-device", default="cpu", help="device of the embedded generator and CLIP (cpu | cuda); "
                    "the Infinity backend takes its device from --infinity-options")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="progress lines even on a terminal (they are on by default "
                    "when stdout is not a terminal, e.g. redirected to a file)")
    ap.add_argument("--log-interval", type=int, default=1000, help="environment steps between progress lines")
    return ap


def check_args(args) -> None:
    """Counts that must be positive (ValueError naming the flag, its value and what is allowed)."""
    from generator.checks import check_positive

    if args.total_timesteps is not None:
        check_positive("--total-timesteps", args.total_timesteps)
    for flag in ("n_envs", "eval_freq", "checkpoint_freq", "log_interval"):
        check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.eval_episodes is not None:
        check_positive("--eval-episodes", args.eval_episodes)
    if args.cfg is not None and not args.cfg >= 1.0:
        raise ValueError(f"--cfg must be >= 1 (1 = no guidance), got {args.cfg}")
    if args.generator == "infinity" and args.resume is None and args.infinity_options is None:
        raise ValueError("--generator infinity needs --infinity-options FILE (JSON of InfinityOptions; see README)")
    if args.infinity_options is not None and not Path(args.infinity_options).is_file():
        raise ValueError(f"--infinity-options file {args.infinity_options} does not exist")


def resolve_env_config(args) -> "EnvConfig":  # noqa: F821
    from envs.config import EnvConfig
    from rewards.reward import RewardConfig

    budget_range = getattr(args, "budget_range", None)
    if getattr(args, "fixed_budget", False):
        if budget_range is not None:
            raise ValueError("--fixed-budget and --budget-range cannot be combined")
    elif (budget_range is None and args.generator == "tiny" and args.flops_budget is None
          and args.reward_preset in (None, "embedded_budget")):
        budget_range = DEFAULT_BUDGET_RANGE  # the default: one agent for every budget in the range
    allow_drop = args.allow_drop_unconditional
    if allow_drop is None:
        allow_drop = budget_range is not None
    preset = args.reward_preset or ("infinity" if args.generator != "tiny" else
                                    "embedded_budget" if budget_range is not None else "embedded")
    reward = {"embedded": RewardConfig.embedded, "embedded_budget": RewardConfig.embedded_budget,
              "infinity": RewardConfig.infinity}[preset]()
    if budget_range is not None and preset == "infinity":
        reward.flops_weight, reward.flops_budget = 0.0, None  # quality alone under the episode's budget
    for flag, field in (("flops_weight", "flops_weight"), ("clip_weight", "clip_weight"), ("ssim_weight", "ssim_weight"),
                        ("lpips_weight", "lpips_weight"), ("flops_budget", "flops_budget"), ("budget_penalty", "budget_penalty")):
        v = getattr(args, flag)
        if v is not None:
            setattr(reward, field, v)
    from generator.backends import backend

    infinity = None
    cfg_scale = backend(args.generator).default_cfg if args.cfg is None else args.cfg
    if args.infinity_options is not None:
        infinity = json.loads(Path(args.infinity_options).read_text())
    if args.generator == "infinity":  # the options file's cfg is what the generator uses: --cfg overrides it there
        infinity = dict(infinity or {})
        if args.cfg is not None:
            infinity["cfg"] = args.cfg
        cfg_scale = infinity.get("cfg", cfg_scale)
    return EnvConfig(generator=args.generator, prompts=args.train_prompts, image_seeds=args.image_seeds,
                     num_controllable=args.num_controllable, allow_drop_unconditional=allow_drop,
                     cfg_scale=cfg_scale, reward=reward, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
                     lpips_net=args.lpips_net, lpips_backbone=args.lpips_backbone, infinity=infinity,
                     budget_range=None if budget_range is None else tuple(budget_range), device=args.env_device).validate()


def unique_run_dir(out: Path, name: str) -> Path:
    run = out / name
    i = 2
    while run.exists():
        run = out / f"{name}_{i}"
        i += 1
    return run


def evaluate_fixed_schedule(env, ratios: list[float], episodes: int) -> dict:
    """Run a fixed ratio list through the (cycling) validation env, a ``VarPruneEnv`` or a
    ``BatchedVarPruneEnv`` (episodes planned as ``evaluate_policy`` counts them); mean reward, FLOPs and
    quality. In a budget-conditioned env every episode gets the schedule's own FLOPs as its budget
    (clipped to the trained range), so the guard leaves the schedule as it is wherever the range allows."""
    from envs.batched import BatchedVarPruneEnv

    rewards, fracs, clips, ssims = [], [], [], []
    options = None
    if env.config.budget_range is not None:
        lo, hi = env.config.budget_range
        options = {"budget": min(max(env.generator.flops_fraction(ratios), lo), hi)}
    infos = []
    if isinstance(env, BatchedVarPruneEnv):
        n = env.num_envs
        env.plan_episodes(episodes)
        env.episode_options = options or {}
        targets = [(episodes + i) // n for i in range(n)]
        env.reset()
        totals, counts = np.zeros(n), [0] * n
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
    else:
        for _ in range(episodes):
            env.reset(options=options)
            total, done, info = 0.0, False, {}
            while not done:
                k = env.unwrapped._state.scale_index
                _, r, done, _, info = env.step(env.unwrapped.ratio_to_action(ratios[k]))
                total += r
            infos.append((total, info))
    for total, info in infos:
        rewards.append(total)
        fracs.append(info["flops_fraction"])
        clips.append(info.get("clip_delta", float("nan")))
        ssims.append(info.get("ssim", float("nan")))
    return {"mean_reward": float(np.mean(rewards)), "std_reward": float(np.std(rewards)),
            "flops_fraction": float(np.mean(fracs)), "clip_delta": float(np.nanmean(clips)) if clips else None,
            "ssim": float(np.nanmean(ssims)) if ssims else None, "episodes": episodes}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        check_workers(args.workers, args.vec_env, args.n_envs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

    from agents.algos import algo_class, build_model, load_hyperparams, per_env_hyperparams
    from agents.callbacks import PruningEvalCallback, ResumableCheckpoint, latest_checkpoint
    from agents.normalization import load_obs_stats_into, save_obs_stats
    from agents.schedule import RunError, read_run_config
    from envs.config import EnvConfig
    from envs.factory import load_prompts_for, make_clip, make_generator, make_lpips
    from envs.var_prune import VarPruneEnv
    from generator.schedules import FastVARSchedule, schedule_ratios
    from rewards import ReferenceCache

    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    done_steps = 0
    if args.resume is not None:
        try:
            saved = read_run_config(args.resume)
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        run = Path(args.resume)
        ckpt = latest_checkpoint(run / "checkpoints")
        if ckpt is None:
            print(f"error: --resume: no checkpoint in {run / 'checkpoints'}", file=sys.stderr)
            return 2
        done_steps, ckpt_path = ckpt
        algo, hp, seed = saved["algo"], saved["hyperparams"], saved["seed"]
        env_cfg = EnvConfig.from_dict(saved["env"])
        total = saved["total_timesteps"]
        args.n_envs, args.eval_freq, args.checkpoint_freq = saved["n_envs"], saved["eval_freq"], saved["checkpoint_freq"]
        args.vec_env = saved.get("vec_env", "dummy")  # runs from before batching used DummyVecEnv
        args.workers = saved.get("workers")
        try:
            check_workers(args.workers, args.vec_env, args.n_envs)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        args.val_prompts, args.eval_episodes = saved["val_prompts"], saved["eval_episodes"]
    else:
        try:
            hp = load_hyperparams(args.algo, args.hp)
            env_cfg = resolve_env_config(args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        env_cfg.action_mode = hp.get("action_mode", "continuous")
        if args.reference_cache is None:
            env_cfg.reference_cache_dir = str(args.out / "references")
        elif str(args.reference_cache).lower() != "none":
            env_cfg.reference_cache_dir = str(args.reference_cache)
        algo, seed = args.algo, args.seed
        total = int(hp["total_timesteps"]) if args.total_timesteps is None else args.total_timesteps
        try:
            per_env_hyperparams(algo, hp, args.n_envs)  # a bad --n-envs fails here, before anything is written
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        run = unique_run_dir(args.out, args.name or f"{algo}_s{seed}")
        run.mkdir(parents=True)

    set_random_seed(seed)
    generator = make_generator(env_cfg)
    clip = make_clip(env_cfg) if (env_cfg.reward.clip_weight > 0 or env_cfg.prompt_embedding_dim > 0) else None
    lpips = make_lpips(env_cfg) if env_cfg.reward.lpips_weight > 0 else None
    refs = ReferenceCache(max_items=env_cfg.reference_cache_size, directory=env_cfg.reference_cache_dir)
    shared = dict(generator=generator, clip=clip, lpips=lpips, reference_cache=refs)
    val_prompts = load_prompts_for(args.val_prompts)
    eval_episodes = args.eval_episodes or len(val_prompts)
    val_cfg = EnvConfig.from_dict({**env_cfg.to_dict(), "prompts": args.val_prompts, "image_seeds": 1,
                                   "prompt_order": "cycle"})

    train_prompts = load_prompts_for(env_cfg.prompts)
    if args.vec_env == "batched":
        from envs.batched import BatchedVarPruneEnv

        if args.workers:
            import os

            from envs.ray_vec import RayVecEnv, WorkerError

            try:
                venv = RayVecEnv(env_cfg, args.n_envs, args.workers, prompts=train_prompts,
                                 threads_per_worker=max(1, (os.cpu_count() or 1) // args.workers))
            except WorkerError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        else:
            venv = BatchedVarPruneEnv(env_cfg, args.n_envs, prompts=train_prompts, reference_batch_size=REFERENCE_BATCH,
                                      **shared)
        eval_slots = eval_batch_size(eval_episodes, args.n_envs)
        eval_inner = BatchedVarPruneEnv(val_cfg, eval_slots, prompts=val_prompts, reference_batch_size=REFERENCE_BATCH, **shared)
        eval_inner.plan_episodes(eval_episodes)

        def baseline_env():
            return BatchedVarPruneEnv(val_cfg, eval_slots, prompts=val_prompts, **shared)
    else:
        venv = DummyVecEnv([lambda: VarPruneEnv(env_cfg, prompts=train_prompts, **shared) for _ in range(args.n_envs)])
        eval_inner = DummyVecEnv([lambda: VarPruneEnv(val_cfg, **shared)])

        def baseline_env():
            return VarPruneEnv(val_cfg, **shared)
    venv = VecMonitor(venv)
    venv.seed(seed)
    norm = bool(hp.get("normalize_observations", True))
    venv = VecNormalize(venv, norm_obs=norm, norm_reward=False, clip_obs=10.0)
    eval_env = VecNormalize(VecMonitor(eval_inner), norm_obs=norm, norm_reward=False, clip_obs=10.0, training=False)
    layout = VarPruneEnv(val_cfg, **shared).observation_layout

    if args.resume is not None:
        model = algo_class(algo).load(str(ckpt_path), env=venv, device=args.device)
        stats = run / "checkpoints" / f"obs_stats_{done_steps}_steps.json"
        if stats.is_file():
            load_obs_stats_into(venv, stats)
        replay = run / "checkpoints" / f"replay_{done_steps}_steps.pkl"
        if replay.is_file() and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(str(replay))
        print(f"resuming {run} at step {done_steps} of {total}")
    else:
        try:  # before the baselines: a bad hyperparameter must fail in seconds, not after an evaluation
            model = build_model(algo, per_env_hyperparams(algo, hp, args.n_envs), venv, seed,
                                tensorboard_log=str(run / "tb"), device=args.device)
        except (TypeError, ValueError, AssertionError) as e:
            shutil.rmtree(run, ignore_errors=True)  # nothing was written to it yet
            print(f"error: {algo} rejected the hyperparameters {sorted(k for k in hp)} "
                  f"(agents/hyperparams/{algo}.yml + --hp): {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        baselines = {}
        for name, sched in (("fastvar", FastVARSchedule()),):
            baselines[name] = evaluate_fixed_schedule(baseline_env(), schedule_ratios(sched, generator.num_scales),
                                                      eval_episodes)
        baselines["original"] = evaluate_fixed_schedule(baseline_env(), [0.0] * generator.num_scales, eval_episodes)
        atomic_write_json(run / "baselines.json", baselines)
        config = {"algo": algo, "hyperparams": hp, "seed": seed, "total_timesteps": total, "n_envs": args.n_envs,
                  "vec_env": args.vec_env, "workers": args.workers,
                  "eval_freq": args.eval_freq, "checkpoint_freq": args.checkpoint_freq, "val_prompts": args.val_prompts,
                  "eval_episodes": eval_episodes, "env": env_cfg.to_dict(), "observation_layout": layout,
                  "generator_fingerprint": generator.fingerprint(), "command": sys.argv}
        atomic_write_json(run / "config.json", config)
        print(f"run {run}: {algo}, {total} steps; FastVAR on validation: reward {baselines['fastvar']['mean_reward']:.4f} "
              f"at {baselines['fastvar']['flops_fraction']:.3f} of full FLOPs")

    # after the model is built: a bad hyperparameter fails in seconds, before minutes of references
    pairs = len(train_prompts) * env_cfg.image_seeds
    episodes_expected = total / max(1, min(env_cfg.num_controllable, generator.num_scales))
    if args.precompute_references == "on" or (args.precompute_references == "auto" and episodes_expected >= pairs):
        t0 = time.time()
        precompute_references(generator, refs, clip if env_cfg.reward.clip_weight > 0 else None, train_prompts,
                              env_cfg.image_seeds)
        print(f"references: {pairs} (prompt, seed) pairs ready in {time.time() - t0:.1f} s "
              f"({refs.misses} made in batches of {REFERENCE_BATCH}, {refs.hits} from {env_cfg.reference_cache_dir or 'memory'})")

    eval_cb = PruningEvalCallback(eval_env, run, n_eval_episodes=eval_episodes, eval_freq=max(1, args.eval_freq // args.n_envs),
                                  deterministic=True, verbose=0)
    if args.resume is not None and (run / "eval_curve.csv").is_file():
        import csv

        rows = list(csv.DictReader(open(run / "eval_curve.csv")))
        if rows:  # a worse first evaluation after resuming must not replace the best model so far
            eval_cb.best_mean_reward = max(float(r["mean_reward"]) for r in rows)
            eval_cb.last_row = rows[-1]
    ckpt_cb = ResumableCheckpoint(max(1, args.checkpoint_freq // args.n_envs), run / "checkpoints")
    remaining = total - done_steps
    callbacks = [ckpt_cb, eval_cb]
    if args.verbose or not sys.stdout.isatty():  # a redirected run still says how far it is
        from agents.progress import ProgressLog

        callbacks.append(ProgressLog(args.log_interval, total, eval_cb))
    if remaining > 0:
        try:
            model.learn(total_timesteps=remaining, callback=callbacks, progress_bar=not args.no_progress,
                        reset_num_timesteps=args.resume is None, tb_log_name="tb")
        except Exception as e:
            if type(e).__name__ != "WorkerError":
                raise
            last = latest_checkpoint(run / "checkpoints")
            where = f"its last checkpoint (step {last[0]})" if last else "the start (no checkpoint was written yet)"
            print(f"error: {e}\nthe run stopped at step {model.num_timesteps}; continue it from {where} with "
                  f"`python train.py --resume {run}`", file=sys.stderr)
            venv.close()
            return 1
    venv.close()
    model.save(str(run / "final_model.zip"))
    if model.get_vec_normalize_env() is not None:
        save_obs_stats(model.get_vec_normalize_env(), run / "final_obs_stats.json")
    if not (run / "best_model.zip").exists():  # no evaluation ran (very short run)
        model.save(str(run / "best_model.zip"))
        if model.get_vec_normalize_env() is not None:
            save_obs_stats(model.get_vec_normalize_env(), run / "best_obs_stats.json")
    summarize(run, time.time() - started)
    return 0


def check_workers(workers: int | None, vec_env: str, n_envs: int) -> None:
    """``--workers`` needs Ray (checked at once, before anything is built) and the batched env."""
    if workers is None:
        return
    from generator.checks import check_positive

    check_positive("--workers", workers)
    if vec_env != "batched":
        raise ValueError("--workers runs batched envs in Ray actors: it needs --vec-env batched")
    if n_envs % workers:
        raise ValueError(f"--n-envs {n_envs} must be a multiple of --workers {workers} (each worker runs n-envs / workers "
                         f"episodes together)")
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError('--workers needs Ray, which is not installed: pip install -e ".[ray]"')


def eval_batch_size(episodes: int, n_envs: int) -> int:
    """Slots of the batched validation env: the largest divisor of ``episodes`` not above ``n_envs``
    (every batch then holds only counted episodes)."""
    return max(d for d in range(1, min(episodes, n_envs) + 1) if episodes % d == 0)


def precompute_references(generator, refs, clip, prompts: list[str], image_seeds: int) -> None:
    """Every (prompt, image seed) reference of the training split, made in batches (``REFERENCE_BATCH``)
    and kept in ``refs`` (and its directory, across runs)."""
    items = [(p, s) for p in prompts for s in range(image_seeds)]
    keys = [(p, s, generator.fingerprint()) for p, s in items]

    def make(indices: list[int]):
        img, _ = generator.generate([items[i][0] for i in indices], [items[i][1] for i in indices])
        return img

    refs.get_or_create_many(keys, make, clip=clip, prompts=[p for p, _ in items], batch_size=REFERENCE_BATCH)


def summarize(run: Path, seconds: float) -> dict:
    """summary.json and the closing lines: the selected model's VALIDATION score next to FastVAR's on the
    same validation episodes. The model was selected on these episodes (the best of every evaluation),
    so its figure is optimistic; it is not a comparison on held-out prompts (evaluate_agent.py makes
    that one, on the test prompts, with prompt-clustered CIs)."""
    import csv

    base = json.loads((run / "baselines.json").read_text())
    rows = list(csv.DictReader(open(run / "eval_curve.csv"))) if (run / "eval_curve.csv").exists() else []
    best = max(rows, key=lambda r: float(r["mean_reward"])) if rows else None
    fv = base["fastvar"]
    note = ("validation figures: the selected model is the best of {n} evaluations on these same validation "
            "episodes (selection-biased upwards), FastVAR is evaluated once on them; test figures come only from "
            "`python evaluate_agent.py`").format(n=len(rows))
    cfg_path = run / "config.json"
    budget_range = json.loads(cfg_path.read_text())["env"].get("budget_range") if cfg_path.is_file() else None
    if budget_range is not None:  # the agent's episodes spend their own budgets, FastVAR its fixed 0.347
        note += (f"; the agent's validation episodes have budgets spread over [{budget_range[0]:g}, {budget_range[1]:g}] "
                 "while FastVAR runs at its own FLOPs, so the two are not at matched FLOPs (evaluate_agent.py "
                 "compares them at matched budgets)")
    summary = {"run": str(run), "wall_clock_s": round(seconds, 1), "fastvar": fv, "original": base["original"],
               "best_eval": best, "evaluations": len(rows), "validation_note": note}
    if best is not None:
        def num(x):
            try:
                return float(x)
            except (TypeError, ValueError):
                return float("nan")

        print(f"selected model (step {best['timesteps']}, best of {len(rows)} validation evaluations): reward "
              f"{num(best['mean_reward']):.4f} at {num(best['flops_fraction']):.3f} of the transformer FLOPs, SSIM "
              f"{num(best['ssim']):.3f}, CLIP change {num(best['clip_delta']):+.2f}")
        print(f"FastVAR on the same validation episodes: reward {fv['mean_reward']:.4f} at {fv['flops_fraction']:.3f}, "
              f"SSIM {num(fv.get('ssim')):.3f}, CLIP change {num(fv.get('clip_delta')):+.2f}")
        print(f"({note})")
    atomic_write_json(run / "summary.json", summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
