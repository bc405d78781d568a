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
