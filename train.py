"""Train an RL agent that chooses per-scale token-pruning ratios (Stable-Baselines3 on VarPrune-v0).

    python train.py                               # the selector on the embedded default, ~15 min cold on 2 CPU cores
    python train.py --algo ppo                    # the Gaussian PPO agent (budget-conditioned), ~40 min
    python train.py --algo dqn --flops-weight 2   # discrete ratio grid, FLOPs weighted higher
    python train.py --resume runs/ppo_s0          # continue an interrupted RL run
    python train.py --algo ppo-residual --frontier frontier.json   # moves relative to the static frontier
    python train.py --objective iso-quality       # lossless mode: fewest FLOPs within epsilon

``--algo auto`` (the default) is the selector on the embedded model: it starts from the static frontier
(the best static schedule per budget, searched first and cached) and leaves it for an image only where
validation says it surely gains, so it is never below the best static schedule on validation. On
``--generator infinity`` (no affordable frontier search) and with ``--resume`` it is ``ppo``.

An RL run leaves runs/<name>/ with final_model.zip, best_model.zip (best mean reward on validation
prompts), *_obs_stats.json (observation normalisation), config.json (everything resolved),
eval_curve.csv, baselines.json (FastVAR and original schedules on the same validation episodes),
summary.json, tb/ (TensorBoard) and checkpoints/; a selector run its frontier.json, selector.safetensors,
config.json and summary.json (``evaluation.selector_run``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agents.run_files import save_final_models, summarize, unique_run_dir
from agents.schedule import RunError
from agents.training import (RunPlan, is_worker_error, learn, load_frontier, make_callbacks, prepare_model,
                             prepare_references, residual_envs_arg, resume_plan)
from agents.training_envs import build_training_envs

DEFAULT_OUT = Path("runs")
DEFAULT_N_ENVS = 16
DEFAULT_BUDGET_RANGE = (0.2, 0.6)  # the embedded model: forced spend 0.184 .. well above FastVAR's 0.347
# The selector's label prompts: the settings measured on test. With 1,000 (2,000 labelled images) it leaves
# the frontier on a third of the test images at FastVAR's budget and beats the best static schedule there
# (docs/controllers.md); the lossless selector was measured with 150.
SELECTOR_TRAIN_PROMPTS = {"budget": 1000, "iso-quality": 150}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(ap)
    _add_env_args(ap)
    _add_reward_args(ap.add_argument_group("reward (see README 'Reward')"))
    _add_model_args(ap.add_argument_group("CLIP / LPIPS / Infinity (see README 'Running on Infinity-2B')"))
    _add_output_args(ap)
    return ap


def _add_run_args(ap: argparse.ArgumentParser) -> None:
    """The algorithm, its length, its vector env and where the run goes."""
    from agents.algos import ALGOS

    ap.add_argument("--algo", default="auto", choices=("auto",) + ALGOS + ("selector",),
                    help="auto (default): selector on --generator tiny, ppo on infinity and with --resume; "
                         "ppo (= ppo-gaussian: ratios from a Gaussian policy, budget guard), ppo-residual (moves relative "
                         "to the static frontier, action masks, paired reward), selector (one of the frontier's best "
                         "schedules per image, chosen from its early scales), or another SB3 algorithm")
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
    ap.add_argument("--frontier", default=None, metavar="auto|PATH",
                    help="--algo ppo-residual / selector: the static frontier the agent starts from. auto (default): "
                         "searched before training on the validation items evaluate_agent.py searches on, sharing "
                         "--cache-dir (a second run reuses it); PATH: a frontier.json. Saved as RUN/frontier.json")
    ap.add_argument("--cache-dir", type=Path, default=Path("results") / "cache",
                    help="the static search's grid cache, shared with evaluate_agent.py ('none': no cache)")
    ap.add_argument("--search-num-prompts", type=int, default=100,
                    help="validation prompts (x seed 0) the frontier is searched on and the selector's margin chosen on "
                         "(evaluate_agent.py's default search items: keep them equal to share the cache)")
    ap.add_argument("--selector-k", type=int, default=8, help="--algo selector: candidate schedules per budget")
    ap.add_argument("--selector-train-prompts", type=int, default=None,
                    help="--algo selector: training prompts (x seeds 0 1) its labels are generated on (default: "
                         f"{SELECTOR_TRAIN_PROMPTS['budget']}, all of the train split; {SELECTOR_TRAIN_PROMPTS['iso-quality']} "
                         "with --objective iso-quality, the measured settings)")
    ap.add_argument("--selector-budgets", nargs="+", default=["fastvar", "0.8fastvar", "0.6fastvar"],
                    help="--algo selector: budgets it is fitted at (fractions of the unpruned transformer FLOPs or "
                         "multiples of FastVAR's, e.g. 0.8fastvar)")
    ap.add_argument("--selector-epsilons", type=float, nargs="+", default=None,
                    help="--algo selector --objective iso-quality: the mean QUALITY losses it gets an operating point "
                         "for (default: 0.02 0.04 ... 0.25; --epsilon adds one)")
    ap.add_argument("--reward-mode", default="paired", choices=("paired", "absolute"),
                    help="--algo ppo-residual: paired = quality minus the frontier's on the same prompt and seed (CLIP "
                         "term of the difference capped at 0); absolute = quality alone")


def _add_env_args(ap: argparse.ArgumentParser) -> None:
    """The generator, prompts, evaluation and checkpoint cadence, and what the agent controls."""
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


def _add_reward_args(g) -> None:
    """The reward preset, the budget (conditioned or fixed) and the reward weights."""
    g.add_argument("--objective", default="budget", choices=("budget", "iso-quality"),
                   help="budget: the best quality within a FLOPs budget (the default); iso-quality (lossless mode): the "
                        "fewest FLOPs within --epsilon of the unpruned image's quality (reward = FLOPs saved - "
                        "--lossless-penalty * max(0, quality loss - epsilon)); --algo ppo / ppo-gaussian / selector")
    g.add_argument("--epsilon", type=float, default=None,
                   help="--objective iso-quality: the quality loss that costs nothing (default 0.1, the preset's); the "
                        "selector fits one operating point per --selector-epsilons instead")
    g.add_argument("--lossless-penalty", type=float, default=None,
                   help="--objective iso-quality: penalty per unit of quality loss beyond epsilon (default 10)")
    g.add_argument("--reward-preset", default=None, choices=("embedded", "embedded_budget", "embedded_iso", "infinity"),
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


def _add_model_args(i) -> None:
    """CLIP, LPIPS and the Infinity backend's options."""
    i.add_argument("--clip-model", default=None)
    i.add_argument("--clip-pretrained", default=None)
    i.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    i.add_argument("--lpips-backbone", default=None)
    i.add_argument("--infinity-options", type=Path, default=None, help="JSON file of InfinityOptions")


