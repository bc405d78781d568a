"""A trained agent's own cost: its wall clock per image against the static schedule it ends up running.

    python benchmarks/bench_agent_overhead.py --run runs/selector_s0 --run runs/ppo-residual_s0 --budget 0.347

For each of --prompts test prompts (batch 1, seed 0) the agent generates the image once untimed; the
schedule it ran (each scale's ratio and CFG flag, read from the state's reports) becomes a static
schedule with exactly the same FLOPs. Then the agent and that static schedule are timed interleaved
(round-robin, --repeats rounds) and the ratio of the medians is printed: what the agent's observation
and policy cost on top of the same generation. Target (#25): <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def ran_schedule(g, state):
    """The static schedule a one-image state ran: its ratios and dropped-CFG flags, as compare mode
    records them (``evaluation.scoreboard.state_record``)."""
    from evaluation.scoreboard import state_record
    from generator.schedules import StaticSchedule

    rec = state_record(g, state, None)
    return StaticSchedule(tuple(rec["ratios"]), tuple(rec["dropped_cfg"]))


def timed(g, schedule, prompt: str) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        g.generate([prompt], [0], schedule=schedule)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", required=True)
    ap.add_argument("--budget", type=float, required=True)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from agents.schedule import load_agent_schedule
    from domain import load_prompts
    from envs.config import EnvConfig
    from envs.factory import make_generator

    g = make_generator(EnvConfig())
    prompts = load_prompts("test")[:args.prompts]
    print(f"torch threads {torch.get_num_threads()}, {len(prompts)} test prompts, batch 1, repeats {args.repeats}")
    for run in args.run:
        agent = load_agent_schedule(run, g, budget=args.budget)
        pairs = []
        for p in prompts:
            with torch.no_grad():
                img, st = g.generate([p], [0], schedule=agent)
                static = ran_schedule(g, st)
                ref, st_ref = g.generate([p], [0], schedule=static)
            if not torch.equal(img, ref) or st.flops_used_per_image != st_ref.flops_used_per_image:
                raise SystemExit(f"{run}: the schedule read back from the reports does not reproduce the agent's image")
            pairs.append((p, static))
        t_agent, t_static = [], []
        for _ in range(args.repeats):
            t_agent.append(sum(timed(g, agent, p) for p, _ in pairs))
            t_static.append(sum(timed(g, s, p) for p, s in pairs))
        a, s = statistics.median(t_agent) / len(pairs), statistics.median(t_static) / len(pairs)
        print(f"{run}: agent {a * 1e3:.1f} ms/image, the static schedules it ran {s * 1e3:.1f} ms/image, "
              f"ratio {a / s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
