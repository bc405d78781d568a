"""Iso-quality speed-up: the largest FLOPs saving at which DomainEval attribute accuracy stays within a
tolerance (0.01, 0.02) of Original's, the regime the field reports (FastVAR: 2.7x on Infinity-2B at
GenEval -0.01).

    python -m evaluation.iso_quality --out results/iso [--run runs/ppo_s0 ...] [--estimate-only]

Three kinds of method, each a family of candidate settings ordered by FLOPs:

- ``fastvar_scaled``: FastVAR's pattern at strengths s in [0, 1] (``evaluation.iso_candidates``).
- ``static_frontier``: near-lossless static schedules (``near_lossless_schedules``: one- and two-scale
  modifications of the unpruned schedule, with the compared agents' levers) ranked by QUALITY (the
  reward's quality terms, through the static search's ``GridCache``) on the validation items; the
  candidates are its Pareto frontier. The judge never ranks a schedule there.
- ``rl:<run>``: each trained agent at each of ``--budgets``; a budget outside the run's trained range
  is listed as n/a (today's agents stop at 0.6).

Protocol: per family and tolerance, the operating point is the cheapest candidate whose VALIDATION loss
(Original's DomainEval attribute accuracy minus the candidate's, mean over validation prompts) is within
the tolerance (``evaluation.operating_point.choose_operating_point``; none = Original). It is reported
on the TEST items: its transformer and total FLOPs, the speed-up 1 / FLOPs with a bootstrap interval
over prompts that re-chooses the point on resampled validation prompts and measures it on resampled
test prompts, and its test attribute accuracy minus Original's with a prompt-clustered t interval.

Default cost: 100 validation prompts x seed 0 (compare mode's search items, so the static search's
cache is shared), 100 test prompts x seeds 0 1, FastVAR strengths {.05, .1, .15, .2, .3, .5, 1}, 39
static candidates (one-scale modifications at {0, .125, .25, .5} with and without the CFG branch, and
skip; two-scale at .25), agents at 0.95 ... 0.4: estimated ~15 min on the shared 2-core CPU (the
estimate, calibrated on Original's images, is printed before anything else is generated;
``--estimate-only`` stops there). A 20 + 20 prompt run took 223 s against an estimate of 233 s.

The judge's scores are cached on disk in their own files (``CACHE/judge/``), apart from the static
search's ``GridCache`` (QUALITY only). New grid schedules are judged in the pass that generates them
(so the frontier is not generated twice); those scores go to the judge's cache and are read only after
the frontier is fixed, and only for the frontier's schedules.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from evaluation.iso_candidates import near_lossless_schedules
from evaluation.iso_families import (
    ATTR, Candidate, Family, IsoContext, IsoSettings, agent_budgets, agent_family, build_context, calibrate, estimate,
    fastvar_family, find_runs, static_family,
)
from evaluation.operating_point import (
    bootstrap_choices, bootstrap_paired_ci, bootstrap_savings, choose_operating_point, percentile_ci, prompt_means,
)


# ---- the operating points, reported on test ---------------------------------------------------------

def scores_on_test(ctx: IsoContext, fam: Family, c: Candidate) -> dict:
    """Per test item: DomainEval scores and FLOPs fractions of a candidate (generated unless cached)."""
    if c.schedule is not None:
        row = ctx.judge_static([c.schedule], "test")[c.schedule]
        n = len(ctx.test_items)
        return {**row, "flops_fraction": np.full(n, c.transformer), "total_flops_fraction": np.full(n, c.total)}
    return ctx.judge_agent(fam.run, c.budget, "test", tolerance=c.tolerance)


def savings_on_test(ctx: IsoContext, fam: Family, c: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """Per test prompt: mean transformer and total FLOPs saving (1 - fraction); a static schedule's are
    analytic (nothing generated), an agent's measured on its test images."""
    prompts = [p for p, _ in ctx.test_items]
    if c.schedule is not None:
        n = len(dict.fromkeys(prompts))
        return np.full(n, 1.0 - c.transformer), np.full(n, 1.0 - c.total)
    row = scores_on_test(ctx, fam, c)
    return (prompt_means(1.0 - row["flops_fraction"], prompts), prompt_means(1.0 - row["total_flops_fraction"], prompts))