def _add_output_args(ap: argparse.ArgumentParser) -> None:
    """Devices and progress output."""
    ap.add_argument("--device", default="cpu", help="device of the policy network")
    ap.add_argument("--env-device", default="cpu", help="device of the embedded generator and CLIP (cpu | cuda); "
                    "the Infinity backend takes its device from --infinity-options")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="progress lines even on a terminal (they are on by default "
                    "when stdout is not a terminal, e.g. redirected to a file)")
    ap.add_argument("--log-interval", type=int, default=1000, help="environment steps between progress lines")


# Flags only the RL learners read (their training loop, vector env, budget range and reward); the selector
# would silently ignore them, so they are refused with it instead.
RL_ONLY_FLAGS = ("hp", "total_timesteps", "n_envs", "vec_env", "workers", "reference_cache", "precompute_references",
                 "eval_episodes", "eval_freq", "checkpoint_freq", "fixed_budget", "budget_range", "reward_mode",
                 "flops_budget", "budget_penalty")


def resolve_algo(args) -> None:
    """``--algo auto``: the selector on the embedded model (its frontier search is affordable there); ``ppo`` on
    Infinity (``--frontier none`` territory) and when resuming (only RL runs resume; the run's own algorithm
    is used)."""
    if args.algo == "auto":
        args.algo = "selector" if args.generator == "tiny" and args.resume is None else "ppo"


