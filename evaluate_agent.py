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
    c.add_argument("--search-prompts", default="val", help="prompts the best static schedule is searched on")
    c.add_argument("--search-num-prompts", type=int, default=24)
    c.add_argument("--search-evals", type=int, default=100, help="CMA-ES evaluations for the best static schedule (0 = skip)")
    c.add_argument("--grid-prompts", type=int, default=6)
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
    check_non_negative("--search-evals", args.search_evals)
    check_non_negative("--grid-prompts", args.grid_prompts)


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
    """A named way to choose ratios per image: a schedule (same for all) or a per-image factory."""

    def __init__(self, name: str, schedule=None, per_image=None) -> None:
        self.name, self._schedule, self._per_image = name, schedule, per_image

    def schedule_for(self, index: int):
        return self._per_image(index) if self._per_image is not None else self._schedule


def run_method(generator, method: Method, items: list[tuple[str, int]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Generate every (prompt, seed) at batch 1 (as deployed), timing each image."""
    from generate import run_one

    images, recs = [], []
    for i, (p, s) in enumerate(items):
        sched = method.schedule_for(i)
        if hasattr(sched, "bind"):
            sched.bind(None)
        img, state, latency = run_one(generator, sched, p, s, None)
        images.append(img)
        recs.append({"ratios": [r.ratio for r in state.reports], "flops": state.flops_used,
                     "flops_fraction": state.flops_used / generator.flops_full(), "latency_ms": 1000 * latency})
    return images, recs


def compare_mode(args, suite) -> int:
    from agents.schedule import load_agent_schedule, read_run_config
    from envs.config import EnvConfig
    from evaluation.metrics import HIGHER_IS_BETTER, mean_ci, paired
    from evaluation.report import image_grid, markdown_table, pareto_plot, write_csv
    from evaluation.static_search import StaticScheduleSearch, random_schedule_at
    from domain import load_prompts
    from generator.schedules import FastVARSchedule, OriginalSchedule, RatioListSchedule, TailPatternSchedule
    from rewards import RewardFunction

    runs = args.run or [latest_run(args.runs_dir)]
    if len(set(map(str, runs))) != len(runs):
        raise ValueError(f"--run lists the same run twice: {[str(r) for r in runs]}")
    names = [r.name for r in runs]  # method labels: the run's folder name, with its parent where names clash
    labels = {r: (r.name if names.count(r.name) == 1 else f"{r.parent.name}/{r.name}") for r in runs}
    configs = [read_run_config(r) for r in runs]
    env_cfgs = [EnvConfig.from_dict(c["env"]) for c in configs]
    keys = {(e.generator, repr(e.cfg_scale)) for e in env_cfgs}  # repr: Infinity's cfg may be a per-scale list
    if len(keys) > 1:
        raise ValueError(f"runs were trained on different generators / CFG scales {sorted(keys)}: evaluate them separately")
    env0 = env_cfgs[0]
    from envs.factory import make_generator

    generator = make_generator(env0)
    reward_fns = [RewardFunction(e.reward, clip=suite.clip if e.reward.clip_weight > 0 else None,
                                 lpips=suite.lpips if e.reward.lpips_weight > 0 else None) for e in env_cfgs]
    prompts = load_prompts(args.prompts)[: args.num_prompts]
    items = [(p, s) for p in prompts for s in args.seeds]
    n = generator.num_scales
    t_start = time.time()

    methods = [Method("original", OriginalSchedule()), Method("fastvar", FastVARSchedule()), Method("tail", TailPatternSchedule())]
    results: dict[str, tuple[list, list]] = {}
    for m in methods:
        results[m.name] = run_method(generator, m, items)
    refs = torch.stack(results["original"][0])
    search_prompts = load_prompts(args.search_prompts)[: args.search_num_prompts]
    searches = {}
    for run, cfg, env_cfg, rfn in zip(runs, configs, env_cfgs, reward_fns):
        tag = labels[run] if len(runs) > 1 else ""
        rl_name = f"rl:{labels[run]}"
        agent = load_agent_schedule(run, generator, clip=clip_for_agent(env_cfg, args, suite))
        results[rl_name] = run_method(generator, Method(rl_name, agent), items)
        target = float(np.mean([r["flops_fraction"] for r in results[rl_name][1]]))
        first = cfg["observation_layout"]["first_controllable_scale"]
        if args.search_evals > 0:
            search = StaticScheduleSearch(generator, search_prompts, [0], rfn)
            fv = FastVARSchedule()
            x0 = [min(fv.ratio(k, n), 0.95) for k in range(first, n)]
            res = search.search(target, first, env_cfg.skip_threshold, evaluations=args.search_evals, x0=x0)
            searches[labels[run]] = {"ratios": res.ratios, "flops_fraction": res.flops_fraction,
                                  "val_mean_quality": res.mean_quality, "evaluations": res.evaluations, "target": target}
            name = "best_static" + (f":{tag}" if tag else "")
            results[name] = run_method(generator, Method(name, RatioListSchedule(tuple(res.ratios))), items)
        rng = np.random.default_rng(0)
        rand = [RatioListSchedule(tuple(random_schedule_at(generator, target, first, rng, env_cfg.skip_threshold)))
                for _ in items]
        name = "random" + (f":{tag}" if tag else "")
        results[name] = run_method(generator, Method(name, per_image=lambda i, rand=rand: rand[i]), items)

    # per-image metrics
    rfn = reward_fns[0]
    ref_clip = suite.clip.score(refs, [p for p, _ in items]).tolist()
    rows: list[dict] = []
    per_method: dict[str, list[dict]] = {}
    for name, (imgs, recs) in results.items():
        scores = suite.score(torch.stack(imgs), [p for p, _ in items], refs)
        method_rows = []
        for k, ((p, s), rec, sc) in enumerate(zip(items, recs, scores)):
            saved = 1.0 - rec["flops_fraction"]
            term, _ = rfn.terminal(imgs[k][None], refs[k:k + 1], p, rec["flops_fraction"],
                                   reference_clip=ref_clip[k] if rfn.clip is not None else None)
            row = {"method": name, "prompt": p, "seed": s, **sc, **{k2: v for k2, v in rec.items() if k2 != "ratios"},
                   "reward": rfn.config.flops_weight * saved + term, "ratios": " ".join(f"{r:g}" for r in rec["ratios"])}
            method_rows.append(row)
        rows += method_rows
        per_method[name] = method_rows
    metrics = ("flops_fraction", "flops", "latency_ms", "psnr", "ssim", "lpips", "clip_score", "image_reward", "reward")
    summary = {"runs": [str(r) for r in runs], "prompts": args.prompts, "num_prompts": len(prompts), "seeds": args.seeds,
               "num_images": len(items), "unavailable": suite.unavailable(), "static_search": searches,
               "flops_full": generator.flops_full(), "methods": {}, "paired": {}}
    for name, mrows in per_method.items():
        agg = {}
        for metric in metrics:
            vals = [r[metric] for r in mrows if metric in r]
            if vals:
                mean, half, cnt = mean_ci(vals)
                if name == "original" and metric == "psnr":
                    mean, half, cnt = float("inf"), float("nan"), len(vals)
                agg[metric] = {"mean": mean, "ci95": half, "n": cnt}
        summary["methods"][name] = {"metrics": agg}
    for run in runs:
        rl = f"rl:{labels[run]}"
        tag = f":{labels[run]}" if len(runs) > 1 else ""
        for other in ("fastvar", f"best_static{tag}"):
            if other not in per_method:
                continue
            comp = {}
            for metric in ("ssim", "clip_score", "lpips", "reward", "flops_fraction"):
                a = [r.get(metric) for r in per_method[rl]]
                b = [r.get(metric) for r in per_method[other]]
                if any(x is not None for x in a):
                    sign = 1 if HIGHER_IS_BETTER[metric] else -1
                    c = paired([None if x is None else sign * x for x in a], [None if x is None else sign * x for x in b])
                    c["mean_diff"] *= sign  # report the raw difference; wins count "better" by the metric's direction
                    comp[metric] = c
            summary["paired"][f"{rl} vs {other}"] = comp
    summary["wall_clock_s"] = round(time.time() - t_start, 1)

    out = args.out or Path("results") / ("eval_" + "+".join(r.name for r in runs))
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summary)
    print(table)
    if searches:
        for rn, s in searches.items():
            print(f"- best static for {rn} (CMA-ES, {s['evaluations']} evals on {len(search_prompts)} {args.search_prompts} "
                  f"prompts, FLOPs <= {s['target']:.3f}): ratios {s['ratios']}")
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


if __name__ == "__main__":
    sys.exit(main())
