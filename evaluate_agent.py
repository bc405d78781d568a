"""Compare pruning schedules: Original vs FastVAR vs the seed's tail pattern vs RL agents vs the best
static schedule and a random schedule at the agent's FLOPs. Or score existing image folders.

Generate-and-compare mode (default):
    python evaluate_agent.py                                  # every run in runs/, test prompts
    python evaluate_agent.py --run runs/ppo_s0 --run runs/ppo_fw2 --num-prompts 50 --seeds 0 1 2

Folder mode (the seed's):
    python evaluate_agent.py --orig results_orig --fast results_fast --rl results_rl [--json FILE]

Compare mode writes OUT/table.md, per_image.csv, summary.json, pareto.png and grid.png (OUT defaults
to results/eval_<run>); the Markdown table is also printed. See README "Evaluating". Every argument is
checked before the first image (evaluation/compare_plan.py); the stages are in evaluation/compare.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from evaluation.compare_plan import (
    CompareRequest, GenerationSettings, ItemRequest, StaticSearchSettings, check_request, resolve_plan,
)
from generator.weights_io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c = ap.add_argument_group("generate-and-compare mode")
    c.add_argument("--run", type=Path, action="append", default=[], help="train.py run directory (repeatable); "
                   "default: every finished run under --runs-dir, side by side (they must share the generator, "
                   "its CFG and the quality weights)")
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
                   help="the three oracles: in-sample and cross-validated per prompt, and per image (evaluates the "
                        "candidate grid schedules on the test items; the slowest part)")
    c.add_argument("--oracle-candidates", type=int, default=32, metavar="K",
                   help="the oracles choose among the K grid schedules within each target that are "
                        "best on validation (plus the best static schedule); 0 = every grid schedule within the target")
    c.add_argument("--cache-dir", type=Path, default=Path("results") / "cache",
                   help="per-item results of static schedules, reused by reruns (keyed by generator, items, scorer)")
    c.add_argument("--budget", type=float, default=None, help="one FLOPs budget for budget-conditioned runs (fraction "
                   "of the unpruned transformer FLOPs); same as --budgets B")
    c.add_argument("--budgets", nargs="+", default=None, metavar="B",
                   help="evaluate each budget-conditioned run at each of these budgets (fractions of the unpruned "
                        "transformer FLOPs; 'fastvar' = FastVAR's, '0.8fastvar' = 0.8 x FastVAR's); every budget gets "
                        "its own best static schedule, oracle and random row. A budget in (0, 1] outside a run's trained "
                        "range makes that run's agent row n/a there (no images; the other rows at the budget itself). "
                        "Default: fastvar 0.8fastvar 0.6fastvar")
    c.add_argument("--judge-weights", type=Path, default=None, help="DomainEval judge weights (default: the shipped file)")
    c.add_argument("--batch-size", type=int, default=100, help="images generated together (every method, the grid)")
    c.add_argument("--latency-images", type=int, default=24, help="items per method timed again alone at batch 1 "
                   "(as deployed) for the latency column (0 = none)")
    c.add_argument("--grid-prompts", type=int, default=6)
    c.add_argument("--workers", type=int, default=None, metavar="K", help="generate each method's images in K Ray "
                   "actors (each its own generator; RAY_ADDRESS points at a cluster); needs pip install -e \".[ray]\"")
    c.add_argument("--iso-quality", default="auto", choices=("auto", "on", "off"),
                   help="the lossless rows: every method's largest FLOPs saving at DomainEval attribute within 0.01 / "
                        "0.02 of Original (python -m evaluation.iso_quality on the same runs, validation = the search "
                        "items, test = the test items; OUT/iso/, and its table appended to table.md). auto: on when a "
                        "compared run is lossless (--objective iso-quality)")
    c.add_argument("--out", type=Path, default=None)
    f = ap.add_argument_group("folder mode")
    f.add_argument("--orig", type=Path, default=None, help="reference (unpruned) images")
    f.add_argument("--fast", type=Path, default=None, help="FastVAR images")
    f.add_argument("--rl", type=Path, default=None, help="RL-agent images")
    f.add_argument("--method", action="append", default=[], metavar="NAME=DIR", help="more image sets (repeatable)")
    g = ap.add_argument_group("GenEval mode (tabulate GenEval's evaluate_images.py results; see evaluation/geneval_table.py)")
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


def compare_request(args: argparse.Namespace) -> CompareRequest:
    """Compare mode's flags as typed values (unchecked: ``resolve_plan`` checks them)."""
    return CompareRequest(
        runs=tuple(args.run), runs_dir=args.runs_dir,
        test=ItemRequest(args.prompts, args.num_prompts, tuple(args.seeds)),
        search=ItemRequest(args.search_prompts, args.search_num_prompts, tuple(args.search_seeds),
                           flag="--search-prompts", seeds_flag="--search-seeds"),
        static=StaticSearchSettings(args.static_search, tuple(args.grid_ratios), args.refine_rounds, args.oracle,
                                    args.oracle_candidates, args.cache_dir),
        generation=GenerationSettings(args.batch_size, args.latency_images, args.workers),
        budget=args.budget, budgets=None if args.budgets is None else tuple(args.budgets),
        judge_weights=args.judge_weights, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
        out=args.out, json=args.json, grid_prompts=args.grid_prompts)


