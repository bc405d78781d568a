"""Predicted (analytic FLOPs) vs measured speed-up of pruning schedules on the embedded generator.

    python benchmarks/bench_generator.py [--repeats 15] [--batch 1 8]

Schedules are timed interleaved (round-robin), median over repeats, in one process, so the printed
ratios compare like with like on a noisy machine. Prints, per batch size: ms per image, measured
speed-up vs original, FLOPs-predicted speed-up, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from generator.embedded import load_embedded_generator
    from generator.schedules import FastVARSchedule, OriginalSchedule, RatioListSchedule, TailPatternSchedule, schedule_ratios

    g = load_embedded_generator()
    n = g.num_scales
    schedules = {"original": OriginalSchedule(), "fastvar": FastVARSchedule(), "tail": TailPatternSchedule(),
                 "prune0.5_last3": RatioListSchedule(tuple([0.0] * (n - 3) + [0.5] * 3)),
                 "skip_after_middle": RatioListSchedule(tuple([0.0] * (n // 2 + 1) + [1.0] * (n - n // 2 - 1)))}
    print(f"torch threads {torch.get_num_threads()}, scales {g.scale_widths}, repeats {args.repeats}")
    for b in args.batch:
        prompts = ["a large red solid circle in the centre on a plain gray background"] * b
        seeds = list(range(b))
        times = {k: [] for k in schedules}
        for s in schedules.values():  # warm-up
            g.generate(prompts, seeds, schedule=s)
        for _ in range(args.repeats):
            for k, s in schedules.items():
                t = time.perf_counter()
                g.generate(prompts, seeds, schedule=s)
                times[k].append(time.perf_counter() - t)
        base = statistics.median(times["original"])
        print(f"\nbatch {b}")
        print(f"{'schedule':20s} {'ms/image':>9s} {'FLOPs frac':>10s} {'measured x':>10s} {'predicted x':>11s} {'meas/pred':>9s}")
        for k, s in schedules.items():
            med = statistics.median(times[k])
            frac = g.flops_fraction(schedule_ratios(s, n))
            measured, predicted = base / med, 1.0 / frac
            print(f"{k:20s} {1000 * med / b:9.2f} {frac:10.3f} {measured:10.2f} {predicted:11.2f} {measured / predicted:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
