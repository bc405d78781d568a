"""Reports of a comparison: Markdown table, CSV, JSON, Pareto plot, image grid."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from generator.images import image_grid  # noqa: F401 (moved to generator.images; re-exported)
from generator.weights_io import atomic_write_bytes

TABLE_METRICS = (("flops_fraction", "FLOPs frac"), ("latency_ms", "latency ms"), ("psnr", "PSNR dB"), ("ssim", "SSIM"),
                 ("lpips", "LPIPS"), ("clip_score", "CLIP"), ("reward", "reward"))


def _fmt(a: dict | None, digits: int = 3) -> str:
    if not a or a["n"] == 0 or a["mean"] != a["mean"]:
        return "n/a"
    if math.isinf(a["mean"]):
        return "inf"
    ci = "" if a["ci95"] != a["ci95"] else f" ± {a['ci95']:.{digits}f}"
    return f"{a['mean']:.{digits}f}{ci}"


def markdown_table(summary: dict) -> str:
    head = "| method | " + " | ".join(t for _, t in TABLE_METRICS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_METRICS) + 1)]
    for name, m in summary["methods"].items():
        cells = [_fmt(m["metrics"].get(k), 2 if k in ("latency_ms", "psnr", "clip_score") else 3) for k, _ in TABLE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± 95% CI over {summary['num_images']} images ({summary['num_prompts']} test prompts × seeds "
                 f"{summary['seeds']}). PSNR/SSIM/LPIPS vs Original (Original's PSNR is inf: identical). reward = the "
                 f"run's reward (FLOPs saved + quality terms + budget penalty).")
    for metric, why in summary.get("unavailable", {}).items():
        lines.append(f"- {metric}: {why}")
    for name, comp in summary.get("paired", {}).items():
        parts = [f"{k} {c['mean_diff']:+.4f} ± {c['ci95']:.4f} (p={c['p_ttest']:.3g}, better on {c['wins']}/{c['n']})"
                 for k, c in comp.items() if c["n"] > 1]
        lines.append(f"- paired {name}: " + "; ".join(parts))
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


def pareto_plot(summary: dict, path: Path, extra_points: dict | None = None) -> None:
    """Quality (SSIM and CLIP score) vs FLOPs fraction, one point per method (95% CI error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "ssim", "SSIM vs Original"), (axes[1], "clip_score", "CLIP score")):
        if extra_points:
            for name, pts in extra_points.items():
                xs = [p[0] for p in pts if metric in p[1]]
                ys = [p[1][metric] for p in pts if metric in p[1]]
                ax.scatter(xs, ys, s=8, alpha=0.35, label=name)
        for name, m in summary["methods"].items():
            f, q = m["metrics"].get("flops_fraction"), m["metrics"].get(metric)
            if not f or not q or q["n"] == 0 or math.isinf(q["mean"]):
                continue
            ax.errorbar(f["mean"], q["mean"], xerr=f["ci95"] if f["ci95"] == f["ci95"] else None,
                        yerr=q["ci95"] if q["ci95"] == q["ci95"] else None, fmt="o", capsize=3, label=name)
        ax.set_xlabel("FLOPs fraction of unpruned")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