def saving_and_speedup(point_fraction: float, boot_savings: np.ndarray) -> tuple[dict, dict]:
    """The saving 1 - FLOPs and the speed-up 1 / FLOPs at the operating point, with the bootstrap's
    percentile interval (the speed-up's is the saving's, mapped through 1 / (1 - saving))."""
    lo, hi = percentile_ci(boot_savings)
    return ({"point": 1.0 - point_fraction, "lo": lo, "hi": hi},
            {"point": 1.0 / point_fraction, "lo": 1.0 / (1.0 - lo), "hi": 1.0 / (1.0 - hi)})


def operating_point(ctx: IsoContext, fam: Family, tolerance: float, orig_val: np.ndarray, orig_test: np.ndarray) -> dict:
    """The family's operating point at ``tolerance``: chosen on validation, reported on test (module
    docstring), with the bootstrap over prompts of the choice and of the saving."""
    from rewards.stats import clustered_paired

    s = ctx.settings
    val_prompts, test_prompts = [p for p, _ in ctx.val_items], [p for p, _ in ctx.test_items]
    n_val, n_test = len(dict.fromkeys(val_prompts)), len(dict.fromkeys(test_prompts))
    cands = [c for c in fam.candidates if c.val is not None]
    loss = np.asarray([prompt_means(orig_val - c.val[ATTR], val_prompts) for c in cands]).reshape(len(cands), n_val)
    flops = [c.transformer for c in cands]
    chosen = choose_operating_point(flops, loss.mean(axis=1), tolerance) if cands else None
    choices = bootstrap_choices(flops, loss, tolerance, s.n_boot, s.seed) if cands else np.full(s.n_boot, -1)
    wanted = sorted({int(x) for x in choices if x >= 0} | ({chosen} if chosen is not None else set()))
    savings = {i: savings_on_test(ctx, fam, cands[i]) for i in wanted}
    boot_t = bootstrap_savings(choices, {i: v[0] for i, v in savings.items()}, n_test, s.seed + 1)
    boot_tot = bootstrap_savings(choices, {i: v[1] for i, v in savings.items()}, n_test, s.seed + 1)
    labels = ["Original"] + [c.label for c in cands]
    counts = np.bincount(choices + 1, minlength=len(labels))
    out = {"tolerance": tolerance, "choice_frequency": {labels[i]: round(float(k) / s.n_boot, 4)
                                                        for i, k in enumerate(counts) if k}}
    if chosen is None:
        out.update(point="none within tolerance (Original)", transformer=1.0, total=1.0, val_delta_attr=0.0,
                   test_delta_attr=None, test_within_tolerance=True)
    else:
        c = cands[chosen]
        test = scores_on_test(ctx, fam, c)
        delta = clustered_paired(list(test[ATTR]), list(orig_test), test_prompts)
        out.update(point=c.label, transformer=float(np.mean(test["flops_fraction"])),
                   total=float(np.mean(test["total_flops_fraction"])), val_delta_attr=-float(loss[chosen].mean()),
                   test_delta_attr={k: delta[k] for k in ("mean_diff", "ci95", "n", "p_ttest")},
                   test_delta_attr_bootstrap=bootstrap_paired_ci(list(test[ATTR]), list(orig_test), test_prompts,
                                                                 s.n_boot, s.seed + 2),
                   test_within_tolerance=bool(delta["mean_diff"] >= -tolerance))
    out["transformer_saving"], out["transformer_speedup"] = saving_and_speedup(out["transformer"], boot_t)
    out["total_saving"], out["total_speedup"] = saving_and_speedup(out["total"], boot_tot)
    out["_boot"] = {"transformer": boot_t, "total": boot_tot}  # paired across families (same resamples): see below
    return out


