"""The reward: FLOPs saved per step, quality vs the unpruned image at the end, an optional budget.

For an episode that spends ``u`` (fraction of the unpruned FLOPs) and ends in image ``x`` with
unpruned reference ``x0`` for prompt ``p``:

    step reward at scale k  = flops_weight * (F0_k - F_k) / F0            (sums to flops_weight * (1 - u))
    terminal reward         = clip_weight  * (CLIP(x, p) - CLIP(x0, p))   (CLIP score points, 0..100)
                            - ssim_weight  * (1 - SSIM(x, x0))
                            - lpips_weight * LPIPS(x, x0)
                            - psnr_weight  * (1 - min(PSNR(x, x0), psnr_cap_db) / psnr_cap_db)
                            - budget_penalty * max(0, u - b)              (b = the episode's budget, else flops_budget)

Every quality term is exactly 0 when nothing is pruned (x == x0), so an all-zero episode scores 0.

The lossless objective (``objective="iso-quality"``, ``train.py --objective iso-quality``) minimises
FLOPs subject to staying within ``epsilon`` of the unpruned image's quality instead of buying quality
under a budget:

    step reward at scale k  = flops_weight * (F0_k - F_k) / F0            (as above)
    terminal reward         = - lossless_penalty * max(0, L - epsilon)    L = -quality >= 0

where the quality's CLIP term is capped at 0 (``clip_weight * min(0, CLIP(x, p) - CLIP(x0, p))``): an
image more "CLIP-typical" than the unpruned one is not better than it, so the quality loss L is >= 0
and exactly 0 for the unpruned image.
The quality terms are written once, in ``RewardConfig.quality`` (the reward and the evaluation's
``QualityScorer`` both use it); the FLOPs term in ``RewardConfig.flops_bonus``, the budget term in
``RewardConfig.close``, and an episode's sum of both in ``RewardConfig.episode_reward`` (the env's step
and terminal rewards and the scoreboard's reward column all call these).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from rewards.similarity import psnr, ssim


OBJECTIVES = ("budget", "iso-quality")


@dataclass
class RewardConfig:
    """Weights of the reward terms (formulas in the module docstring and the README).

    flops_weight: reward per unit of FLOPs fraction saved (1.0 = saving all compute is worth 1).
    clip_weight: per CLIP-score point (100 * cosine) gained vs the unpruned image.
    ssim_weight, lpips_weight, psnr_weight: penalties on 1 - SSIM, LPIPS, and the PSNR shortfall.
    psnr_cap_db: PSNR at or above which an image counts as perfect (identical images have inf).
    flops_budget: target FLOPs fraction in (0, 1]; None disables the budget term.
    budget_penalty: penalty per unit of FLOPs fraction above the budget.
    objective: "budget" (quality under a FLOPs budget, the terms above) or "iso-quality" (FLOPs saved,
        minus lossless_penalty per unit of quality loss beyond epsilon; the CLIP term capped at 0).
    epsilon: iso-quality: the quality loss (units of the quality terms) that costs nothing.
    lossless_penalty: iso-quality: penalty per unit of quality loss beyond epsilon.
    """

    flops_weight: float = 1.0
    clip_weight: float = 0.0
    ssim_weight: float = 0.0
    lpips_weight: float = 0.0
    psnr_weight: float = 0.0
    psnr_cap_db: float = 40.0
    flops_budget: float | None = None
    budget_penalty: float = 5.0
    objective: str = "budget"
    epsilon: float = 0.1
    lossless_penalty: float = 10.0

    @classmethod
    def embedded(cls, **overrides) -> "RewardConfig":
        """Preset for the shipped tiny model: CLIP + SSIM (LPIPS needs ImageNet weights, absent offline),
        with a FLOPs budget just under FastVAR's (0.347 of the unpruned FLOPs on the embedded model), so
        the agent learns the best quality it can buy for FastVAR's compute."""
        return cls(**{"flops_weight": 1.0, "clip_weight": 0.02, "ssim_weight": 1.0, "flops_budget": 0.34,
                      "budget_penalty": 5.0, **overrides})

    @classmethod
    def embedded_budget(cls, **overrides) -> "RewardConfig":
        """Preset for a budget-conditioned agent on the shipped model: quality alone (CLIP change + SSIM),
        no FLOPs bonus; the episode's budget is the constraint (kept by the env's budget guard, and a
        penalty beyond it for schedules the guard does not cover)."""
        return cls(**{"flops_weight": 0.0, "clip_weight": 0.02, "ssim_weight": 1.0, "flops_budget": None,
                      "budget_penalty": 5.0, **overrides})

    @classmethod
    def embedded_iso(cls, **overrides) -> "RewardConfig":
        """Preset for the lossless objective on the shipped model: FLOPs saved, minus 10 per unit of quality
        loss (CLIP change capped at 0 + SSIM) beyond 0.1 (about dropping the CFG branch at the last scale,
        which loses 0.09 of QUALITY on validation prompts); no budget."""
        return cls(**{"flops_weight": 1.0, "clip_weight": 0.02, "ssim_weight": 1.0, "flops_budget": None,
                      "objective": "iso-quality", "epsilon": 0.1, "lossless_penalty": 10.0, **overrides})

    @classmethod
    def infinity(cls, **overrides) -> "RewardConfig":
        """Preset for Infinity-2B: CLIP (ViT-L-14) + LPIPS, FLOPs budget at FastVAR's share (~0.37)."""
        return cls(**{"flops_weight": 1.0, "clip_weight": 0.02, "lpips_weight": 1.0, "flops_budget": 0.37,
                      "budget_penalty": 5.0, **overrides})

    def validate(self) -> "RewardConfig":
        if self.objective not in OBJECTIVES:
            raise ValueError(f"reward objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "iso-quality" and self.flops_budget is not None:
            raise ValueError(f"the iso-quality objective has no FLOPs budget: flops_budget must be None, got "
                             f"{self.flops_budget!r}")
        for name in ("flops_weight", "clip_weight", "ssim_weight", "lpips_weight", "psnr_weight", "budget_penalty",
                     "epsilon", "lossless_penalty"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"reward {name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(self.psnr_cap_db) and self.psnr_cap_db > 0):
            raise ValueError(f"reward psnr_cap_db must be > 0, got {self.psnr_cap_db!r}")
        if self.flops_budget is not None and not (0 < self.flops_budget <= 1):
            raise ValueError(f"reward flops_budget must be in (0, 1] (fraction of unpruned FLOPs) or None, "
                             f"got {self.flops_budget!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def budget_quality(self) -> "RewardConfig":
        """This config's quality terms under the budget objective (CLIP uncapped, no FLOPs term, no budget):
        how the static search, the frontier and compare mode rank schedules whatever the run's objective,
        so an iso-quality run shares their caches. Itself for a budget-objective config."""
        if self.objective == "budget":
            return self
        return replace(self, objective="budget", flops_weight=0.0, flops_budget=None, epsilon=RewardConfig.epsilon,
                       lossless_penalty=RewardConfig.lossless_penalty)

    def quality(self, ssim, psnr, clip_delta=None, lpips=None):
        """The reward's quality terms (the module docstring's terminal reward without the budget term):

            - ssim_weight * (1 - ssim) - psnr_weight * (1 - min(psnr, psnr_cap_db) / psnr_cap_db)
            + clip_weight * clip_delta - lpips_weight * lpips

        The one place this formula is written: ``RewardFunction.terminal`` / ``terminal_batch`` and
        ``evaluation.grid_evaluation.QualityScorer`` all call it. Arguments are floats (a float comes
        back) or per-image arrays of equal length (a float64 array comes back); ssim in [0, 1], psnr in
        dB (inf for identical images), clip_delta in CLIP-score points (image's minus the reference's),
        lpips >= 0. A term given as None is left out: the reward has no CLIP / LPIPS scorer. Under the
        iso-quality objective the CLIP term is ``clip_weight * min(0, clip_delta)`` (module docstring).
        Computed in float64, in the order written (the same bits for a float and a one-element array).
        """
        s, p = np.asarray(ssim, np.float64), np.asarray(psnr, np.float64)
        q = -self.ssim_weight * (1.0 - s) - self.psnr_weight * (1.0 - np.minimum(p, self.psnr_cap_db) / self.psnr_cap_db)
        if clip_delta is not None:
            d = np.asarray(clip_delta, np.float64)
            q = q + self.clip_weight * (np.minimum(d, 0.0) if self.objective == "iso-quality" else d)
        if lpips is not None:
            q = q - self.lpips_weight * np.asarray(lpips, np.float64)
        return float(q) if q.ndim == 0 else q

    def paired_quality(self, terms: dict, baseline: dict) -> float:
        """``quality`` of ``terms`` minus ``quality`` of ``baseline`` (two images of the same prompt and
        seed, each scored against the same unpruned reference: dicts of ``ssim``, ``psnr`` and, when
        measured, ``clip_delta``, ``lpips``), with the CLIP term of the difference capped at 0: an image
        more "CLIP-typical" than the baseline earns nothing from CLIP, one less typical loses. The
        non-CLIP terms come from ``quality`` (the one formula); the CLIP term is its linear
        ``clip_weight * clip_delta`` on the difference. Exactly 0.0 for equal terms."""
        rest = (self.quality(terms["ssim"], terms["psnr"], lpips=terms.get("lpips"))
                - self.quality(baseline["ssim"], baseline["psnr"], lpips=baseline.get("lpips")))
        if terms.get("clip_delta") is not None and baseline.get("clip_delta") is not None:
            rest += min(0.0, self.clip_weight * (float(terms["clip_delta"]) - float(baseline["clip_delta"])))
        return float(rest)

    def budget_excess(self, used_fraction: float, budget: float | None = None) -> float:
        """FLOPs fraction spent above the budget (``budget``, else ``flops_budget``; 0 without either)."""
        budget = self.flops_budget if budget is None else budget
        return 0.0 if budget is None else max(0.0, float(used_fraction) - budget)

    def flops_bonus(self, flops_saved_fraction: float) -> float:
        """The FLOPs term: ``flops_weight`` times a FLOPs fraction saved (one scale's, in the env's step
        reward; the whole episode's ``1 - u``, in ``episode_reward``)."""
        return self.flops_weight * float(flops_saved_fraction)

    def close(self, quality: float, used_fraction: float, budget: float | None = None) -> float:
        """The terminal reward from its quality terms (``quality``): quality - budget_penalty * the budget
        excess; under the iso-quality objective - lossless_penalty * ``lossless_shortfall(quality)``.
        ``RewardFunction.terminal`` / ``terminal_batch`` return exactly this."""
        if self.objective == "iso-quality":
            return float(-self.lossless_penalty * self.lossless_shortfall(quality))
        return float(quality - self.budget_penalty * self.budget_excess(used_fraction, budget))

    def lossless_shortfall(self, quality: float) -> float:
        """Quality loss beyond ``epsilon``: max(0, -quality - epsilon) (the quality of the unpruned image is 0)."""
        return max(0.0, -float(quality) - self.epsilon)

    def episode_reward(self, quality: float, used_fraction: float, budget: float | None = None) -> float:
        """An episode's whole reward from its quality terms and the FLOPs fraction it spent: the step rewards'
        sum ``flops_bonus(1 - u)`` (the env sums it scale by scale, equal up to float rounding) plus the
        terminal reward ``close``. ``budget``: the episode's budget (budget-conditioned runs), else
        ``flops_budget``. What the scoreboard's "reward (run's)" column reports."""
        return self.flops_bonus(1.0 - float(used_fraction)) + self.close(quality, used_fraction, budget)


class RewardFunction:
    """Computes the reward terms; ``clip`` / ``lpips`` are needed only when their weights are > 0."""

    def __init__(self, config: RewardConfig, clip=None, lpips=None) -> None:
        self.config = config.validate()
        if config.clip_weight > 0 and clip is None:
            raise ValueError("reward clip_weight > 0 needs a CLIP scorer")
        if config.lpips_weight > 0 and lpips is None:
            raise ValueError("reward lpips_weight > 0 needs an LPIPS metric")
        self.clip = clip
        self.lpips = lpips

    def step_reward(self, flops_saved_fraction: float) -> float:
        """Reward for one scale: ``flops_weight`` times the FLOPs it saved (fraction of the full total)."""
        return self.config.flops_bonus(flops_saved_fraction)

    def terminal(self, image: torch.Tensor, reference: torch.Tensor, prompt: str, used_fraction: float,
                 reference_clip: float | None = None, budget: float | None = None) -> tuple[float, dict]:
        """Quality and budget terms at the end of an episode; returns (reward, named terms).
        ``budget`` (fraction) overrides ``flops_budget`` for this episode (budget-conditioned agents)."""
        s = float(ssim(image, reference)[0])
        p = float(psnr(image, reference)[0])
        terms: dict = {"ssim": s, "psnr": p}
        if self.clip is not None:
            score = float(self.clip.score(image, [prompt])[0])
            ref = float(self.clip.score(reference, [prompt])[0]) if reference_clip is None else float(reference_clip)
            terms.update(clip_score=score, clip_reference=ref, clip_delta=score - ref)
        if self.lpips is not None:
            terms["lpips"] = float(self.lpips(image, reference)[0])
        return self._close(terms, used_fraction, budget)

    def _close(self, terms: dict, used_fraction: float, budget: float | None) -> tuple[float, dict]:
        """(reward, terms) of one episode from its measured terms: the quality terms, then the budget term."""
        c = self.config
        quality = c.quality(terms["ssim"], terms["psnr"], clip_delta=terms.get("clip_delta"), lpips=terms.get("lpips"))
        excess = c.budget_excess(used_fraction, budget)
        terms.update(flops_fraction=float(used_fraction), budget_excess=excess, quality_reward=quality)
        return c.close(quality, used_fraction, budget), terms

    def terminal_batch(self, images: torch.Tensor, references: torch.Tensor, prompts: list[str],
                       used_fractions: list[float], reference_clips: list[float] | None = None,
                       budgets: list[float | None] | None = None) -> list[tuple[float, dict]]:
        """``terminal`` for a batch, each metric computed once for all images (SSIM, PSNR, CLIP, LPIPS on
        the (B, 3, H, W) batch); one (reward, terms) per image (``budgets``: each episode's budget, or
        None). Equal to ``terminal`` image by image up to the metrics' batch-size rounding (~1e-7)."""
        B = images.shape[0]
        budgets = [None] * B if budgets is None else list(budgets)
        if not (references.shape[0] == len(prompts) == len(used_fractions) == B):
            raise ValueError(f"terminal_batch needs one reference, prompt and FLOPs fraction per image: got "
                             f"{B} images, {references.shape[0]} references, {len(prompts)} prompts, "
                             f"{len(used_fractions)} fractions")
        s_B = ssim(images, references).tolist()
        p_B = psnr(images, references).tolist()
        clip_B = ref_B = lp_B = None
        if self.clip is not None:
            clip_B = self.clip.score(images, prompts).tolist()
            ref_B = (self.clip.score(references, prompts).tolist() if reference_clips is None
                     else [float(r) for r in reference_clips])
        if self.lpips is not None:
            lp_B = self.lpips(images, references).tolist()
        out = []
        for b in range(B):
            terms: dict = {"ssim": float(s_B[b]), "psnr": float(p_B[b])}
            if clip_B is not None:
                score, ref = float(clip_B[b]), float(ref_B[b])
                terms.update(clip_score=score, clip_reference=ref, clip_delta=score - ref)
            if lp_B is not None:
                terms["lpips"] = float(lp_B[b])
            out.append(self._close(terms, used_fractions[b], budgets[b]))
        return out
