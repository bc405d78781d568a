"""Classifier-free guidance as small composable functions (after Hackable Diffusion's GuidanceFn).

A guidance function answers two questions for scale ``k`` of ``n``: does it need the unconditional
branch at all (if not, the sampler does not run it, halving that scale's compute), and how are the
conditional and unconditional logits combined. The sampler loop knows nothing else about guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GuidanceFn(Protocol):
    def needs_unconditional(self, scale_index: int, num_scales: int) -> bool: ...

    def __call__(self, cond_BLV: torch.Tensor, uncond_BLV: torch.Tensor | None,
                 scale_index: int, num_scales: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class NoGuidance:
    """Conditional logits only."""

    def needs_unconditional(self, scale_index: int, num_scales: int) -> bool:
        return False

    def __call__(self, cond_BLV, uncond_BLV, scale_index, num_scales):
        return cond_BLV


@dataclass(frozen=True)
class ScalarGuidance:
    """logits = uncond + scale * (cond - uncond); scale 1 is plain conditional sampling."""

    scale: float = 3.0

    def __post_init__(self) -> None:
        if not (self.scale == self.scale and abs(self.scale) != float("inf")):
            raise ValueError(f"guidance scale must be finite, got {self.scale}")

    def needs_unconditional(self, scale_index: int, num_scales: int) -> bool:
        return self.scale != 1.0

    def __call__(self, cond_BLV, uncond_BLV, scale_index, num_scales):
        if uncond_BLV is None:
            return cond_BLV
        return uncond_BLV + self.scale * (cond_BLV - uncond_BLV)


@dataclass(frozen=True)
class LimitedIntervalGuidance:
    """Apply ``inner`` only on scales first..last (inclusive); plain conditional elsewhere."""

    inner: GuidanceFn
    first: int = 0
    last: int = 10**9

    def _inside(self, scale_index: int) -> bool:
        return self.first <= scale_index <= self.last

    def needs_unconditional(self, scale_index: int, num_scales: int) -> bool:
        return self._inside(scale_index) and self.inner.needs_unconditional(scale_index, num_scales)

    def __call__(self, cond_BLV, uncond_BLV, scale_index, num_scales):
        if not self._inside(scale_index) or uncond_BLV is None:
            return cond_BLV
        return self.inner(cond_BLV, uncond_BLV, scale_index, num_scales)


def guidance_from_cfg(cfg: float, first: int | None = None, last: int | None = None) -> GuidanceFn:
    """The usual CLI knob: cfg (1 = off) optionally limited to scales [first, last]."""
    g: GuidanceFn = ScalarGuidance(cfg) if cfg != 1.0 else NoGuidance()
    if first is not None or last is not None:
        g = LimitedIntervalGuidance(g, 0 if first is None else first, 10**9 if last is None else last)
    return g