def versus(families: dict, reference: str = "static_frontier") -> None:
    """Each family's saving minus ``reference``'s at every tolerance, as ``vs_<reference>`` in its operating
    points: the point difference and the percentile interval of the per-replicate differences (every
    family's bootstrap resamples the same validation and test prompts: the seeds are shared, so the
    replicates are paired). Drops the replicates from the summary afterwards."""
    ref = families.get(reference)
    for name, fam in families.items():
        for i, op in enumerate(fam["operating_points"]):
            if ref is not None and name != reference:
                r = ref["operating_points"][i]
                op[f"vs_{reference}"] = {
                    k: {"point": op[f"{k}_saving"]["point"] - r[f"{k}_saving"]["point"],
                        **dict(zip(("lo", "hi"), percentile_ci(op["_boot"][k] - r["_boot"][k])))}
                    for k in ("transformer", "total")}
    for fam in families.values():
        for op in fam["operating_points"]:
            op.pop("_boot", None)


def family_summary(ctx: IsoContext, fam: Family, orig_val: np.ndarray, orig_test: np.ndarray) -> dict:
    """A family's candidates on validation (FLOPs, attribute accuracy minus Original's, prompt-clustered)
    and its operating point at every tolerance."""
    from rewards.stats import clustered_paired

    prompts = [p for p, _ in ctx.val_items]
    cands = []
    for c in fam.candidates:
        e = {"label": c.label, "transformer": c.transformer, "total": c.total, "budget": c.budget, "note": c.note}
        if c.val is not None:
            d = clustered_paired(list(c.val[ATTR]), list(orig_val), prompts)
            e["val_delta_attr"] = {"mean_diff": d["mean_diff"], "ci95": d["ci95"]}
        cands.append(e)
    return {"kind": fam.kind, "note": fam.note, "candidates": cands,
            "operating_points": [operating_point(ctx, fam, t, orig_val, orig_test) for t in ctx.settings.tolerances]}


# ---- the run ----------------------------------------------------------------------------------------

def run_iso_quality(settings: IsoSettings = IsoSettings(), run_dirs: tuple[Path, ...] = (), runs_dir: Path | None = Path("runs"),
                    judge_weights: Path | None = None, estimate_only: bool = False, log=print) -> dict:
    """Every family's operating point at every tolerance (module docstring) as a JSON-able summary;
    with ``estimate_only``, only the settings and the time estimate."""
    from generator.schedules import StaticSchedule
    from evaluation.static_search import guided_scales

    t0 = time.time()
    settings.check()
    runs = find_runs(run_dirs, runs_dir)
    ctx = build_context(settings, runs, judge_weights)
    budgets = agent_budgets(ctx)
    g = ctx.generator
    grid = near_lossless_schedules(g.num_scales, ctx.first, guided_scales(g), settings.one_scale_ratios,
                                   settings.two_scale_ratios, ctx.allow_drop)
    log(f"iso-quality: {len(ctx.val_items)} validation items, {len(ctx.test_items)} test items; FastVAR strengths "
        f"{list(settings.strengths)}; {len(grid)} static candidates on scales {ctx.first}..{g.num_scales - 1} "
        f"(CFG drop {'allowed' if ctx.allow_drop else 'not allowed'}); agents: {[r.label for r in runs] or 'none'}")
    cost, refs = calibrate(ctx)
    est = estimate(ctx, cost, refs, grid, budgets)
    log(est["line"])
    summary = {"settings": settings_dict(settings, ctx, budgets), "estimate": est}
    if estimate_only:
        return summary
    families = [fastvar_family(ctx)]
    static, summary["static_search"] = static_family(ctx, refs, grid)
    families.append(static)
    families += [agent_family(ctx, run, budgets) for run in runs]
    unpruned = StaticSchedule((0.0,) * g.num_scales)
    orig_val = ctx.judge_static([unpruned], "val")[unpruned][ATTR]
    orig_test = ctx.judge_static([unpruned], "test")[unpruned][ATTR]
    from rewards.stats import clustered_mean_ci

    summary["original"] = {"val_attr": clustered_mean_ci(list(orig_val), [p for p, _ in ctx.val_items]),
                           "test_attr": clustered_mean_ci(list(orig_test), [p for p, _ in ctx.test_items])}
    summary["families"] = {f.name: family_summary(ctx, f, orig_val, orig_test) for f in families}
    versus(summary["families"])
    summary["wall_s"] = round(time.time() - t0, 1)
    return summary


