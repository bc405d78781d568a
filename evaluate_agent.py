"""Compare pruning schedules: Original vs FastVAR vs the seed's tail pattern vs RL agents vs the best
static schedule and a random schedule at the agent's FLOPs. Or score existing image folders.

Generate-and-compare mode (default):
    python evaluate_agent.py                                  # latest run in runs/, test prompts
    python evaluate_agent.py --run runs/ppo_s0 --run runs/ppo_fw2 --num-prompts 50 --seeds 0 1 2

Folder mode (the seed's):
    python evaluate_agent.py --orig results_orig --fast results_fast --rl results_rl [--json FILE]

Compare mode writes OUT/table.md, per_image.csv, summary.json, pareto.png and grid.png (OUT defaults
to results/eval_<run>); the Markdown table is also printed. See README "Evaluating".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from generator.weights_io import atomic_write_bytes, atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c = ap.add_argument_group("generate-and-compare mode")
    c.add_argument("--run", type=Path, action="append", default=[], help="train.py run directory (repeatable); "
                   "default: the latest run under runs/")
    c.add_argument("--runs-dir", type=Path, default=Path("runs"))
    c.add_argument("--prompts", default="test", help="prompt split or file for the comparison")
    c.add_argument("--num-prompts", type=int, default=100)
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--search-prompts", default="val", help="prompts the best static schedule is chosen on (never the "
                   "--prompts: an overlap is an error)")
    c.add_argument("--search-num-prompts", type=int, default=100)
    c.add_argument("--search-seeds", type=int, nargs="+", default=[0], help="image seeds of the search prompts")
    c.add_argument("--static-search", action=argparse.BooleanOptionalAction, default=True,
                   help="best static schedules, static frontier and oracle (--no-static-search: leave them out)")
    c.add_argument("--grid-ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75],
                   help="pruning ratios of the static grid on each controllable scale (each also with the CFG "
                        "branch dropped, plus skip)")
    c.add_argument("--refine-rounds", type=int, default=3, help="local refinement rounds after the grid (0 = grid only)")
    c.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                   help="per-prompt oracle (evaluates every fitting grid schedule on the test items; the slowest part)")
    c.add_argument("--oracle-candidates", type=int, default=32, metavar="K",
                   help="the oracle chooses, per test prompt, among the K grid schedules within each target that are "
                        "best on validation (plus the best static schedule); 0 = every grid schedule within the target")
    c.add_argument("--cache-dir", type=Path, default=Path("results") / "cache",
                   help="per-item results of static schedules, reused by reruns (keyed by generator, items, scorer)")
    c.add_argument("--budget", type=float, default=None, help="one FLOPs budget for budget-conditioned runs (fraction "
                   "of the unpruned transformer FLOPs); same as --budgets B")
    c.add_argument("--budgets", nargs="+", default=None, metavar="B",
                   help="evaluate each budget-conditioned run at each of these budgets (fractions of the unpruned "
                        "transformer FLOPs; 'fastvar' = FastVAR's, '0.8fastvar' = 0.8 x FastVAR's); every budget gets "
                        "its own best static schedule, oracle and random row. Default: fastvar 0.8fastvar 0.6fastvar")
    c.add_argument("--judge-weights", type=Path, default=None, help="DomainEval judge weights (default: the shipped file)")
    c.add_argument("--batch-size", type=int, default=100, help="images generated together (every method, the grid)")
    c.add_argument("--latency-images", type=int, default=24, help="items per method timed again alone at batch 1 "
                   "(as deployed) for the latency column (0 = none)")
    c.add_argument("--grid-prompts", type=int, default=6)
    c.add_argument("--workers", type=int, default=None, metavar="K", help="generate each method's images in K Ray "
                   "actors (each its own generator; RAY_ADDRESS points at a cluster); needs pip install -e \".[ray]\"")
    c.add_argument("--out", type=Path, default=None)
    f = ap.add_argument_group("folder mode")
    f.add_argument("--orig", type=Path, default=None, help="reference (unpruned) images")
    f.add_argument("--fast", type=Path, default=None, help="FastVAR images")
    f.add_argument("--rl", type=Path, default=None, help="RL-agent images")
    f.add_argument("--method", action="append", default=[], metavar="NAME=DIR", help="more image sets (repeatable)")
    g = ap.add_argument_group("GenEval mode (tabulate GenEval's evaluate_images.py results; see evaluation/geneval.py)")
    g.add_argument("--geneval", action="append", default=[], metavar="NAME=RESULTS.jsonl[@IMAGES_DIR]",
                   help="one per method, the first is the reference; IMAGES_DIR: the folder GenEval scored (for config.json)")
    m = ap.add_argument_group("metrics")
    m.add_argument("--json", type=Path, default=None, help="also write the summary JSON here")
    m.add_argument("--clip-model", default=None, help="open_clip model name (default: the shipped small CLIP)")
    m.add_argument("--clip-pretrained", default=None, help="tag in the local cache or checkpoint path")
    m.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    m.add_argument("--lpips-backbone", default=None, help="torchvision backbone weights file for LPIPS")
    m.add_argument("--image-reward", action="store_true", help="also score with ImageReward if installed")
    m.add_argument("--hpsv2-checkpoint", default=None, metavar="PATH", help="also score HPSv2 with this local checkpoint")
    return ap


def check_compare_args(args) -> None:
    """Counts of compare mode (ValueError naming the flag, its value and what is allowed)."""
    from generator.checks import check_non_negative, check_positive

    check_positive("--num-prompts", args.num_prompts)
    check_positive("--search-num-prompts", args.search_num_prompts)
    check_non_negative("--refine-rounds", args.refine_rounds)
    check_positive("--batch-size", args.batch_size)
    check_non_negative("--latency-images", args.latency_images)
    check_non_negative("--oracle-candidates", args.oracle_candidates)
    from evaluation.metrics import check_unique

    check_unique(f"seeds in --seeds {' '.join(map(str, args.seeds))}", args.seeds)
    check_unique(f"seeds in --search-seeds {' '.join(map(str, args.search_seeds))}", args.search_seeds)
    for r in args.grid_ratios:
        if not 0.0 <= r < 0.9:
            raise ValueError(f"--grid-ratios must be pruning ratios in [0, 0.9) (skip is always in the grid), got {r:g}")
    if len(set(args.grid_ratios)) != len(args.grid_ratios):
        raise ValueError(f"--grid-ratios lists a ratio twice: {' '.join(f'{r:g}' for r in args.grid_ratios)}")
    check_non_negative("--grid-prompts", args.grid_prompts)
    if args.workers is not None:
        check_positive("--workers", args.workers)
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError('--workers needs Ray, which is not installed: pip install -e ".[ray]"')


def parse_budget(token: str, fastvar_fraction: float) -> float:
    """``0.3`` (a fraction of the unpruned transformer FLOPs), ``fastvar`` or ``0.8fastvar`` (a multiple of
    FastVAR's fraction)."""
    t = str(token).strip().lower()
    try:
        if t.endswith("fastvar"):
            k = t[: -len("fastvar")].rstrip("x*") or "1"
            return float(k) * fastvar_fraction
        return float(t)
    except ValueError:
        raise ValueError(f"--budgets: {token!r} is not a budget (a fraction such as 0.3, 'fastvar' or a multiple "
                         f"such as '0.8fastvar')") from None


def agent_entries(runs, env_cfgs, labels, args, fastvar_fraction: float) -> list[tuple]:
    """(method name, run, env config, budget) for every agent row: a budget-conditioned run once per
    budget (``--budgets``, default FastVAR's FLOPs and 0.8x, 0.6x of them), any other run once. A budget
    outside a run's trained range is an error naming the range."""
    tokens = args.budgets if args.budgets is not None else (
        [str(args.budget)] if args.budget is not None else ["fastvar", "0.8fastvar", "0.6fastvar"])
    wanted = [parse_budget(t, fastvar_fraction) for t in tokens]
    if len({round(b, 6) for b in wanted}) != len(wanted):
        raise ValueError(f"--budgets lists a budget twice: {' '.join(tokens)}")
    rows = []
    for run, env_cfg in zip(runs, env_cfgs):
        if env_cfg.budget_range is None:
            if args.budget is not None or args.budgets is not None:
                raise ValueError(f"--budget/--budgets given but {run} is not budget-conditioned (trained without "
                                 "--budget-range)")
            rows.append((f"rl:{labels[run]}", run, env_cfg, None))
            continue
        lo, hi = env_cfg.budget_range
        for b in wanted:
            if not lo - 1e-9 <= b <= hi + 1e-9:
                raise ValueError(f"budget {b:.4f} is outside the range {run} was trained on [{lo:g}, {hi:g}]")
            rows.append((f"rl:{labels[run]}" + ("" if len(wanted) == 1 else f"@{b:.3f}"), run, env_cfg, b))
    return rows


def clip_for_agent(env_cfg, args, suite):
    """The metric suite's CLIP where it is the model *and* weights the run observes prompts with, else None
    (``load_agent_schedule`` then builds the run's own)."""
    same = (env_cfg.clip_model, env_cfg.clip_pretrained) == (args.clip_model, args.clip_pretrained)
    return suite.clip if same else None


# ---- folder mode ---------------------------------------------------------------------------------
def folder_mode(args, suite) -> int:
    from evaluation.folders import evaluate_folders, folder_report_markdown

    methods = {}
    for name, d in (("fast", args.fast), ("rl", args.rl)):
        if d is not None:
            methods[name] = d
    for spec in args.method:
        name, sep, d = spec.partition("=")
        if not sep or not name or not d:
            raise ValueError(f"--method must be NAME=DIR, got {spec!r}")
        methods[name] = d
    report = evaluate_folders(args.orig, methods, suite)
    print(folder_report_markdown(report))
    if args.json is not None:
        atomic_write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


# ---- generate-and-compare mode ---------------------------------------------------------------------
def latest_run(runs_dir: Path) -> Path:
    cands = [p.parent for p in runs_dir.glob("*/config.json") if (p.parent / "best_model.zip").is_file()]
    if not cands:
        raise FileNotFoundError(f"no finished train.py run under {runs_dir}/ (train one with `python train.py`, "
                                f"or pass --run DIR)")
    return max(cands, key=lambda p: (p / "best_model.zip").stat().st_mtime)


class Method:
    """A named way to choose ratios per image: a schedule (same for all) or a per-image factory; ``agent``:
    (run dir, budget) when the schedule is a trained run (so a Ray worker can load it on its side)."""

    def __init__(self, name: str, schedule=None, per_image=None, kind: str = "baseline", note: str = "",
                 agent: tuple | None = None) -> None:
        self.name, self._schedule, self._per_image, self.kind, self.note = name, schedule, per_image, kind, note
        self.agent = agent

    def schedule_for(self, index: int):
        return self._per_image(index) if self._per_image is not None else self._schedule


def run_method(generator, method: Method, items: list[tuple[str, int]], batch_size: int = 100,
               latency_images: int = 24, pool=None) -> tuple[list[torch.Tensor], list[dict]]:
    """Generate every (prompt, seed) in batches of ``batch_size`` (per-image decisions where the method
    has them: a trained agent, a per-prompt oracle, random schedules), locally or sharded over a Ray
    ``GenerationPool``; then time the first ``latency_images`` items again alone at batch 1 (as deployed)
    for the latency column."""
    from evaluation.generation import MethodSpec, generate_items
    from generate import run_one

    if method.agent is not None:
        spec = MethodSpec(agent_run=str(method.agent[0]), agent_budget=method.agent[1])
    elif method._per_image is not None:
        spec = MethodSpec(per_item=tuple(method.schedule_for(i) for i in range(len(items))))
    else:
        spec = MethodSpec(schedule=method._schedule)
    if pool is not None:
        images, recs = pool.generate(spec, items, batch_size)
    else:
        images, recs = generate_items(generator, spec, items, batch_size,
                                      schedule=method._schedule if method.agent else None)
    for i in range(min(latency_images, len(items))):
        sched = method.schedule_for(i)
        if hasattr(sched, "bind"):
            sched.bind(None)
        _, _, latency = run_one(generator, sched, items[i][0], items[i][1], None)
        recs[i]["latency_ms"] = 1000 * latency
    return images, recs


def _label(run: Path, runs: list[Path]) -> str:
    names = [r.name for r in runs]  # the run's folder name, with its parent where names clash
    return run.name if names.count(run.name) == 1 else f"{run.parent.name}/{run.name}"


def compare_mode(args, suite) -> int:
    from agents.schedule import load_agent_schedule, read_run_config
    from domain import load_prompts
    from envs.config import EnvConfig
    from envs.factory import make_generator
    from evaluation.report import (
        budget_table, frontier_table, image_grid, markdown_table, pareto_plot, quality_only_table, static_search_lines,
        write_csv,
    )
    from evaluation.scoreboard import (
        DomainEval, QUALITY_METRICS, build_static_baselines, check_items, paired_rows, reward_of, summarize_rows,
    )
    from evaluation.grid_evaluation import QualityScorer
    from evaluation.random_schedules import random_schedule_at
    from generator.protocol import total_flops_fraction
    from generator.schedules import (
        FastVARSchedule, OriginalSchedule, RatioListSchedule, TailPatternSchedule, schedule_ratios,
    )
    from rewards import RewardFunction

    t_start = time.time()
    runs = args.run or [latest_run(args.runs_dir)]
    if len(set(map(str, runs))) != len(runs):
        raise ValueError(f"--run lists the same run twice: {[str(r) for r in runs]}")
    labels = {r: _label(r, runs) for r in runs}
    if args.budget is not None and args.budgets is not None:
        raise ValueError("--budget and --budgets cannot be combined (--budget B is --budgets B)")
    configs = [read_run_config(r) for r in runs]
    env_cfgs = [EnvConfig.from_dict(c["env"]) for c in configs]
    keys = {(e.generator, repr(e.cfg_scale)) for e in env_cfgs}  # repr: Infinity's cfg may be a per-scale list
    if len(keys) > 1:
        raise ValueError(f"runs were trained on different generators / CFG scales {sorted(keys)}: evaluate them separately")
    firsts = {c["observation_layout"]["first_controllable_scale"] for c in configs}
    if len(firsts) > 1 and args.static_search:
        raise ValueError(f"runs control different scales (first controllable scale {sorted(firsts)}): evaluate them "
                         "separately (each gets a static baseline with the same levers)")
    first = min(firsts)  # (several only with --no-static-search)
    first_of = {r: c["observation_layout"]["first_controllable_scale"] for r, c in zip(runs, configs)}
    env0 = env_cfgs[0]
    domain_prompts = env0.generator == "tiny"  # the procedural domain: prompts must be in its grammar
    prompts = load_prompts(args.prompts)[: args.num_prompts]
    items = check_items(prompts, args.seeds, f"--prompts {args.prompts}", grammar=domain_prompts)
    search_prompts = load_prompts(args.search_prompts)[: args.search_num_prompts]
    val_items = check_items(search_prompts, args.search_seeds, f"--search-prompts {args.search_prompts}", grammar=domain_prompts)
    overlap = sorted(set(prompts) & set(search_prompts))
    if overlap and args.static_search:
        raise ValueError(f"{len(overlap)} prompt(s) are both test and search prompts (e.g. {overlap[0]!r}): the static "
                         "baseline must be chosen on prompts it is not scored on")
    generator = make_generator(env0)
    domain = DomainEval.load(args.judge_weights, enabled=domain_prompts)
    reward_fns = [RewardFunction(e.reward, clip=suite.clip if e.reward.clip_weight > 0 else None,
                                 lpips=suite.lpips if e.reward.lpips_weight > 0 else None) for e in env_cfgs]
    rfn = reward_fns[0]  # QUALITY = its quality terms (the runs share them, checked below)
    quality_keys = {tuple((k, e.reward.to_dict()[k]) for k in ("clip_weight", "ssim_weight", "lpips_weight",
                                                                "psnr_weight", "psnr_cap_db")) for e in env_cfgs}
    if len(quality_keys) > 1:
        raise ValueError(f"runs weigh the quality terms differently {sorted(quality_keys)}: evaluate them separately")
    n = generator.num_scales
    widths = tuple(generator.scale_widths)

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    pool = None
    if args.workers:
        from evaluation.generation import GenerationPool

        pool = GenerationPool(env0.to_dict(), args.workers, threads_per_worker=max(1, (os.cpu_count() or 1) // args.workers))
        log(f"{args.workers} Ray workers up")

    def generate_method(method: Method):
        return run_method(generator, method, items, args.batch_size, args.latency_images, pool)

    # ---- fixed schedules and the agents (batched; the first --latency-images items also timed alone) ----
    methods: list[Method] = [Method("original", OriginalSchedule(), note="no pruning"),
                             Method("fastvar", FastVARSchedule(), note=FastVARSchedule().describe(widths)),
                             Method("tail", TailPatternSchedule(), note=TailPatternSchedule().describe(widths))]
    results: dict[str, tuple[list, list]] = {}
    meta: dict[str, Method] = {}
    for m in methods:
        results[m.name] = generate_method(m)
        meta[m.name] = m
    log(f"original, fastvar, tail: {len(items)} images each")
    refs = torch.stack(results["original"][0])
    targets: dict[str, float] = {}
    budgets: dict[str, float | None] = {}
    fastvar_t = generator.flops_fraction(schedule_ratios(FastVARSchedule(), n))
    agents = agent_entries(runs, env_cfgs, labels, args, fastvar_t)  # (rl name, run, env config, budget)
    for rl, run, env_cfg, budget in agents:
        budgets[rl] = budget
        agent = load_agent_schedule(run, generator, clip=clip_for_agent(env_cfg, args, suite), budget=budget)
        results[rl] = generate_method(Method(rl, agent, agent=(run, budget)))
        meta[rl] = Method(rl, kind="rl", note=f"{run}" + ("" if budget is None else f", budget {budget:.3f}"))
        targets[rl] = float(np.mean([r["total_flops_fraction"] for r in results[rl][1]]))
        log(f"{rl}: {len(items)} images, mean total FLOPs fraction {targets[rl]:.4f}")
    targets["fastvar"] = total_flops_fraction(generator, schedule_ratios(FastVARSchedule(), n))

    # ---- static baselines: grid on validation, frontier, oracle on test ----
    static = None
    static_rows: dict[str, tuple[str, str]] = {}  # method name -> (kind, target label)
    if args.static_search:
        static = build_static_baselines(generator, first, targets, val_items, items, refs, rfn, domain,
                                        skip_threshold=env0.skip_threshold, refine_rounds=args.refine_rounds,
                                        oracle=args.oracle, cache_dir=args.cache_dir, grid_ratios=tuple(args.grid_ratios),
                                        batch_size=args.batch_size, oracle_candidates=args.oracle_candidates, log=log)
        log(f"static search: {static.info}")
        for label, res in static.search.items():
            suffix = "" if (len(agents) == 1 and label.startswith("rl:")) else (
                f":{label[3:]}" if label.startswith("rl:") else f"@{label}")
            name = "best_static" + suffix
            static_rows[name] = ("best_static", label)
            results[name] = generate_method(Method(name, res.schedule))
            meta[name] = Method(name, kind="best_static", note=f"{res.schedule.describe(widths)}; chosen on "
                                f"{len(val_items)} validation images by quality at total FLOPs <= "
                                f"{res.target_total_fraction:.3f} ({label})")
            if label in static.oracle:
                per_prompt = static.oracle[label]
                oname = "oracle" + suffix
                static_rows[oname] = ("oracle", label)
                results[oname] = generate_method(Method(oname, per_image=lambda i, pp=per_prompt: pp[items[i][0]]))
                meta[oname] = Method(oname, kind="oracle", note=f"UPPER BOUND: per test prompt, the grid schedule with "
                                     f"total FLOPs <= {res.target_total_fraction:.3f} that is best on that prompt's own "
                                     f"test images (by quality)")
    for rl, run, env_cfg, _ in agents:
        rng = np.random.default_rng(0)
        target_t = float(np.mean([r["flops_fraction"] for r in results[rl][1]]))
        rand = [RatioListSchedule(tuple(random_schedule_at(generator, target_t, first_of[run], rng, env_cfg.skip_threshold)))
                for _ in items]
        name = "random" + ("" if len(agents) == 1 else f":{rl[3:]}")
        results[name] = generate_method(Method(name, per_image=lambda i, rand=rand: rand[i]))
        meta[name] = Method(name, kind="random", note=f"uniform random ratios per image at {rl}'s transformer FLOPs")
    log("all methods generated")

    # ---- per-image metrics ----
    quality = QualityScorer(rfn, refs, [p for p, _ in items])
    item_prompts = [p for p, _ in items]
    rows: list[dict] = []
    per_method: dict[str, list[dict]] = {}
    for name, (imgs, recs) in results.items():
        x = torch.stack(imgs)
        scores = suite.score(x, item_prompts, refs)
        # QUALITY from the suite's own SSIM / PSNR / CLIP (/ LPIPS) values: the same functions and models
        # as the reward's, so the images are not scored twice
        q = quality.quality_of({m: [sc[m] for sc in scores] for m in ("ssim", "psnr", "clip_score", "lpips")
                                if m in scores[0]}, slice(0, len(items)))
        dom = domain(x, item_prompts) if domain.available else {}
        budget = budgets.get(name)
        mrows = []
        for k, ((p, s), rec, sc) in enumerate(zip(items, recs, scores)):
            row = {"method": name, "prompt": p, "seed": s, **{m: float(v[k]) for m, v in dom.items()}, **sc,
                   **{k2: v for k2, v in rec.items() if k2 not in ("ratios", "dropped_cfg")}, "quality": float(q[k]),
                   "reward": reward_of(rfn.config, float(q[k]), rec["flops_fraction"], budget),
                   "ratios": " ".join(f"{r:g}" + ("d" if d else "") for r, d in zip(rec["ratios"], rec["dropped_cfg"]))}
            mrows.append(row)
        rows += mrows
        per_method[name] = mrows
    summary = {"runs": [str(r) for r in runs], "prompts": args.prompts, "num_prompts": len(prompts), "seeds": args.seeds,
               "num_images": len(items), "latency_images": min(args.latency_images, len(items)), "search_prompts": args.search_prompts, "search_items": len(val_items),
               "unavailable": suite.unavailable(), "flops_full": generator.flops_full(),
               "decode_flops": generator.decode_flops(), "text_flops": generator.text_flops(),
               "domain_eval": "available" if domain.available else domain.why,
               "statistics": "mean over the seeds of each prompt, then a t interval (95%) / one-sample t test and "
                             "Wilcoxon signed-rank over the prompt means; n = prompts",
               "flops_note": "flops_fraction = transformer FLOPs / unpruned transformer FLOPs (what the env's reward "
                             "counts); total_flops_fraction adds the VQ decoder and the text encoder (the image's "
                             "whole compute) to both",
               "quality_note": "quality = the reward's quality terms only (CLIP-score change, 1 - SSIM, LPIPS, PSNR "
                               "with the run's weights): no FLOPs bonus, no budget penalty; reward = the run's "
                               "episode reward (FLOPs bonus + quality - budget penalty), shown for reference",
               "methods": {}, "paired": {}, "static_search": {}, "static_frontier": [],
               "grid": {} if static is None else static.info}
    for name, mrows in per_method.items():
        m = meta[name]
        summary["methods"][name] = {"kind": m.kind, "note": m.note, "upper_bound": m.kind == "oracle",
                                    "metrics": summarize_rows(mrows)}
        if name == "original" and "psnr" in summary["methods"][name]["metrics"]:
            summary["methods"][name]["metrics"]["psnr"].update(mean=float("inf"), ci95=float("nan"))
    if static is not None:
        for label, res in static.search.items():
            summary["static_search"][label] = res.to_dict(widths)
        for label, pp in static.oracle.items():
            summary["static_search"][label]["oracle_schedules_used"] = len(set(pp.values()))
        for name, (kind, label) in static_rows.items():  # the evidence next to the row it supports
            res = static.search[label]
            if kind == "best_static":
                summary["methods"][name]["search"] = summary["static_search"][label]
            else:
                summary["methods"][name]["oracle"] = {
                    "target_total_fraction": res.target_total_fraction, "chosen_on": "each test prompt's own test images",
                    "candidates": static.info["oracle_candidates"][label],
                    "distinct_schedules_used": len(set(static.oracle[label].values())), "upper_bound": True}
        for s, tot, vq in static.frontier:
            t = static.test_results.get(s)
            tf = generator.flops_fraction(list(s.ratios), s.unconditional_flags(
                [bool(generator.uses_unconditional(k)) for k in range(n)]))
            entry = {"schedule": s.describe(widths), "transformer_fraction": tf, "total_fraction": tot, "val_quality": vq}
            if t is not None:
                entry["test"] = summarize_rows([{"prompt": p, "seed": sd, **{m: float(v[i]) for m, v in t.items()}}
                                                for i, (p, sd) in enumerate(items)], QUALITY_METRICS + tuple(
                                                   k for k in t if k.startswith("domain_")))
            summary["static_frontier"].append(entry)
    summary["budgets"] = []
    for rl, run, _, budget in agents:
        suffix = "" if len(agents) == 1 else f":{rl[3:]}"
        summary["budgets"].append({"agent": rl, "run": str(run), "budget": budget,
                                   "best_static": "best_static" + suffix, "oracle": "oracle" + suffix,
                                   "random": "random" + suffix})
        for other in ("fastvar", "best_static" + suffix, "best_static@fastvar", "oracle" + suffix):
            if other in per_method:
                summary["paired"][f"{rl} vs {other}"] = paired_rows(per_method[rl], per_method[other], PAIRED_METRICS)
    for i, (rl_a, run_a, _, b_a) in enumerate(agents):  # ablations: runs at the same budget, paired
        for rl_b, run_b, _, b_b in agents[i + 1:]:
            if run_a != run_b and b_a == b_b:
                summary["paired"][f"{rl_a} vs {rl_b}"] = paired_rows(per_method[rl_a], per_method[rl_b], PAIRED_METRICS)
    for other in ("best_static@fastvar", "oracle@fastvar"):
        if other in per_method:
            summary["paired"][f"{other} vs fastvar"] = paired_rows(per_method[other], per_method["fastvar"], PAIRED_METRICS)
    summary["generation"] = {"batch_size": args.batch_size, "workers": args.workers,
                             "latency_note": "latency_ms per image: batch 1 as deployed" if args.batch_size == 1 and not args.workers
                             else f"latency_ms per image: the wall clock of a batch of {args.batch_size} divided by its size"
                             + (f", measured inside each of {args.workers} Ray workers" if args.workers else "")}
    if pool is not None:
        pool.close()
    summary["wall_clock_s"] = round(time.time() - t_start, 1)

    out = args.out or Path("results") / ("eval_" + "+".join(r.name for r in runs))
    out.mkdir(parents=True, exist_ok=True)
    table = "\n\n".join(x for x in [markdown_table(summary), quality_only_table(summary), budget_table(summary),
                                     static_search_lines(summary), frontier_table(summary)] if x)
    print(table)
    atomic_write_bytes(out / "table.md", (table + "\n").encode())
    write_csv(rows, out / "per_image.csv")
    atomic_write_json(out / "summary.json", summary)
    if args.json is not None:
        atomic_write_json(args.json, summary)
    pareto_plot(summary, out / "pareto.png")
    g = args.grid_prompts
    grid_idx = [i for i, (_, s) in enumerate(items) if s == args.seeds[0]][:g]
    image_grid({k: [v[0][i] for i in grid_idx] for k, v in results.items()}, [items[i][0] for i in grid_idx], out / "grid.png")
    print(f"\nwrote {out}/table.md, per_image.csv, summary.json, pareto.png, grid.png ({summary['wall_clock_s']} s)")
    return 0


PAIRED_METRICS = ("domain_attribute", "domain_scene", "ssim", "clip_score", "lpips", "psnr", "quality", "reward",
                  "flops_fraction", "total_flops_fraction")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agents.schedule import RunError
    from evaluation.metrics import MetricSuite
    from generator.weights_io import WeightsError
    from rewards import ClipWeightsUnavailable, LpipsUnavailable
    from evaluation.geneval import run_geneval_mode

    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = any(x is not None for x in (args.orig, args.fast, args.rl)) or bool(args.method)
    try:
        check_compare_args(args)
        if folder and args.orig is None:
            raise ValueError("folder mode needs --orig DIR (the unpruned reference images)")
        if folder and args.run:
            raise ValueError("--run (compare mode) and --orig/--fast/--rl (folder mode) cannot be combined")
        if args.geneval:
            return run_geneval_mode(args, other_modes=folder or bool(args.run))
        suite = MetricSuite.build(args.clip_model, args.clip_pretrained, args.lpips_net, args.lpips_backbone, args.image_reward,
                                  args.hpsv2_checkpoint)
        if args.image_reward and suite.image_reward is None:
            print(f"note: ImageReward {suite.image_reward_why}; continuing without it", file=sys.stderr)
        return folder_mode(args, suite) if folder else compare_mode(args, suite)
    except (ValueError, FileNotFoundError, RunError, WeightsError, ClipWeightsUnavailable, LpipsUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if type(e).__name__ != "WorkerError":
            raise
        print(f"error: {e}", file=sys.stderr)  # a Ray worker died: nothing was written, rerun the evaluation
        return 1


if __name__ == "__main__":
    sys.exit(main())
