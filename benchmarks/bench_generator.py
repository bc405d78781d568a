"""Predicted (analytic FLOPs) vs measured speed-up of pruning schedules on the embedded generator.

    python benchmarks/bench_generator.py [--repeats 15] [--batch 1 8]
    python benchmarks/bench_generator.py --scales 1,2,3,4,5,6,8,10,13,16 --channel-mult 1,4,8 --batch 1

With --scales / --channel-mult it times a randomly initialised model of that shape instead of the
shipped one (timing only: the images are meaningless, the compute is the same).

Schedules are timed interleaved (round-robin), median over repeats, in one process, so the printed
ratios compare like with like on a noisy machine. Prints, per batch size: ms per image, measured
speed-up vs original, FLOPs-predicted speed-up, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from embedded.cli import add_model_shape_args, model_shape_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_model_shape_args(ap)
    args = ap.parse_args(argv)
    shape = model_shape_config(ap, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from embedded.loaders import load_embedded_generator, random_generator
    from embedded.model_card import heavy_skip_ratios
    from generator.schedules import FastVARSchedule, OriginalSchedule, RatioListSchedule, TailPatternSchedule, schedule_ratios

    if shape is None:
        g = load_embedded_generator()
    else:
        g = random_generator(0, shape)
        print("random weights of the requested shape: timings only")
    n = g.num_scales
    schedules = {"original": OriginalSchedule(), "fastvar": FastVARSchedule(), "tail": TailPatternSchedule(),
                 "prune0.5_last3": RatioListSchedule(tuple([0.0] * (n - 3) + [0.5] * 3)),
                 "skip_after_middle": RatioListSchedule(tuple(heavy_skip_ratios(n)))}
    print(f"torch threads {torch.get_num_threads()}, scales {g.scale_widths}, repeats {args.repeats}")
    for b in args.batch:
        prompts = ["a large red solid circle in the centre on a plain gray background"] * b
        seeds = list(range(b))
        steps_t = {k: [] for k in schedules}
        total_t = {k: [] for k in schedules}

        def run(s):
            t0 = time.perf_counter()
            with torch.no_grad():
                st = g.start(prompts, seeds)
                while not st.finished:
                    g.step(st, s.ratio(st.scale_index, n, st))
                t1 = time.perf_counter()
                g.decode(st)
            return t1 - t0, time.perf_counter() - t0

        for s in schedules.values():  # warm-up
            run(s)
        for _ in range(args.repeats):
            for k, s in schedules.items():
                a, b_ = run(s)
                steps_t[k].append(a)
                total_t[k].append(b_)
        base_s, base_t = statistics.median(steps_t["original"]), statistics.median(total_t["original"])
        print(f"\nbatch {b}   (transformer = start + all scale steps incl. sampling; total = + VQ decode)")
        print(f"{'schedule':18s} {'FLOPs frac':>10s} {'predicted x':>11s} {'transf. ms/img':>14s} {'transf. x':>9s} "
              f"{'meas/pred':>9s} {'total ms/img':>12s} {'total x':>7s}")
        for k, s in schedules.items():
            ms, mt = statistics.median(steps_t[k]), statistics.median(total_t[k])
            frac = g.flops_fraction(schedule_ratios(s, n))
            predicted = 1.0 / frac
            print(f"{k:18s} {frac:10.3f} {predicted:11.2f} {1000 * ms / b:14.2f} {base_s / ms:9.2f} "
                  f"{base_s / ms / predicted:9.2f} {1000 * mt / b:12.2f} {base_t / mt:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
