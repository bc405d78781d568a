"""``python -m judge``: the DomainEval run (``judge.domaineval``) from the command line, printed and
optionally written as JSON. Bad flags exit 2 naming the flag, the bad value and what is allowed; missing
or corrupt judge weights exit 2 naming the file and the script that makes it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


import judge as judge_package
from generator.weights_io import WeightsError, jsonable, read_metadata
from judge.domaineval import format_report, run_domaineval
from judge.model import JUDGE_WEIGHTS, DomainJudge


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (its help is the package docstring: what DomainEval checks and reports)."""
    ap = argparse.ArgumentParser(prog="python -m judge", description=judge_package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    ap.add_argument("--num-prompts", type=int, default=100, help="the first N test prompts (1..100)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="image seeds per prompt (distinct)")
    ap.add_argument("--num-renders", type=int, default=2000, help="held-out random renders to measure the judge on")
    ap.add_argument("--num-reconstructions", type=int, default=400,
                    help="held-out renders whose tokenizer reconstructions the judge is measured on (0 = skip)")
    ap.add_argument("--erasure-renders", type=int, default=100,
                    help="of those, how many get the erasure analysis (which checks the reconstruction still holds, "
                         "measured without the judge: ~45 counterfactual reconstructions each; 0 = skip it)")
    ap.add_argument("--failures-png", type=Path, default=None,
                    help="also write a grid of the reconstructions the judge misreads, beside their renders")
    ap.add_argument("--small-failures-png", type=Path, default=None,
                    help="also write a grid of the reconstructions where the judge misreads a small object (one 8x8 "
                         "token) that it reads right on the render: to check by eye whether the attribute survived")
    ap.add_argument("--weights", type=Path, default=JUDGE_WEIGHTS)
    ap.add_argument("--batch-size", type=int, default=50, help="images generated per batch")
    return ap


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (``ap.error``) on a flag value outside what is allowed, naming it."""
    from domain import load_prompts

    n_test = len(load_prompts("test"))
    if not 1 <= args.num_prompts <= n_test:
        ap.error(f"--num-prompts must be in 1..{n_test}, got {args.num_prompts}")
    dup = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if dup:
        ap.error(f"--seeds has duplicates {dup}: each (prompt, seed) image must count once")
    if args.num_renders < 2:
        ap.error(f"--num-renders must be >= 2, got {args.num_renders}")
    if args.num_reconstructions < 0:
        ap.error(f"--num-reconstructions must be >= 0, got {args.num_reconstructions}")
    if args.erasure_renders < 0:
        ap.error(f"--erasure-renders must be >= 0, got {args.erasure_renders}")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")


def main(argv: list[str] | None = None) -> int:
    """Run DomainEval with the flags in ``argv`` (default: the command line); returns the exit status."""
    ap = build_parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
    t0 = time.time()
    try:
        judge = DomainJudge.load(args.weights)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_domaineval(judge, args.num_prompts, args.seeds, args.num_renders, args.batch_size,
                            num_reconstructions=args.num_reconstructions, failures_png=args.failures_png,
                            erasure_renders=args.erasure_renders, small_failures_png=args.small_failures_png)
    result["judge_weights"] = str(args.weights)
    result["judge_training"] = {k: v for k, v in read_metadata(args.weights).items() if k != "judge_config"}
    result["wall_seconds"] = round(time.time() - t0, 1)
    print(format_report(result))
    print(f"wall time {result['wall_seconds']:.1f}s")
    if args.json is not None:
        from generator.weights_io import atomic_write_json

        atomic_write_json(args.json, jsonable(result))
        print(f"wrote {args.json}")
    return 0