def settings_dict(settings: IsoSettings, ctx: IsoContext, budgets: list) -> dict:
    """What the summary was computed from."""
    return {"val": f"{settings.val_source}: {len(dict.fromkeys(p for p, _ in ctx.val_items))} prompts x seeds "
                   f"{list(settings.val_seeds)}",
            "test": f"{settings.test_source}: {len(dict.fromkeys(p for p, _ in ctx.test_items))} prompts x seeds "
                    f"{list(settings.test_seeds)}",
            "tolerances": list(settings.tolerances), "strengths": list(settings.strengths),
            "one_scale_ratios": list(settings.one_scale_ratios), "two_scale_ratios": list(settings.two_scale_ratios),
            "first_controllable_scale": ctx.first, "allow_cfg_drop": ctx.allow_drop,
            "budgets": {t: b for t, b in budgets}, "runs": [str(r.path) for r in ctx.runs],
            "n_boot": settings.n_boot, "seed": settings.seed, "judge": "DomainEval attribute accuracy",
            "cache": None if settings.cache_dir is None else str(settings.cache_dir)}


# ---- command line -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = IsoSettings()
    p = argparse.ArgumentParser(prog="python -m evaluation.iso_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results") / "iso", help="folder for iso.json, iso.md, iso.png")
    p.add_argument("--run", type=Path, action="append", default=[], help="a train.py run (repeatable; default: every "
                   "finished run under --runs-dir)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--no-agents", action="store_true", help="leave the trained agents out")
    p.add_argument("--val-source", default=d.val_source)
    p.add_argument("--val-prompts", type=int, default=d.val_prompts)
    p.add_argument("--val-seeds", type=int, nargs="+", default=list(d.val_seeds))
    p.add_argument("--test-source", default=d.test_source)
    p.add_argument("--test-prompts", type=int, default=d.test_prompts)
    p.add_argument("--test-seeds", type=int, nargs="+", default=list(d.test_seeds))
    p.add_argument("--tolerances", type=float, nargs="+", default=list(d.tolerances))
    p.add_argument("--strengths", type=float, nargs="+", default=list(d.strengths), help="FastVAR strengths s in [0, 1]")
    p.add_argument("--one-scale-ratios", type=float, nargs="+", default=list(d.one_scale_ratios))
    p.add_argument("--two-scale-ratios", type=float, nargs="*", default=list(d.two_scale_ratios),
                   help="ratios of the two-scale modifications (with skip); none: one-scale modifications only")
    p.add_argument("--no-cfg-drop", action="store_true", help="static candidates keep the CFG branch everywhere")
    p.add_argument("--budgets", nargs="+", default=list(d.budgets), help="agents' budgets: fractions of the unpruned "
                   "transformer FLOPs or multiples of FastVAR's (0.8fastvar); outside a run's range: n/a")
    p.add_argument("--n-boot", type=int, default=d.n_boot)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--judge-weights", type=Path, default=None)
    p.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from evaluation.iso_quality_report import write_iso_report

    a = parse_args(argv)
    settings = IsoSettings(a.val_source, a.val_prompts, tuple(a.val_seeds), a.test_source, a.test_prompts,
                           tuple(a.test_seeds), tuple(a.tolerances), tuple(a.strengths), tuple(a.one_scale_ratios),
                           tuple(a.two_scale_ratios), not a.no_cfg_drop, tuple(a.budgets), a.n_boot, a.seed,
                           a.batch_size, None if a.no_cache else a.cache_dir)
    if a.out.exists() and not a.out.is_dir():
        print(f"error: --out {a.out} is a file; it must be a folder (or not exist yet)", file=sys.stderr)
        return 2
    try:
        summary = run_iso_quality(settings, () if a.no_agents else tuple(a.run), None if a.no_agents else a.runs_dir, a.judge_weights,
                                  a.estimate_only, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.estimate_only:
        print(write_iso_report(summary, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
