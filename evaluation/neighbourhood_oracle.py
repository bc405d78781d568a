"""Go / no-go for a residual controller: the neighbourhood oracle.

    python -m evaluation.neighbourhood_oracle --json results/neighbourhood.json [--budgets fastvar 0.8fastvar ...]

Per budget, the candidates are the frontier schedule (``evaluation.frontier_build``: the best static
schedule of one shared pool, chosen on validation by QUALITY) and its grid one-move neighbours that fit
the budget: exactly what a residual policy making one move can reach. On the test items (every prompt
with every seed) three choices among them are scored against the frontier schedule, paired per image
and clustered by prompt:

- ``cv`` (per prompt, leave one seed out): for image (p, k) the candidate best in QUALITY on p's other
  seeds. It bounds what a per-prompt controller among these candidates can reach.
- ``image`` (per image, in sample): the candidate best on that image. It bounds a controller that
  chooses per image from what the image's own early scales show, if it could read them perfectly.
- ``image_domain`` is not computed: the judge never chooses anything.

Each is reported in QUALITY and in DomainEval attribute accuracy (the independent judge), with the
share of images that deviate from the frontier schedule. If the ``cv`` gain's CI includes 0 and the
``image`` gain is small, a residual policy has no room here: that is the result, not a tuning target.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _choice_row(name: str, choice: dict, cands: list, results: dict, base, items: list) -> dict:
    """The paired gain over the frontier schedule of a per-item ``choice``, in QUALITY and DomainEval."""
    from evaluation.oracles import oracle_value
    from rewards.stats import clustered_paired

    prompts = [p for p, _ in items]
    row = {"choice": name, "deviation_rate": float(np.mean([choice[it] != base for it in items]))}
    for metric in ("quality", "domain_attribute"):
        vals = oracle_value({s: results[s][metric] for s in cands}, items, choice)
        d = clustered_paired(list(vals), list(results[base][metric]), prompts)
        row[metric] = {"mean": float(np.mean(vals)), "gain": d["mean_diff"], "ci95": d["ci95"], "p": d["p_ttest"]}
    return row


def budget_report(budget: float, frontier, flops, guided: list, test_eval, items: list, allow_drop: bool,
                  widths: tuple) -> dict:
    """One budget's frontier schedule, its neighbours and the oracles over them (module docstring)."""
    from evaluation.frontier_build import neighbourhood
    from evaluation.oracles import cross_validated_oracle, per_image_oracle

    base, near = neighbourhood(frontier, budget, flops, guided, allow_drop)
    cands = [base] + near
    results = test_eval.evaluate(cands, label=f"frontier neighbourhood at {budget:.3f}")
    quality = {s: results[s]["quality"] for s in cands}
    out = {"budget": budget, "frontier": base.describe(widths), "frontier_transformer": flops.transformer(base),
           "frontier_val_quality": frontier.entry_for(budget).val_quality, "neighbours": len(near),
           "frontier_test_quality": float(np.mean(quality[base])),
           "frontier_test_attribute": float(np.mean(results[base]["domain_attribute"]))}
    out["best_single_neighbour_test"] = max((float(np.mean(quality[s])), s.describe(widths)) for s in cands)
    if near:  # the learning signal of a deviating episode: its quality, or its quality minus the frontier's
        absolute = np.concatenate([quality[s] for s in near])
        paired = np.concatenate([quality[s] - quality[base] for s in near])
        out["reward_sd_of_a_move"] = {"absolute": float(np.std(absolute)), "paired": float(np.std(paired)),
                                      "note": "QUALITY over test images x one-move neighbours; the env's paired "
                                              "reward also caps the CLIP term of the difference at 0"}
    out["rows"] = [_choice_row("cv", cross_validated_oracle(quality, items, cands), cands, results, base, items),
                   _choice_row("image", per_image_oracle(quality, items, cands), cands, results, base, items)]
    return out


def run(budget_tokens: list[str], cache_dir: Path | None, test_seeds: tuple[int, ...], test_prompts: int,
        exhaustive_max: float, log=print) -> dict:
    from evaluation.frontier_build import FrontierSettings, build_frontier
    from evaluation.grid_evaluation import generate_references
    from evaluation.iso_families import IsoSettings, build_context
    from evaluation.compare_plan import read_budget
    from evaluation.scoreboard import _test_evaluator
    from evaluation.static_search import guided_scales
    from generator.schedules import FastVARSchedule, schedule_ratios

    t0 = time.time()
    ctx = build_context(IsoSettings(test_seeds=test_seeds, test_prompts=test_prompts, cache_dir=cache_dir), (), None)
    g = ctx.generator
    fv = g.flops_fraction(schedule_ratios(FastVARSchedule(), g.num_scales))
    budgets = [read_budget(t).fraction(fv) for t in budget_tokens]
    bad = [t for t, b in zip(budget_tokens, budgets) if not 0 < b <= 1]
    if bad:
        raise ValueError(f"--budgets {bad}: a budget must be in (0, 1] of the unpruned transformer FLOPs")
    frontier, _ = build_frontier(g, ctx.reward_fn, ctx.first,
                                 FrontierSettings(exhaustive_max=exhaustive_max, allow_drop=ctx.allow_drop,
                                                  cache_dir=cache_dir), log=log)
    items = ctx.test_items
    refs = generate_references(g, items, 100)
    test_eval = _test_evaluator(g, items, refs, ctx.reward_fn, ctx.domain, cache_dir, 100)
    guided, widths = guided_scales(g), tuple(g.scale_widths)
    reports = []
    for tok, b in zip(budget_tokens, budgets):
        rep = budget_report(b, frontier, ctx.flops, guided, test_eval, items, ctx.allow_drop, widths)
        rep["token"] = tok
        reports.append(rep)
        log(format_budget(rep))
    return {"test_items": f"{ctx.settings.test_source}: {test_prompts} prompts x seeds {list(test_seeds)}",
            "frontier": frontier.to_dict(widths), "budgets": reports, "wall_s": round(time.time() - t0, 1)}


def format_budget(rep: dict) -> str:
    lines = [f"budget {rep['token']} = {rep['budget']:.3f}: frontier {rep['frontier']} ({rep['frontier_transformer']:.3f}), "
             f"{rep['neighbours']} neighbours fit"]
    if "reward_sd_of_a_move" in rep:
        sd = rep["reward_sd_of_a_move"]
        lines.append(f"  reward sd of a move: absolute {sd['absolute']:.3f}, paired {sd['paired']:.3f}")
    for r in rep["rows"]:
        q, a = r["quality"], r["domain_attribute"]
        lines.append(f"  {r['choice']:>5}: quality {q['gain']:+.4f} ± {q['ci95']:.4f}, DomainEval attribute "
                     f"{a['gain']:+.4f} ± {a['ci95']:.4f}, deviating on {r['deviation_rate']:.0%} of images")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from generator.weights_io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["fastvar", "0.8fastvar", "0.6fastvar", "0.8", "0.9", "0.95"])
    ap.add_argument("--json", type=Path, default=Path("results") / "neighbourhood.json")
    ap.add_argument("--cache-dir", type=Path, default=Path("results") / "cache")
    ap.add_argument("--test-prompts", type=int, default=100)
    ap.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--exhaustive-max", type=float, default=0.36)
    args = ap.parse_args(argv)
    try:
        out = run(args.budgets, args.cache_dir, tuple(args.test_seeds), args.test_prompts, args.exhaustive_max)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(args.json, out)
    print(f"wrote {args.json} ({out['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
