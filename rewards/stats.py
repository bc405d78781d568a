"""Statistics over per-image scores: mean with a t interval, paired tests, and both clustered by prompt.

One implementation for every part that reports a score with a confidence interval: the compare mode's
scoreboard and the folder mode (``evaluation``), and DomainEval (``judge``). It lives in ``rewards``, the
lowest layer that is about scoring images, because ``judge`` sits right above ``rewards`` and below
``evaluation`` and must not import ``evaluation``; it needs nothing of the project, only numpy and scipy.

The images of a comparison are prompts x seeds, and images of one prompt are not independent (a hard
prompt is hard at every seed). The clustered functions therefore treat the PROMPT as the unit: the values
of a prompt's seeds are averaged first, then a t interval / t test runs over the prompt means (equal seeds
per prompt make the mean of prompt means the plain mean of all images).
"""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the t confidence interval, n); NaN/inf values are left out of both."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    if v.size == 1:
        return float(v[0]), float("nan"), 1
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), half, int(v.size)


def paired(a: list[float], b: list[float]) -> dict:
    """Paired comparison a - b over images where both are finite: mean diff, 95% CI, t-test and Wilcoxon p."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return {"n": len(pairs), "mean_diff": float("nan"), "ci95": float("nan"), "p_ttest": float("nan"),
                "p_wilcoxon": float("nan"), "wins": 0}
    from scipy import stats

    d = np.asarray([x - y for x, y in pairs])
    mean, half, n = mean_ci(d.tolist())
    # a (numerically) constant difference has no t statistic: report NaN rather than scipy's precision warning
    varies = d.std() > 1e-9 * max(1.0, float(np.abs(d).max()))
    p_t = float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue) if varies else float("nan")
    p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else float("nan")
    return {"n": n, "mean_diff": mean, "ci95": half, "p_ttest": p_t, "p_wilcoxon": p_w, "wins": int((d > 0).sum())}


# ---- statistics clustered by prompt (module docstring) ----------------------------------------------


def duplicates(values: list) -> list:
    """The values that occur more than once, in first-occurrence order."""
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


def check_unique(what: str, values: list) -> None:
    """ValueError naming the repeated entries (duplicates would count one image twice in every statistic)."""
    dup = duplicates(values)
    if dup:
        raise ValueError(f"duplicate {what}: {', '.join(repr(d) for d in dup)} (each must appear once; a duplicate "
                         f"would count the same images twice and shrink every confidence interval)")


def cluster_means(values: list[float | None], clusters: list) -> tuple[list, np.ndarray]:
    """(cluster ids in first-occurrence order, mean of each cluster's finite values; NaN if none)."""
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    order: list = []
    groups: dict = {}
    for v, c in zip(values, clusters):
        if c not in groups:
            groups[c] = []
            order.append(c)
        if v is not None and math.isfinite(v):
            groups[c].append(float(v))
    return order, np.asarray([np.mean(groups[c]) if groups[c] else np.nan for c in order], dtype=np.float64)


def clustered_mean_ci(values: list[float | None], clusters: list, confidence: float = 0.95) -> dict:
    """Mean and t-interval half-width over cluster (prompt) means: {mean, ci95, n (clusters), n_images}.

    Non-finite values are left out (a cluster with none is left out entirely)."""
    _, m = cluster_means(values, clusters)
    m = m[np.isfinite(m)]
    n_img = sum(1 for v in values if v is not None and math.isfinite(v))
    mean, half, n = mean_ci(m.tolist(), confidence)
    return {"mean": mean, "ci95": half, "n": n, "n_images": n_img}


def clustered_paired(a: list[float | None], b: list[float | None], clusters: list, confidence: float = 0.95) -> dict:
    """Paired comparison a - b clustered by prompt: per-image differences (where both are finite) are
    averaged within each prompt; mean difference, t half-width, one-sample t test and Wilcoxon signed-rank
    p over the prompt means; ``wins`` = prompts whose mean difference is > 0."""
    if not (len(a) == len(b) == len(clusters)):
        raise ValueError(f"paired lists differ in length: {len(a)}, {len(b)}, {len(clusters)}")
    d = [None if (x is None or y is None or not math.isfinite(x) or not math.isfinite(y)) else x - y
         for x, y in zip(a, b)]
    _, m = cluster_means(d, clusters)
    m = m[np.isfinite(m)]
    out = {"n": int(m.size), "n_images": sum(v is not None for v in d), "mean_diff": float("nan"),
           "ci95": float("nan"), "p_ttest": float("nan"), "p_wilcoxon": float("nan"), "wins": int((m > 0).sum())}
    if m.size < 2:
        if m.size == 1:
            out["mean_diff"] = float(m[0])
        return out
    from scipy import stats

    mean, half, _ = mean_ci(m.tolist(), confidence)
    out.update(mean_diff=mean, ci95=half)
    if m.std() > 1e-12 * max(1.0, float(np.abs(m).max())):  # a constant difference has no t statistic
        out["p_ttest"] = float(stats.ttest_1samp(m, 0.0).pvalue)
    if np.any(m != 0):
        out["p_wilcoxon"] = float(stats.wilcoxon(m).pvalue)
    return out
