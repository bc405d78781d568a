"""Per-image metrics vs the unpruned image and the prompt, and their statistics (mean, 95% CI, paired tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rewards.similarity import psnr, ssim

METRICS = ("psnr", "ssim", "lpips", "clip_score", "image_reward", "hpsv2")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clip_score": True, "image_reward": True, "hpsv2": True,
                    "flops_fraction": False, "latency_ms": False, "reward": True}


@dataclass
class MetricSuite:
    """The scorers available in this session; None entries are reported as unavailable (with why)."""

    clip: object | None
    lpips: object | None
    lpips_why: str = ""
    image_reward: object | None = None
    image_reward_why: str = "not requested (--image-reward)"
    hpsv2: object | None = None  # evaluation.preference.HPSv2Scorer
    hpsv2_why: str = "not requested (--hpsv2-checkpoint PATH)"

    @classmethod
    def build(cls, clip_model: str | None = None, clip_pretrained: str | None = None, lpips_net: str = "alex",
              lpips_backbone: str | None = None, image_reward: bool = False,
              hpsv2_checkpoint: str | None = None) -> "MetricSuite":
        """Every scorer asked for; an explicit LPIPS backbone or HPSv2 checkpoint that does not work is an error."""
        from rewards import ClipScorer, LpipsMetric, LpipsUnavailable

        clip = ClipScorer.embedded() if clip_model is None else ClipScorer.from_pretrained(clip_model, clip_pretrained)
        try:
            lp, why = LpipsMetric(lpips_net, lpips_backbone), ""
        except LpipsUnavailable as e:
            if lpips_backbone is not None:  # an explicit path that does not work is an error, not a silent gap
                raise
            lp, why = None, f"unavailable: {e}"
        ir, ir_why = None, "not requested (--image-reward)"
        if image_reward:
            ir, ir_why = load_image_reward()
        hps = None
        if hpsv2_checkpoint is not None:
            from evaluation.preference import HPSv2Scorer

            hps = HPSv2Scorer(hpsv2_checkpoint)
        return cls(clip, lp, why, ir, ir_why, hps, "" if hps is not None else "not requested (--hpsv2-checkpoint PATH)")

    def unavailable(self) -> dict[str, str]:
        out = {}
        if self.lpips is None:
            out["lpips"] = self.lpips_why
        if self.image_reward is None:
            out["image_reward"] = self.image_reward_why
        if self.hpsv2 is None:
            out["hpsv2"] = self.hpsv2_why
        return out

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], references: torch.Tensor | None) -> list[dict]:
        """One dict per image; reference-based metrics only where a reference is given."""
        rows = [dict() for _ in range(images.shape[0])]
        if references is not None:
            for name, values in (("psnr", psnr(images, references)), ("ssim", ssim(images, references))):
                for r, v in zip(rows, values.tolist()):
                    r[name] = float(v)
            if self.lpips is not None:
                for r, v in zip(rows, self.lpips(images, references).tolist()):
                    r["lpips"] = float(v)
        for r, v in zip(rows, self.clip.score(images, prompts).tolist()):
            r["clip_score"] = float(v)
        if self.image_reward is not None:
            for r, v in zip(rows, self.image_reward(images, prompts)):
                r["image_reward"] = float(v)
        if self.hpsv2 is not None:
            for r, v in zip(rows, self.hpsv2(images, prompts)):
                r["hpsv2"] = float(v)
        return rows


def load_image_reward():
    """(scorer, "") if the ImageReward package and its weights are usable, else (None, why)."""
    try:
        import ImageReward as RM  # noqa: N813
    except ImportError:
        return None, "not installed: `pip install image-reward` (and its weights, which it downloads on first use)"
    try:
        model = RM.load("ImageReward-v1.0")
    except Exception as e:  # noqa: BLE001 - any failure to fetch/load the weights is reported, not raised
        return None, f"installed but its weights could not be loaded ({type(e).__name__}: {e})"

    def score(images: torch.Tensor, prompts: list[str]) -> list[float]:
        from PIL import Image

        from generator.images import to_uint8

        out = []
        for img, p in zip(images, prompts):
            out.append(float(model.score(p, Image.fromarray(to_uint8(img)))))
        return out

    return score, ""


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


# ---- statistics clustered by prompt -----------------------------------------------------------------
# The images of a comparison are prompts x seeds, and images of one prompt are not independent (a hard
# prompt is hard at every seed). Every CI and test of the compare mode therefore treats the PROMPT as
# the unit: the values of a prompt's seeds are averaged first, then a t interval / t test runs over the
# prompt means (equal seeds per prompt make the mean of prompt means the plain mean of all images).


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
