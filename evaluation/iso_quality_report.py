"""The iso-quality summary as files: ``iso.json`` (everything), ``iso.md`` (the headline table and each
family's candidates) and ``iso.png`` (validation loss against transformer FLOPs per family, the
tolerances as lines and each operating point marked). See ``evaluation.iso_quality``."""

from __future__ import annotations

import io
import math
from pathlib import Path

from generator.weights_io import atomic_write_bytes, atomic_write_json, jsonable


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _speedup(s: dict) -> str:
    if not math.isfinite(s["lo"]):
        return f"{s['point']:.2f}x"
    return f"{s['point']:.2f}x [{s['lo']:.2f}, {s['hi']:.2f}]"


def _delta(d: dict | None) -> str:
    if not d or d.get("mean_diff") is None or not math.isfinite(d["mean_diff"]):
        return "n/a"
    ci = d.get("ci95")
    return f"{d['mean_diff']:+.3f}" + ("" if ci is None or not math.isfinite(ci) else f" ± {ci:.3f}")


def headline_table(summary: dict) -> str:
    """method | tolerance | op. point | FLOPs | speed-ups with bootstrap CIs | validation and test loss."""
    lines = ["| method | tolerance | op. point | transformer FLOPs | total FLOPs | speed-up transformer (1/FLOPs) "
             "[95% CI] | speed-up total [95% CI] | val Δattr | test Δattr ± 95% CI | transformer saving vs "
             "static_frontier [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, fam in summary["families"].items():
        for op in fam["operating_points"]:
            ok = "" if op["test_within_tolerance"] else " (outside on test)"
            lines.append(f"| {name} | {op['tolerance']:g} | {op['point']} | {op['transformer']:.3f} | {op['total']:.3f} | "
                         f"{_speedup(op['transformer_speedup'])} | {_speedup(op['total_speedup'])} | "
                         f"{op['val_delta_attr']:+.3f} | {_delta(op['test_delta_attr'])}{ok} | {_versus(op)} |")
    return "\n".join(lines)


def _versus(op: dict) -> str:
    v = op.get("vs_static_frontier")
    if not v:
        return "—"
    t = v["transformer"]
    return f"{t['point']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]"


def candidates_table(name: str, fam: dict) -> str:
    lines = [f"#### {name}" + (f" ({fam['note']})" if fam.get("note") else ""), "",
             "| candidate | transformer FLOPs | total FLOPs | val Δattr ± 95% CI |", "|---|---|---|---|"]
    for c in fam["candidates"]:
        if "val_delta_attr" in c:
            lines.append(f"| {c['label']} | {_num(c['transformer'])} | {_num(c['total'])} | {_delta(c['val_delta_attr'])} |")
        else:
            lines.append(f"| {c['label']} | n/a | n/a | {c.get('note') or 'n/a'} |")
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    st, orig = summary["settings"], summary["original"]
    head = ["## Iso-quality speed-up (DomainEval attribute accuracy within a tolerance of Original's)", "",
            headline_table(summary), "",
            f"Operating point: the cheapest candidate whose validation loss (Original's attribute accuracy minus its "
            f"own, mean over prompts) is within the tolerance; chosen on {st['val']}, reported on {st['test']}. "
            f"Speed-up = 1 / FLOPs fraction (transformer: what pruning acts on; total: + VQ decoder + text encoder), "
            f"percentile interval of {st['n_boot']} bootstrap replicates over prompts (seed {st['seed']}) that "
            f"re-choose the point on resampled validation prompts and measure it on resampled test prompts. "
            f"Δattr = attribute accuracy minus Original's (test: prompt-clustered t interval). Original: "
            f"validation {orig['val_attr']['mean']:.3f}, test {orig['test_attr']['mean']:.3f}. "
            f"\"none within tolerance (Original)\": no candidate is (the point is Original, 1.00x). Saving vs "
            f"static_frontier: the transformer FLOPs saving minus the static frontier's at the same tolerance, with "
            f"the percentile interval of the paired replicates (the same resampled prompts for every family).", ""]
    body = ["### Candidates on validation", ""]
    for name, fam in summary["families"].items():
        body += [candidates_table(name, fam), ""]
    ss = summary.get("static_search", {})
    if ss:
        body.append(f"Static candidates: {ss['grid_size']} near-lossless schedules (one-scale modifications with ratios "
                    f"{st['one_scale_ratios']}, CFG drop {'allowed' if st['allow_cfg_drop'] else 'not allowed'}; "
                    f"two-scale: every pair of scales pruned at {st['two_scale_ratios']}, CFG kept), ranked by QUALITY on validation; the "
                    f"{ss['frontier_size']} on its Pareto frontier are the candidates ({ss['generated']} generated now).")
    body.append(f"Wall clock {summary.get('wall_s', 'n/a')} s; {summary['estimate']['line']}.")
    return "\n".join(head + body)


def iso_plot(summary: dict, path: Path) -> None:
    """Validation Δattr (± 95% CI) against transformer FLOPs, one line per family, the tolerances as
    dashed lines, each family's operating points circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, fam) in enumerate(summary["families"].items()):
        pts = sorted((c["transformer"], c["val_delta_attr"]["mean_diff"], c["val_delta_attr"]["ci95"], c["label"])
                     for c in fam["candidates"] if "val_delta_attr" in c)
        if not pts:
            continue
        colour = f"C{i}"
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] if math.isfinite(p[2]) else 0 for p in pts],
                    fmt="-o", ms=4, lw=1, capsize=2, color=colour, label=name)
        for op in fam["operating_points"]:
            hit = [p for p in pts if p[3] == op["point"]]
            if hit:
                ax.plot(hit[0][0], hit[0][1], "o", ms=11, mfc="none", mec=colour, mew=1.5)
    for t in summary["settings"]["tolerances"]:
        ax.axhline(-t, color="0.4", ls="--", lw=0.8)
        ax.text(0.99, -t, f"−{t:g}", transform=ax.get_yaxis_transform(), ha="right", va="top", fontsize=7, color="0.3")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("transformer FLOPs fraction (validation)")
    ax.set_ylabel("DomainEval attribute accuracy − Original's (validation)")
    ax.set_title("iso-quality candidates; circled: operating points", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_iso_report(summary: dict, out: Path) -> str:
    """Write OUT/iso.json, iso.md and iso.png; return the Markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(summary)
    atomic_write_json(out / "iso.json", jsonable(summary))
    atomic_write_bytes(out / "iso.md", (text + "\n").encode())
    iso_plot(summary, out / "iso.png")
    return text + f"\n\nwrote {out}/iso.json, iso.md, iso.png"