def check_selector_flags(args) -> None:
    """Refuse, with the flags named, what ``--algo selector`` would ignore."""
    if args.algo != "selector":
        return
    parser = build_parser()
    given = ["--" + d.replace("_", "-") for d in RL_ONLY_FLAGS if getattr(args, d) != parser.get_default(d)]
    if given:
        raise ValueError(f"{' '.join(given)} {'is' if len(given) == 1 else 'are'} for the RL learners; the selector "
                         "(--algo selector, the default on the embedded model) does not use "
                         f"{'it' if len(given) == 1 else 'them'}: add --algo ppo (or another RL --algo), or drop them")


def check_args(args) -> None:
    """Counts that must be positive (ValueError naming the flag, its value and what is allowed); resolves
    ``--algo auto``."""
    from generator.checks import check_positive

    resolve_algo(args)
    if args.total_timesteps is not None:
        check_positive("--total-timesteps", args.total_timesteps)
    for flag in ("n_envs", "eval_freq", "checkpoint_freq", "log_interval"):
        check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.eval_episodes is not None:
        check_positive("--eval-episodes", args.eval_episodes)
    if args.selector_train_prompts is not None:
        check_positive("--selector-train-prompts", args.selector_train_prompts)
    else:
        args.selector_train_prompts = SELECTOR_TRAIN_PROMPTS[args.objective]
    if args.cfg is not None and not args.cfg >= 1.0:
        raise ValueError(f"--cfg must be >= 1 (1 = no guidance), got {args.cfg}")
    if args.generator == "infinity" and args.resume is None and args.infinity_options is None:
        raise ValueError("--generator infinity needs --infinity-options FILE (JSON of InfinityOptions; see README)")
    if args.infinity_options is not None and not Path(args.infinity_options).is_file():
        raise ValueError(f"--infinity-options file {args.infinity_options} does not exist")
    from agents.algos import RESIDUAL_ALGOS

    if args.objective == "iso-quality":
        if args.algo in RESIDUAL_ALGOS:
            raise ValueError(f"--objective iso-quality is for --algo ppo / ppo-gaussian / selector, not {args.algo} "
                             "(its moves are relative to a budget's frontier schedule)")
        for flag in ("budget_range", "flops_budget"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--objective iso-quality minimises FLOPs itself: drop --{flag.replace('_', '-')}")
        if args.fixed_budget:
            raise ValueError("--objective iso-quality has no budget: drop --fixed-budget")
    else:
        for flag in ("epsilon", "lossless_penalty"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} is for --objective iso-quality")
    if args.selector_epsilons is not None and not (args.algo == "selector" and args.objective == "iso-quality"):
        raise ValueError("--selector-epsilons is for --algo selector --objective iso-quality")
    uses_frontier = args.algo in RESIDUAL_ALGOS + ("selector",)
    if args.frontier is not None and not uses_frontier:
        raise ValueError(f"--frontier is for --algo {' / '.join(RESIDUAL_ALGOS + ('selector',))}, not {args.algo}")
    if uses_frontier and args.frontier is None:
        args.frontier = "auto"
    if args.frontier not in (None, "auto") and not Path(args.frontier).is_file():
        raise ValueError(f"--frontier {args.frontier}: no such file (give 'auto' or a frontier.json)")
    if args.algo == "selector" and args.resume is not None:
        raise ValueError("--algo selector has nothing to resume: it fits in minutes and reuses the grid cache")
    if args.algo in RESIDUAL_ALGOS and args.workers is not None:
        raise ValueError(f"--algo {args.algo} does not run in Ray workers yet: drop --workers")
    check_selector_flags(args)


def resolve_env_config(args) -> "EnvConfig":  # noqa: F821
    from envs.config import EnvConfig
    from rewards.reward import RewardConfig

    budget_range = getattr(args, "budget_range", None)
    iso = getattr(args, "objective", "budget") == "iso-quality"
    if getattr(args, "fixed_budget", False):
        if budget_range is not None:
            raise ValueError("--fixed-budget and --budget-range cannot be combined")
    elif (not iso and budget_range is None and args.generator == "tiny" and args.flops_budget is None
          and args.reward_preset in (None, "embedded_budget")):  # iso: no budget (check_args refused one)
        budget_range = DEFAULT_BUDGET_RANGE  # the default: one agent for every budget in the range
    allow_drop = args.allow_drop_unconditional
    if allow_drop is None:
        allow_drop = budget_range is not None or iso
    preset = args.reward_preset or ("infinity" if args.generator != "tiny" else "embedded_iso" if iso else
                                    "embedded_budget" if budget_range is not None else "embedded")
    reward = {"embedded": RewardConfig.embedded, "embedded_budget": RewardConfig.embedded_budget,
              "embedded_iso": RewardConfig.embedded_iso, "infinity": RewardConfig.infinity}[preset]()
    if budget_range is not None and preset == "infinity":
        reward.flops_weight, reward.flops_budget = 0.0, None  # quality alone under the episode's budget
    if iso:  # any preset's quality terms, the lossless objective's FLOPs term and penalty
        iso_preset = RewardConfig.embedded_iso()
        reward.objective, reward.flops_budget = "iso-quality", None
        reward.flops_weight, reward.epsilon, reward.lossless_penalty = (iso_preset.flops_weight, iso_preset.epsilon,
                                                                        iso_preset.lossless_penalty)
    elif reward.objective == "iso-quality":
        raise ValueError(f"--reward-preset {preset} is the iso-quality objective's: give --objective iso-quality")
    for flag, field in (("flops_weight", "flops_weight"), ("clip_weight", "clip_weight"), ("ssim_weight", "ssim_weight"),
                        ("lpips_weight", "lpips_weight"), ("flops_budget", "flops_budget"), ("budget_penalty", "budget_penalty"),
                        ("epsilon", "epsilon"), ("lossless_penalty", "lossless_penalty")):
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


def plan_new_run(args) -> RunPlan:
    """A new run from the flags and the algorithm's YAML (+ --hp); its directory (``unique_run_dir``) is
    created. Raises ValueError naming a bad flag or hyperparameter, before anything is written."""
    from agents.algos import load_hyperparams, per_env_hyperparams

    hp = load_hyperparams(args.algo, args.hp)
    env_cfg = resolve_env_config(args)
    env_cfg.action_mode = hp.get("action_mode", "continuous")
    if args.reference_cache is None:
        env_cfg.reference_cache_dir = str(args.out / "references")
    elif str(args.reference_cache).lower() != "none":
        env_cfg.reference_cache_dir = str(args.reference_cache)
    total = int(hp["total_timesteps"]) if args.total_timesteps is None else args.total_timesteps
    per_env_hyperparams(args.algo, hp, args.n_envs)  # a bad --n-envs fails here, before anything is written
    frontier = None
    if args.frontier is not None:
        if env_cfg.budget_range is None:
            raise ValueError("--algo ppo-residual is budget-conditioned: give --budget-range (not --fixed-budget)")
        frontier = load_frontier(args.frontier) if args.frontier != "auto" else None
    run = unique_run_dir(args.out, args.name or f"{args.algo}_s{args.seed}")
    run.mkdir(parents=True)
    residual = None
    if args.frontier is not None:  # the run keeps its own copy: what it trained on, and what loading it uses
        from envs.residual import FRONTIER_FILE

        if frontier is None:
            search_frontier(env_cfg, frontier_settings(args, env_cfg)).save(run / FRONTIER_FILE)
        else:
            import shutil

            shutil.copyfile(args.frontier, run / FRONTIER_FILE)
        residual = {"frontier": FRONTIER_FILE, "reward_mode": args.reward_mode, "source": str(args.frontier)}
    return RunPlan(run, args.algo, hp, args.seed, env_cfg, total, args.n_envs, args.vec_env, args.workers,
                   args.eval_freq, args.checkpoint_freq, args.val_prompts, args.eval_episodes, residual=residual)


def frontier_settings(args, env_cfg):
    """The frontier search's settings from the flags (``evaluation.frontier_build.FrontierSettings``)."""
    from evaluation.frontier_build import FrontierSettings
    from generator.checks import check_positive

    check_positive("--search-num-prompts", args.search_num_prompts)
    return FrontierSettings(val_source=args.val_prompts, val_prompts=args.search_num_prompts,
                            allow_drop=env_cfg.allow_drop_unconditional, cache_dir=args.cache_dir)


def search_frontier(env_cfg, settings):
    """``--frontier auto``: the static frontier searched on compare mode's validation items, sharing the grid
    cache with ``evaluate_agent.py`` (``evaluation.selector_run.obtain_frontier``)."""
    from evaluation.selector_run import obtain_frontier, run_models

    g, _, reward_fn = run_models(env_cfg)
    first = env_cfg.first_controllable(g.num_scales)
    return obtain_frontier("auto", g, reward_fn, first, settings, print)


def train_selector_run(args) -> int:
    """``--algo selector`` (``evaluation.selector_run``): frontier, fit, run directory."""
    from evaluation.selector_fit import SelectorSettings
    from evaluation.selector_run import train_selector

    env_cfg = resolve_env_config(args)
    run = unique_run_dir(args.out, args.name or f"selector_s{args.seed}")
    if args.objective == "iso-quality":
        from evaluation.selector_iso import DEFAULT_EPSILONS, LosslessSettings
        from evaluation.selector_run import train_lossless_selector

        eps = list(args.selector_epsilons or DEFAULT_EPSILONS) + ([args.epsilon] if args.epsilon is not None else [])
        settings = LosslessSettings(epsilons=tuple(sorted(set(eps))), train_source=args.train_prompts,
                                    train_prompts=args.selector_train_prompts, cache_dir=args.cache_dir)
        train_lossless_selector(run, env_cfg, settings, args.frontier, frontier_settings(args, env_cfg), sys.argv)
        return 0
    settings = SelectorSettings(budgets=(), k=args.selector_k, train_source=args.train_prompts,
                                train_prompts=args.selector_train_prompts, cache_dir=args.cache_dir)
    train_selector(run, env_cfg, settings, args.frontier, frontier_settings(args, env_cfg), list(args.selector_budgets),
                   sys.argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Check the flags, plan the run (new or --resume), build its envs and model, train, write the final files."""
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        check_workers(args.workers, args.vec_env, args.n_envs)
        if str(args.cache_dir).lower() == "none":
            args.cache_dir = None
        if args.algo == "selector":
            return train_selector_run(args)
    except ValueError as e:
        return _error(e, 2)
    import torch
    from stable_baselines3.common.utils import set_random_seed

    from envs.frontier import FrontierError

    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    try:
        plan = resume_plan(args.resume) if args.resume is not None else plan_new_run(args)
        if plan.resumed:  # the run's own settings, not the command line's
            check_workers(plan.workers, plan.vec_env, plan.n_envs)
    except (ValueError, RunError) as e:
        return _error(e, 2)
    set_random_seed(plan.seed)
    try:
        envs = build_training_envs(plan.env_cfg, val_prompts=plan.val_prompts, eval_episodes=plan.eval_episodes,
                                   n_envs=plan.n_envs, vec_env=plan.vec_env, workers=plan.workers, seed=plan.seed,
                                   normalize_obs=bool(plan.hp.get("normalize_observations", True)),
                                   residual=residual_envs_arg(plan))
    except FrontierError as e:  # the frontier does not fit this generator or budget range
        if not plan.resumed:
            import shutil

            shutil.rmtree(plan.run, ignore_errors=True)
        return _error(e, 2)
    except Exception as e:
        if not is_worker_error(e):
            raise
        return _error(e, 1)
    model = prepare_model(plan, envs, args.device, sys.argv)
    if model is None:
        return 2
    prepare_references(plan, envs, args.precompute_references)
    progress_every = args.log_interval if args.verbose or not sys.stdout.isatty() else None  # redirected: say how far
    if learn(plan, envs, model, make_callbacks(plan, envs, progress_every), progress_bar=not args.no_progress):
        return 1
    save_final_models(model, plan.run)
    summarize(plan.run, time.time() - started)
    return 0


def _error(e: BaseException, code: int) -> int:
    """Say ``e`` on stderr as the command's error; the exit status ``code``."""
    print(f"error: {e}", file=sys.stderr)
    return code


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


if __name__ == "__main__":
    sys.exit(main())
