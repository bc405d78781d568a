"""The embedded generator's ``step`` of this working tree against the same file at a git revision:
bit-identity of codes and images, and time, on the same model and inputs.

    python benchmarks/bench_step_revision.py --rev fbde670 [--repeats 21] [--batch 1 8]

For refactors of the hot path (``embedded/generator.py``): the file at ``--rev`` is loaded as a
separate module and both generators share the shipped tokenizer and transformer. First, for each
schedule (original, fastvar, skip, and a mixed batch: per-image ratios, some images dropping the
unconditional branch, some skipping) and seed, under both row batchings, it checks that the codes,
accumulated latents, entropies, FLOPs reports and decoded images are bit-identical. Then it times
``start`` + every ``step`` of both, interleaved (old, new, old, new...) in this one process, median
over repeats, so the printed ratio new/old compares like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MODULE = "embedded/generator.py"
PROMPT = "a large red solid circle in the centre on a plain gray background"


def load_module_at(rev: str, path: str = MODULE):
    """``path`` as it was at git revision ``rev``, imported as a module of its own."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: git show {rev}:{path} failed: {e.stderr.strip()}") from e
    tmp = Path(tempfile.mkdtemp()) / "generator_at_rev.py"
    tmp.write_text(text)
    spec = importlib.util.spec_from_file_location("generator_at_rev", tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def schedules(num_scales: int, batch: int) -> dict[str, tuple[list, list]]:
    """name -> (per scale: ratio (float or per-image list), per scale: drop_unconditional (bool or list))."""
    from embedded.model_card import heavy_skip_ratios
    from generator.schedules import FastVARSchedule, schedule_ratios

    n = num_scales
    out = {"original": ([0.0] * n, [False] * n),
           "fastvar": (schedule_ratios(FastVARSchedule(), n), [False] * n),
           "skip": (heavy_skip_ratios(n), [False] * n)}
    if batch > 1:  # image b: its own ratios; odd images drop the unconditional branch on later scales
        grid = (0.0, 0.25, 0.5, 0.75, 1.0)
        ratios = [[0.0 if k < 2 else grid[(b + k) % len(grid)] for b in range(batch)] for k in range(n)]
        drops = [[k >= n // 2 and b % 2 == 1 for b in range(batch)] for k in range(n)]
        out["mixed"] = (ratios, drops)
    return out


def run(gen, batch: int, seed: int, plan: tuple[list, list]):
    ratios, drops = plan
    state = gen.start([PROMPT] * batch, [seed + b for b in range(batch)])
    while not state.finished:
        k = state.scale_index
        gen.step(state, ratios[k], drop_unconditional=drops[k])
    return state


def same_state(a, b) -> list[str]:
    """What differs between two finished generations (empty: bit-identical)."""
    diffs = []
    for k, (ca, cb) in enumerate(zip(a.codes, b.codes)):
        la = ca if isinstance(ca, list) else [None] * a.batch if ca is None else list(ca)
        lb = cb if isinstance(cb, list) else [None] * b.batch if cb is None else list(cb)
        if any((x is None) != (y is None) or (x is not None and not torch.equal(x, y)) for x, y in zip(la, lb)):
            diffs.append(f"codes of scale {k}")
    if not torch.equal(a.f_hat_BChw, b.f_hat_BChw):
        diffs.append("f_hat")
    if (a.last_entropy_B is None) != (b.last_entropy_B is None) or (
            a.last_entropy_B is not None and not torch.equal(a.last_entropy_B.nan_to_num(-1), b.last_entropy_B.nan_to_num(-1))):
        diffs.append("entropy")
    if a.flops_used_per_image != b.flops_used_per_image or [repr(r) for r in a.reports] != [repr(r) for r in b.reports]:
        diffs.append("reports")
    return diffs


def check_identical(old, new, batches: list[int], seeds: list[int]) -> int:
    failures = 0
    for row_batching in ("pad", "group"):
        old.row_batching = new.row_batching = row_batching
        for batch in batches:
            for name, plan in schedules(new.num_scales, batch).items():
                for seed in seeds:
                    with torch.no_grad():
                        a, b = run(old, batch, seed, plan), run(new, batch, seed, plan)
                        diffs = same_state(a, b)
                        if not torch.equal(old.decode(a), new.decode(b)):
                            diffs.append("images")
                    failures += bool(diffs)
                    print(f"{row_batching:5s} batch {batch:2d} {name:8s} seed {seed}: "
                          f"{'identical' if not diffs else 'DIFFERENT: ' + ', '.join(diffs)}")
    old.row_batching = new.row_batching = "pad"
    return failures


def time_interleaved(old, new, batches: list[int], repeats: int) -> None:
    print(f"\ntime of start + every step, median of {repeats}, old and new interleaved "
          f"(torch threads {torch.get_num_threads()})")
    print(f"{'batch':>5s} {'schedule':10s} {'old ms':>8s} {'new ms':>8s} {'new/old':>8s}")
    ratios = []
    for batch in batches:
        for name, plan in schedules(new.num_scales, batch).items():
            times = {"old": [], "new": []}
            for gen in (old, new):  # warm-up
                with torch.no_grad():
                    run(gen, batch, 0, plan)
            for i in range(repeats):
                order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
                for key, gen in order:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        run(gen, batch, i, plan)
                    times[key].append(time.perf_counter() - t0)
            mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
            ratios.append(mn / mo)
            print(f"{batch:5d} {name:10s} {1000 * mo:8.2f} {1000 * mn:8.2f} {mn / mo:8.3f}")
    print(f"geometric mean new/old: {statistics.geometric_mean(ratios):.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="git revision whose embedded/generator.py is the 'old' one")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 7])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-timing", action="store_true", help="only the bit-identity check")
    args = ap.parse_args(argv)
    if args.repeats < 1 or any(b < 1 for b in args.batch):
        ap.error(f"--repeats and --batch must be >= 1, got {args.repeats} and {args.batch}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from embedded.loaders import load_embedded_generator

    new = load_embedded_generator()
    old_module = load_module_at(args.rev)
    old = old_module.NextScaleGenerator(new.tokenizer, new.transformer, guidance=new.guidance,
                                        sampling=new.sampling, device=new.device)
    failures = check_identical(old, new, args.batch, args.seeds)
    print(f"{failures} generation(s) differ" if failures else "every generation bit-identical")
    if not args.no_timing:
        time_interleaved(old, new, args.batch, args.repeats)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
