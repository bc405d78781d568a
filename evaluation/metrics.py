"""Per-image metrics vs the unpruned image and the prompt (PSNR, SSIM, LPIPS, CLIP score, ImageReward, HPSv2).

Their statistics (mean, 95% CI, paired tests, clustered by prompt) are ``rewards.stats``."""

from __future__ import annotations

from dataclasses import dataclass

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