# ---- the lossless rows ---------------------------------------------------------------------------
def wants_iso_quality(mode: str, runs) -> bool:
    """--iso-quality: on, off, or auto (on when a run was trained with --objective iso-quality)."""
    return mode == "on" or (mode == "auto" and any(r.env.reward.objective == "iso-quality" for r in runs))


def lossless_rows(args: argparse.Namespace, plan, summary: dict) -> None:
    """The iso-quality summary of the compared runs on compare mode's items (``evaluation.iso_quality``):
    OUT/iso/{iso.json, iso.md, iso.png}, its headline table appended to OUT/table.md, and its operating
    points in OUT/summary.json under "iso_quality"."""
    from evaluation.iso_families import IsoSettings
    from evaluation.iso_quality import run_iso_quality
    from evaluation.iso_quality_report import headline_table, write_iso_report
    from generator.weights_io import atomic_write_bytes, atomic_write_json

    settings = IsoSettings(val_source=args.search_prompts, val_prompts=args.search_num_prompts,
                           val_seeds=tuple(args.search_seeds), test_source=args.prompts, test_prompts=args.num_prompts,
                           test_seeds=tuple(args.seeds), batch_size=args.batch_size, cache_dir=args.cache_dir)
    iso = run_iso_quality(settings, tuple(r.path for r in plan.runs), None, args.judge_weights,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    write_iso_report(iso, plan.out / "iso")
    table = plan.out / "table.md"
    atomic_write_bytes(table, (table.read_text() + "\n\n### Lossless rows (largest FLOPs saving at DomainEval attribute "
                      "within a tolerance of Original's; details in iso/iso.md)\n\n" + headline_table(iso) + "\n").encode())
    summary["iso_quality"] = {name: fam["operating_points"] for name, fam in iso["families"].items()}
    atomic_write_json(plan.out / "summary.json", summary)
    if args.json is not None:
        atomic_write_json(args.json, summary)
    print(f"lossless rows: {plan.out / 'iso' / 'iso.md'}")


# ---- folder mode ---------------------------------------------------------------------------------
def folder_mode(args: argparse.Namespace, suite) -> int:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agents.schedule import RunError
    from evaluation.compare import ProgressLog, run_comparison
    from evaluation.geneval_table import run_geneval_mode
    from evaluation.metrics import MetricSuite
    from generator.weights_io import WeightsError
    from rewards import ClipWeightsUnavailable, LpipsUnavailable

    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = any(x is not None for x in (args.orig, args.fast, args.rl)) or bool(args.method)
    try:
        request = compare_request(args)
        check_request(request)
        if folder and args.orig is None:
            raise ValueError("folder mode needs --orig DIR (the unpruned reference images)")
        if folder and args.run:
            raise ValueError("--run (compare mode) and --orig/--fast/--rl (folder mode) cannot be combined")
        if args.geneval:
            return run_geneval_mode(args, other_modes=folder or bool(args.run))
        plan = None if folder else resolve_plan(request)  # every compare-mode argument, before any model or image
        suite = MetricSuite.build(args.clip_model, args.clip_pretrained, args.lpips_net, args.lpips_backbone, args.image_reward,
                                  args.hpsv2_checkpoint)
        if args.image_reward and suite.image_reward is None:
            print(f"note: ImageReward {suite.image_reward_why}; continuing without it", file=sys.stderr)
        if folder:
            return folder_mode(args, suite)
        summary = run_comparison(plan, suite, ProgressLog())
        if wants_iso_quality(args.iso_quality, plan.runs):
            lossless_rows(args, plan, summary)
        return 0
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
