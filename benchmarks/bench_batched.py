"""Wall clock per image of per-image (agent-like, mixed) schedules in one batch vs FastVAR's schedule, and
the two ways of running mixed kept counts (pad vs group), all measured in one process.

    python benchmarks/bench_batched.py [--batch 16] [--repeats 15]
    python benchmarks/bench_batched.py --agent runs/ppo_s0      # a trained agent's own per-image decisions

Mixed schedules ("agent-like", default): per image, each controllable scale (the last four) is pruned at
a ratio drawn from U(0.3, 0.9) or skipped, with skip probabilities (0, 0.2, 0.8, 0.9) for the four scales:
the kind of per-image decisions a trained agent makes (README: it ends near 0.31 of the FLOPs, FastVAR at
0.347). With ``--agent`` the ratios are the agent's, decided per image on the same prompts (the policy
calls are then timed too, as they are part of serving an agent).

Prints per-image ms (transformer = start + every scale step; total adds the decoder), the measured time
ratio mixed / FastVAR, the FLOPs ratio (mean per-image analytic FLOPs), and their quotient (target: within
1.25 of 1). The same quotient for FastVAR / Original says how well FLOPs predict time on the device at
all. Schedules run interleaved, median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def agent_like_ratios(num_scales: int, batch: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    skip_p = (0.0, 0.2, 0.8, 0.9)
    out = []
    for _ in range(batch):
        r = [0.0] * num_scales
        for j, p in enumerate(skip_p):
            k = num_scales - len(skip_p) + j
            r[k] = 1.0 if rng.random() < p else round(float(rng.uniform(0.3, 0.9)), 3)
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--agent", default=None, help="a train.py run: time its per-image decisions instead")
    ap.add_argument("--budget", type=float, default=None, help="budget of a budget-conditioned --agent (fraction of the "
                    "unpruned transformer FLOPs; default: FastVAR's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="torch device of the generator (cpu | cuda)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from domain import load_prompts
    from embedded.loaders import load_embedded_generator
    from generator.schedules import FastVARSchedule, schedule_ratios

    from envs.config import check_device

    g = load_embedded_generator(device=check_device(args.device))
    sync = torch.cuda.synchronize if g.device.type == "cuda" else (lambda: None)
    n, B = g.num_scales, args.batch
    prompts = load_prompts("test")[:B]
    seeds = list(range(B))
    fv = schedule_ratios(FastVARSchedule(), n)
    agent = None
    if args.agent:
        from agents.schedule import load_agent_schedule, read_run_config

        budget = args.budget
        if budget is None and read_run_config(args.agent)["env"].get("budget_range") is not None:
            budget = g.flops_fraction(fv)
        agent = load_agent_schedule(args.agent, g, budget=budget)
        _, st = g.generate(prompts, seeds, schedule=agent)
        mixed = [[r.ratio for r in st.image_reports(b)] for b in range(B)]
    else:
        mixed = agent_like_ratios(n, B)

    def run(kind: str):
        """(transformer seconds, total seconds) for one batch."""
        t0 = time.perf_counter()
        with torch.no_grad():
            st = g.start(prompts, seeds)
            for k in range(n):
                if kind == "original":
                    g.step(st, 0.0)
                elif kind == "fastvar":
                    g.step(st, fv[k])
                elif agent is not None:
                    g.step(st, agent.ratio(k, n, st), drop_unconditional=agent.drop_unconditional(k, n, st))
                else:
                    g.step(st, [m[k] for m in mixed])
            sync()
            t1 = time.perf_counter()
            g.decode(st)
            sync()
        return t1 - t0, time.perf_counter() - t0, st

    kinds = ["original", "fastvar", "mixed:pad", "mixed:group"]
    times = {k: ([], []) for k in kinds}
    for _ in range(2):  # warm-up
        for kind in kinds:
            g.row_batching = "group" if kind.endswith("group") else "pad"
            run(kind)
    state = {}
    for _ in range(args.repeats):
        for kind in kinds:
            g.row_batching = "group" if kind.endswith("group") else "pad"
            tr, tot, st = run(kind)
            times[kind][0].append(tr)
            times[kind][1].append(tot)
            state[kind] = st
    g.row_batching = "pad"
    flops = {k: float(np.mean(st.flops_used_per_image)) / g.flops_full() for k, st in state.items()}
    med = {k: (statistics.median(a) * 1000 / B, statistics.median(b) * 1000 / B) for k, (a, b) in times.items()}
    print(f"device {g.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {B}, repeats {args.repeats}, "
          f"{'agent ' + args.agent if agent else 'agent-like random per-image schedules'}")
    print("| schedule | FLOPs frac (mean/img) | transformer ms/img | total ms/img |")
    print("|---|---|---|---|")
    for k in kinds:
        print(f"| {k} | {flops[k]:.3f} | {med[k][0]:.2f} | {med[k][1]:.2f} |")
    fr = flops["mixed:pad"] / flops["fastvar"]
    for k in ("mixed:pad", "mixed:group"):
        for j, part in ((0, "transformer"), (1, "total")):
            tr = med[k][j] / med["fastvar"][j]
            print(f"{k} / fastvar, {part}: time ratio {tr:.3f}, FLOPs ratio {fr:.3f}, time/FLOPs {tr / fr:.3f}")
    fo = flops["fastvar"] / flops["original"]
    for j, part in ((0, "transformer"), (1, "total")):  # how well FLOPs predict time at all on this device
        tr = med["fastvar"][j] / med["original"][j]
        print(f"fastvar / original, {part}: time ratio {tr:.3f}, FLOPs ratio {fo:.3f}, time/FLOPs {tr / fo:.3f}")
    print(f"pad vs group (transformer): group / pad = {med['mixed:group'][0] / med['mixed:pad'][0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
