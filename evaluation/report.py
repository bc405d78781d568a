"""Reports of a comparison: Markdown tables, CSV, the Pareto plot, the image grid.

Every table says which FLOPs a fraction is of: "transformer" (the compute pruning acts on; the env's
reward counts it) or "total" (transformer + VQ decoder + text encoder: the image's whole compute).
CIs are prompt-clustered (see ``evaluation.scoreboard``).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from generator.images import image_grid  # noqa: F401 (moved to generator.images; re-exported)
from generator.weights_io import atomic_write_bytes

TABLE_METRICS = (("domain_attribute", "DomainEval attr"), ("domain_scene", "DomainEval scene"),
                 ("flops_fraction", "transformer FLOPs"), ("total_flops_fraction", "total FLOPs"),
                 ("latency_ms", "latency ms"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("lpips", "LPIPS"),
                 ("clip_score", "CLIP"), ("quality", "quality"), ("reward", "reward (run's)"))
DIGITS = {"latency_ms": 2, "psnr": 2, "clip_score": 2}
QUALITY_ONLY = (("total_flops_fraction", "total FLOPs"), ("flops_fraction", "transformer FLOPs"),
                ("domain_attribute", "DomainEval attr"), ("domain_scene", "DomainEval scene"), ("ssim", "SSIM"),
                ("clip_score", "CLIP"), ("quality", "quality"))


def _fmt(a: dict | None, digits: int = 3) -> str:
    if not a or a.get("n", 0) == 0 or a["mean"] != a["mean"]:
        return "n/a"
    if math.isinf(a["mean"]):
        return "inf"
    ci = "" if a["ci95"] != a["ci95"] else f" ± {a['ci95']:.{digits}f}"
    return f"{a['mean']:.{digits}f}{ci}"


def _row(name: str, metrics: dict, columns) -> str:
    return f"| {name} | " + " | ".join(_fmt(metrics.get(k), DIGITS.get(k, 3)) for k, _ in columns) + " |"


def _shown(summary: dict, columns) -> list:
    """Columns with a value for at least one method (LPIPS, DomainEval may be unavailable)."""
    keep = []
    for k, t in columns:
        if any(k in m["metrics"] for m in summary["methods"].values()) or k.startswith("domain_"):
            keep.append((k, t))
    return keep


def na_agents(summary: dict) -> list[dict]:
    """The per-budget entries whose agent is n/a (its budget outside the run's trained range: no images);
    their ``agent`` is "n/a: WHY", ``agent_row`` the row's name."""
    return [e for e in summary.get("budgets") or [] if e["agent"] not in summary["methods"]
            and str(e["agent"]).startswith("n/a")]


def _na_row(label: str, columns) -> str:
    return f"| {label} | " + " | ".join("n/a" for _ in columns) + " |"


def markdown_table(summary: dict) -> str:
    cols = _shown(summary, TABLE_METRICS)
    lines = ["| method | " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, m in summary["methods"].items():
        label = f"{name} (upper bound)" if m.get("upper_bound") else name
        lines.append(_row(label, m["metrics"], cols))
    for e in na_agents(summary):
        lines.append(_na_row(e.get("agent_row", "agent"), cols))
    lines.append("")
    lines.append(f"Mean ± 95% CI clustered by prompt ({summary['num_prompts']} prompts × seeds {summary['seeds']} = "
                 f"{summary['num_images']} images; {summary['statistics']}). DomainEval: the independent judge "
                 f"(attribute accuracy, scene accuracy; {summary['domain_eval']}). "
                 f"transformer FLOPs = fraction of the unpruned transformer FLOPs (what the env's reward counts); "
                 f"total FLOPs = fraction of the unpruned image's whole compute (transformer + VQ decoder + text encoder). "
                 f"latency ms: one image alone (batch 1, as deployed), the first {summary.get('latency_images', 'n/a')} items "
                 f"of each method. PSNR/SSIM/LPIPS vs Original (Original's PSNR is inf). quality = the reward's quality terms only "
                 f"(no FLOPs bonus, no budget penalty); reward (run's) = the run's episode reward, for reference.")
    for name, m in summary["methods"].items():
        if m.get("note"):
            lines.append(f"- {name}: {m['note']}")
    for e in na_agents(summary):
        lines.append(f"- {e.get('agent_row', 'agent')}: {e['agent']} (no images; its best static, oracle and random "
                     "rows are at the budget itself)")
    for kind, why in summary.get("oracles", {}).get("left_out", {}).items():
        lines.append(f"- {kind}: {why}")
    for metric, why in summary.get("unavailable", {}).items():
        lines.append(f"- {metric}: {why}")
    return "\n".join(lines)


def domain_attribute_table(summary: dict) -> str:
    """DomainEval per attribute (the judge's attributes, then the scene), one row per method."""
    rows = [(n, m) for n, m in summary["methods"].items() if m.get("domain_per_attribute")]
    if not rows:
        return ""
    attrs = list(dict.fromkeys(a for _, m in rows for a in m["domain_per_attribute"]))
    cols = [("domain_attribute", "all attributes")] + [(a, a) for a in attrs]
    lines = ["### DomainEval per attribute", "", "| method | " + " | ".join(t for _, t in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for name, m in rows:
        values = {"domain_attribute": m["metrics"].get("domain_attribute"), **m["domain_per_attribute"]}
        lines.append(_row(f"{name} (upper bound)" if m.get("upper_bound") else name, values, cols))
    lines += ["", f"DomainEval per attribute: {summary.get('domain_per_attribute_note', '')}."]
    return "\n".join(lines)


def distribution_table(summary: dict) -> str:
    """Fréchet distance to Original's images and seed diversity, one row per method."""
    rows = [(n, m["distribution"]) for n, m in summary["methods"].items() if m.get("distribution")]
    if not rows:
        return ""

    def num(x) -> str:
        return "n/a" if x is None or x != x else f"{x:.4f}"

    lines = ["### Distribution: distance to Original's images and diversity across seeds", "",
             "| method | Fréchet distance to Original | seed diversity |", "|---|---|---|"]
    lines += [f"| {n} | {num(d.get('frechet_distance_to_original'))} | {num(d.get('seed_diversity'))} |" for n, d in rows]
    lines += ["", f"Features: {summary.get('distribution_features', 'CLIP image embeddings')}; "
                  f"{summary.get('distribution_note', '')}."]
    return "\n".join(lines)


def _paired_line(name: str, comp: dict, metrics) -> str:
    parts = []
    for k in metrics:
        c = comp.get(k)
        if c is None or c["n"] < 2 or c["mean_diff"] != c["mean_diff"]:
            continue
        p = c["p_ttest"]
        parts.append(f"{k} {c['mean_diff']:+.4f} ± {c['ci95']:.4f} (p={p:.2g}, better on {c['wins']}/{c['n']} prompts)"
                     if p == p else f"{k} {c['mean_diff']:+.4f} (constant)")
    return f"- {name}: " + "; ".join(parts)


def quality_only_table(summary: dict) -> str:
    """RL vs FastVAR vs the best static schedule at matched total FLOPs, on quality alone."""
    cols = _shown(summary, QUALITY_ONLY)
    lines = ["### Quality at matched total FLOPs (no FLOPs bonus, no budget penalty in any score)", "",
             "| method | " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, m in summary["methods"].items():
        if m["kind"] in ("rl", "best_static", "oracle") or name == "fastvar":
            label = f"{name} (upper bound)" if m.get("upper_bound") else name
            lines.append(_row(label, m["metrics"], cols))
    lines.append("")
    lines.append("Paired differences (first − second), prompt-clustered mean ± 95% CI, t-test p over prompts:")
    for name, comp in summary.get("paired", {}).items():
        lines.append(_paired_line(name, comp, ("domain_attribute", "domain_scene", "ssim", "clip_score", "quality",
                                               "total_flops_fraction")))
    return "\n".join(lines)


def budget_table(summary: dict) -> str:
    """One block per agent row (each budget of a budget-conditioned run): the agent, the best static
    schedule, the three oracles and the random schedule at the agent's FLOPs (and FastVAR where the
    budget is FastVAR's), the paired agent − best static difference, and the share of the static →
    oracle gap the agent captures (per metric: (agent − static) / (oracle − static)), against the
    cross-validated oracle (what a per-prompt controller can reach) and, labelled, the in-sample one."""
    entries = summary.get("budgets") or []
    if not entries:
        return ""
    methods, paired = summary["methods"], summary.get("paired", {})
    keys = (("domain_attribute", "DomainEval attr"), ("domain_scene", "DomainEval scene"), ("ssim", "SSIM"),
            ("quality", "quality"))
    cols = (("flops_fraction", "transformer FLOPs"), ("total_flops_fraction", "total FLOPs")) + keys
    lines = ["### Per budget: agent vs the best static schedule at the same FLOPs vs the oracles", "",
             "| budget | method | " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    gaps = []
    for e in entries:
        b = "-" if e["budget"] is None else f"{e['budget']:.3f}"
        names = [e["agent"], e["best_static"], e.get("oracle_cv"), e["oracle"], e.get("oracle_image"),
                 e.get("nb_oracle_cv"), e.get("nb_oracle_image"), e["random"]]
        if e["budget"] is not None and "fastvar" in methods:
            fv = methods["fastvar"]["metrics"].get("flops_fraction", {}).get("mean")
            if fv is not None and abs(fv - e["budget"]) < 1e-3:
                names.append("fastvar")
        for nm in names:
            if nm in methods:
                label = nm + (" (upper bound)" if methods[nm].get("upper_bound") else "")
                lines.append(f"| {b} " + _row(label, methods[nm]["metrics"], cols))
            elif nm == e["agent"] and str(nm).startswith("n/a"):
                lines.append(f"| {b} " + _na_row(f"{e.get('agent_row', 'agent')}: {nm}", cols))
        if e["agent"] not in methods and str(e["agent"]).startswith("n/a"):
            gaps.append(f"- {e.get('agent_row', 'agent')} (budget {b}): {e['agent']}; the best static, oracle and random "
                        "rows are at the budget itself")
            continue
        comp = paired.get(f"{e['agent']} vs {e['best_static']}")
        parts = []
        for k, t in keys:
            shares = {ref: by[k] for ref, by in e.get("gap_captured", {}).items() if k in by}
            if not shares:
                continue
            c = (comp or {}).get(k)
            diff = "" if c is None or c["ci95"] != c["ci95"] else f"{c['mean_diff']:+.4f} ± {c['ci95']:.4f}, "
            text = ", ".join(("n/a" if x is None else f"{x:.0%}") + (" of the gap to oracle_cv" if ref == "oracle_cv" else
                                                                    " of the gap to the in-sample oracle")
                             for ref, x in shares.items())
            parts.append(f"{t}: {diff}captured {text}")
        gaps.append(f"- {e['agent']} − {e['best_static']} (budget {b}): " + "; ".join(parts))
    lines.append("")
    bounds = summary.get("oracles", {}).get("bounds", {})
    has_neighbourhood = any(e.get(k) in methods for e in entries for k in ("nb_oracle_cv", "nb_oracle_image"))
    lines.append("oracle_cv: " + bounds.get("oracle_cv", "") + "; oracle (in-sample) and oracle_image count seed noise "
                 "that no method can reach." + (" nb_oracle_cv / nb_oracle_image: the neighbourhood oracle (the run's "
                                                "frontier schedule and its one-move neighbours), the ceiling of a "
                                                "residual policy, per prompt (cross-validated) and per image."
                                                if has_neighbourhood else ""))
    lines.append("Paired agent − best static (prompt-clustered mean ± 95% CI) and the share of the best-static → "
                 "oracle gap the agent captures, against oracle_cv first and, labelled, the in-sample oracle "
                 "(negative: below the best static schedule; n/a: the oracle is not above it):")
    return "\n".join(lines + gaps)


def static_search_lines(summary: dict) -> str:
    g = summary.get("grid", {})
    lines = ["### Best static schedules (chosen on validation by quality; the judge is never used to choose)", ""]
    if not g:
        return "(static search not run: --no-static-search)"
    ratios = ", ".join(f"{r:g}" for r in g.get("grid_ratios", []))
    cfg = "CFG branch kept/dropped" if g.get("grid_drops_cfg", True) else "CFG branch kept"
    lines.append(f"Grid: {g.get('grid_size')} schedules ({{{ratios}}} × {cfg}, + skip, on "
                 f"every controllable scale); {g.get('grid_fitting_largest_target')} fit the largest target "
                 f"({g.get('largest_target_total_fraction', float('nan')):.3f} of the total FLOPs) and were evaluated on "
                 f"{g.get('val_items')} validation images ({g.get('val_schedules_generated')} generated now, "
                 f"{g.get('val_seconds')} s; the rest from the cache), the others never generated.")
    for label, s in summary.get("static_search", {}).items():
        lines.append(f"- at ≤ {s['target_total_fraction']:.3f} total FLOPs ({label}): **{s['schedule']}** "
                     f"(total {s['total_fraction']:.3f}, transformer {s['transformer_fraction']:.3f}); validation "
                     f"quality {s['val_quality']:.4f} ≥ the best of the {s['grid_points_evaluated']} fitting grid points "
                     f"({s['best_grid_val_quality']:.4f}, {s['best_grid_schedule']}); refinement: "
                     f"{s['refinement_evaluations']} schedules in {s['refinement_rounds']} rounds"
                     + (f"; levers: {g['levers'][label]}" if label in g.get("levers", {}) else "")
                     + "".join(f"; {k} used {s[k + '_schedules_used']} distinct schedules"
                               for k in ("oracle", "oracle_cv", "oracle_image") if k + "_schedules_used" in s))
    lines.append("(`/nocfg` = the unconditional CFG branch is dropped at that scale; 1 = skipped.)")
    return "\n".join(lines)


def frontier_table(summary: dict) -> str:
    fr = summary.get("static_frontier", [])
    if not fr:
        return ""
    lines = ["### Static Pareto frontier (chosen on validation, evaluated on the test items)", "",
             "| schedule | total FLOPs | transformer FLOPs | val quality | test quality | test SSIM | test DomainEval attr | test DomainEval scene |",
             "|---|---|---|---|---|---|---|---|"]
    for e in fr:
        t = e.get("test", {})
        lines.append(f"| {e['schedule']} | {e['total_fraction']:.3f} | {e['transformer_fraction']:.3f} | {e['val_quality']:.4f} | "
                     f"{_fmt(t.get('quality'), 4)} | {_fmt(t.get('ssim'))} | {_fmt(t.get('domain_attribute'))} | "
                     f"{_fmt(t.get('domain_scene'))} |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


#: method kind -> (family in the legend, colour): one colour per family
PARETO_FAMILIES = {"baseline": ("baselines (FastVAR, tail)", "0.3"), "best_static": ("static (best at the budget)", "tab:blue"),
                   "rl": ("agents", "tab:red"), "oracle": ("oracles (upper bounds, hollow)", "tab:green"),
                   "random": ("random schedules", "tab:orange")}
OTHER_FAMILY = ("other", "tab:purple")
BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
NO_BUDGET_MARKER = "*"


def budget_of_methods(summary: dict) -> dict[str, str]:
    """Method name -> the budget it was run or chosen at, as its marker's legend label: an agent row's
    budget for that row's agent, best static, oracle(s) and random; FastVAR's fraction for FastVAR and
    the rows chosen at it ("@fastvar"). Methods with no budget (Original, tail) are not in it."""
    methods = summary["methods"]
    fv = methods.get("fastvar", {}).get("metrics", {}).get("flops_fraction", {}).get("mean")

    def label(b: float | None) -> str:
        if b is None:
            return "the run's own"
        return f"{b:.3f}" + (" (FastVAR's)" if fv is not None and abs(b - fv) < 1e-3 else "")

    out = {name: label(fv) for name in methods if fv is not None and (name == "fastvar" or name.endswith("@fastvar"))}
    for e in summary.get("budgets") or []:
        suffix = e["best_static"][len("best_static"):]  # "" with one agent row, ":LABEL@B" with several
        out[e["agent"]] = label(e["budget"])
        for name, m in methods.items():
            base = name.split(":")[0].split("@")[0]
            if name not in out and m.get("kind") in ("best_static", "oracle", "random") and name[len(base):] == suffix:
                out[name] = label(e["budget"])
    return out


def _pareto_points(summary: dict, metric: str, budgets: dict[str, str]) -> list[dict]:
    """Every method but Original with a finite ``metric``: total FLOPs and the metric, with CIs."""
    out = []
    for name, m in summary["methods"].items():
        f, q = m["metrics"].get("total_flops_fraction"), m["metrics"].get(metric)
        if name == "original" or not f or not q or q["n"] == 0 or not math.isfinite(q["mean"]):
            continue
        ci = lambda a: a["ci95"] if a["ci95"] == a["ci95"] else 0.0  # noqa: E731 - NaN (one prompt): no bar
        out.append({"name": name, "kind": m.get("kind"), "x": f["mean"], "xerr": ci(f), "y": q["mean"], "yerr": ci(q),
                    "budget": budgets.get(name), "upper_bound": bool(m.get("upper_bound"))})
    return out


def _zoom_window(points: list[dict], reference: float | None) -> tuple[float, float, float, float] | None:
    """(x0, x1, y0, y1) around the pruned methods' means and Original's value (``reference``), padded (CI
    bars may reach outside); None for < 2 points."""
    if len(points) < 2:
        return None
    xs, ys = [p["x"] for p in points], [p["y"] for p in points] + ([] if reference is None else [reference])
    px, py = max(0.1 * (max(xs) - min(xs)), 0.01), max(0.12 * (max(ys) - min(ys)), 0.01)
    return min(xs) - px, max(xs) + px, min(ys) - py, max(ys) + py


def _original_value(summary: dict, metric: str) -> float | None:
    o = summary["methods"].get("original", {}).get("metrics", {}).get(metric)
    return o["mean"] if o and o.get("n") and math.isfinite(o["mean"]) else None


def _draw_pareto_panel(ax, summary: dict, metric: str, points: list[dict], markers: dict[str, str], label_runs: bool) -> None:
    """The static frontier as a line, Original as a horizontal reference line, every other method as
    a point with CI bars: colour = family, marker = budget."""
    fr = [e for e in summary.get("static_frontier", []) if metric in e.get("test", {})]
    if fr:  # a thin line without bars: the frontier's CIs would hide the methods'
        ax.plot([e["total_fraction"] for e in fr], [e["test"][metric]["mean"] for e in fr], "-", marker=".", ms=4,
                color=PARETO_FAMILIES["best_static"][1], alpha=0.45, lw=1, zorder=1)
    orig = _original_value(summary, metric)
    if orig is not None:
        ax.axhline(orig, color="k", ls="--", lw=1, zorder=0)
        ax.plot(1.0, orig, "o", color="k", ms=6, zorder=3)
    for p in points:
        colour = PARETO_FAMILIES.get(p["kind"], OTHER_FAMILY)[1]
        marker = markers.get(p["budget"], NO_BUDGET_MARKER)
        ax.errorbar(p["x"], p["y"], xerr=p["xerr"] or None, yerr=p["yerr"] or None, fmt=marker, color=colour,
                    mfc="none" if p["upper_bound"] else colour, ms=10 if p["kind"] == "rl" else 7, mew=1.5, capsize=2,
                    elinewidth=0.8, zorder=3)
        if p["kind"] == "baseline" or (label_runs and p["kind"] == "rl"):
            ax.annotate(p["name"].removeprefix("rl:"), (p["x"], p["y"]), xytext=(4, 4), textcoords="offset points",
                        fontsize=6, color=colour, clip_on=True)
    ax.grid(alpha=0.3)


def pareto_plot(summary: dict, path: Path) -> None:
    """DomainEval attribute accuracy (when the judge is available) and SSIM against TOTAL FLOPs, read at
    a glance: one colour per method family (baselines, static, agents, oracles, random), one marker per
    budget, Original as a dashed horizontal line, the static frontier (chosen on validation, test values)
    as a thin line; left column everything, right column zoomed into the pruned methods (the window is
    the dashed box on the left). Bars: prompt-clustered 95% CIs; oracles (upper bounds) hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    panels = [("ssim", "SSIM vs Original")]
    if any("domain_attribute" in m["metrics"] for m in summary["methods"].values()):
        panels.insert(0, ("domain_attribute", "DomainEval attribute accuracy"))
    budgets = budget_of_methods(summary)
    order = list(dict.fromkeys(budgets[n] for n in summary["methods"] if n in budgets))
    markers = {b: BUDGET_MARKERS[i % len(BUDGET_MARKERS)] for i, b in enumerate(order)}
    label_runs = len({n.split("@")[0] for n, m in summary["methods"].items() if m.get("kind") == "rl"}) > 1
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.2 * len(panels)), squeeze=False)
    for (ax_all, ax_zoom), (metric, label) in zip(axes, panels):
        points = _pareto_points(summary, metric, budgets)
        for ax in (ax_all, ax_zoom):
            _draw_pareto_panel(ax, summary, metric, points, markers, label_runs)
            ax.set_ylabel(label)
        window = _zoom_window(points, _original_value(summary, metric))
        if window is not None:
            x0, x1, y0, y1 = window
            ax_zoom.set_xlim(x0, x1)
            ax_zoom.set_ylim(y0, y1)
            ax_all.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls=":", lw=1, ec="0.4", zorder=0))
        lo = min([p["x"] - p["xerr"] for p in points] + [1.0])
        ax_all.set_xlim(lo - 0.03, 1.03)  # the whole range, up to Original at 1
        ax_all.set_title("all methods (dotted box: the zoom on the right)", fontsize=8)
        ax_zoom.set_title("zoom: the pruned methods", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("total FLOPs fraction (transformer + VQ decoder + text encoder)")
    kinds = [k for k in PARETO_FAMILIES if any(m.get("kind") == k for m in summary["methods"].values())]
    fam = [Line2D([], [], color="k", ls="--", marker="o", ms=5, lw=1, label="Original")]
    fam += [Line2D([], [], marker="o", ls="", color=PARETO_FAMILIES[k][1], label=PARETO_FAMILIES[k][0]) for k in kinds]
    if summary.get("static_frontier"):
        fam.append(Line2D([], [], color=PARETO_FAMILIES["best_static"][1], alpha=0.45, marker=".",
                          label="static frontier (val-chosen, test)"))
    marks = [Line2D([], [], marker=markers[b], ls="", color="0.35", mfc="none", label=b) for b in order]
    if any(p["budget"] is None for p in _pareto_points(summary, panels[-1][0], budgets) if p["kind"] != "baseline"):
        marks.append(Line2D([], [], marker=NO_BUDGET_MARKER, ls="", color="0.35", mfc="none", label="none"))
    fig.legend(handles=fam, loc="upper left", bbox_to_anchor=(0.81, 0.92), fontsize=8, frameon=False,
               title="family (colour)", title_fontsize=8, alignment="left")
    if marks:
        fig.legend(handles=marks, loc="upper left", bbox_to_anchor=(0.81, 0.5), fontsize=8, frameon=False,
                   title="transformer FLOPs budget (marker)", title_fontsize=8, alignment="left")
    na = na_agents(summary)
    if na:  # no point to draw: said beside the legends
        fig.text(0.81, 0.12, "agent n/a (no images):\n" + "\n".join(
            f"{e.get('agent_row', 'agent')}: {e['agent'].removeprefix('n/a: ')}" for e in na), fontsize=7, va="top",
            wrap=True)
    fig.suptitle(f"test prompts, mean ± 95% CI clustered by prompt ({summary['num_prompts']} prompts); colour = family, "
                 f"marker = budget", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
