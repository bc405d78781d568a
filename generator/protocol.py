"""The step-wise generation protocol every backend implements, documented once.

A backend makes an image scale by scale, with an explicit state that the caller owns::

    state = gen.start(prompts, seeds)                 # text encoding, KV prefill
    while not state.finished:
        k, n = state.scale_index, state.num_scales
        report = gen.step(state, schedule.ratio(k, n, state))   # one scale
    images_B3HW = gen.decode(state)                   # float in [0, 1]

A ratio ``0 <= r < 1`` runs cached token pruning on a fraction r of the scale's tokens (forward the
tokens farthest from the map's mean, fill the rest from the cached output of an earlier scale);
``r >= 1`` skips the scale (no forward pass, nothing added to the KV cache, no codes), exactly the
semantics of the seed pipeline's ``get_pruning_ratio``. ``drop_unconditional=True`` runs the scale
without the unconditional classifier-free-guidance branch (half the compute of that scale).

FLOPs are analytic and per image (multiply-add = 2 FLOPs): ``schedule_flops`` gives a ratio list's
per-scale cost without generating anything, ``flops_full`` the unpruned image's transformer cost
(prefill included), the denominator of every "FLOPs fraction" the env and its reward use (the
"transformer fraction": the compute pruning acts on). An image also costs its decoder pass
(``decode_flops``) and the text encoding outside the transformer's prefill (``text_flops``), the
same for every schedule; :func:`total_flops_fraction` counts them too (the "total fraction": an
image's whole compute), which is what claims about an image's cost must use.

Two implementations: :class:`embedded.generator.NextScaleGenerator` (the shipped CPU model) and
:class:`infinity_backend.generator.InfinityGenerator` (Infinity-2B on a GPU). Env, agents, evaluation
and ``generate.py`` use only what is in this module (and ``generator.backends`` to build one by name).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class StepReport:
    """What one scale cost and did (per image; FLOPs are for one image)."""

    scale_index: int
    width: int
    height: int
    tokens: int
    ratio: float
    kept: int
    skipped: bool
    unconditional: bool
    flops: float

    def to_dict(self) -> dict:
        return asdict(self)


class StateProgress:
    """Progress properties shared by the generation states of every backend (needs ``num_scales``,
    ``scale_index``, ``prompts``, ``codes``, ``reports`` and ``flops_prefill``)."""

    @property
    def finished(self) -> bool:
        return self.scale_index >= self.num_scales

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def flops_used(self) -> float:
        """Per-image FLOPs so far, prefill included."""
        return self.flops_prefill + sum(r.flops for r in self.reports)

    def record_skip(self, width: int, height: int, ratio: float) -> "StepReport":
        """Skip the current scale (ratio >= 1): no forward pass, no codes, nothing appended to the KV cache."""
        k = self.scale_index
        report = StepReport(k, width, height, width * height, ratio, 0, True, False, 0.0)
        self.codes[k] = None
        self.reports.append(report)
        self.scale_index += 1
        return report




def validate_ratio(ratio: float) -> float:
    """A pruning ratio as the user's get_pruning_ratio returns it; anything else is a ValueError."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"pruning ratio must be a number (0 <= r < 1 prunes, r >= 1 skips), got {ratio!r}") from None
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"pruning ratio must be finite and >= 0 (0 <= r < 1 prunes a fraction r of the "
                         f"tokens, r >= 1 skips the scale), got {ratio!r}")
    return r


def check_prompts_and_seeds(prompts: list[str] | str, seeds: list[int] | int) -> tuple[list[str], list[int]]:
    """A batch of non-empty prompts and one seed per prompt (a single int seed is shared by all)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(seeds, int):
        seeds = [seeds] * len(prompts)
    if len(prompts) == 0:
        raise ValueError("need at least one prompt")
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompts must be non-empty strings, got {p!r}")
    return list(prompts), list(seeds)


def scale_seed(seed: int, scale_index: int) -> int:
    """Independent, reproducible RNG stream per (image seed, scale)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, scale_index]).generate_state(1, np.uint64)[0] >> 1)


@runtime_checkable
class GenerationProgress(Protocol):
    """What every backend's state exposes to schedules, observations and reports (read-only for them)."""

    prompts: list[str]
    seeds: list[int]
    num_scales: int
    scale_index: int
    codes: list
    reports: list[StepReport]
    flops_prefill: float
    last_entropy_B: torch.Tensor | None

    @property
    def finished(self) -> bool: ...

    @property
    def batch(self) -> int: ...

    @property
    def flops_used(self) -> float: ...

    def copy(self) -> "GenerationProgress": ...


@runtime_checkable
class PerScaleGenerator(Protocol):
    """A next-scale generator driven one scale per call. Units: FLOPs per image; images in [0, 1]."""

    backend: str

    @property
    def num_scales(self) -> int: ...

    @property
    def scale_sides(self) -> tuple: ...

    @property
    def scale_widths(self) -> tuple[int, ...]:
        """Token-map width per scale: the keys of ``"width:ratio"`` schedule strings."""

    @property
    def max_entropy(self) -> float:
        """Entropy (nats) of a uniform token distribution: normalises ``state.last_entropy_B``."""

    def fingerprint(self) -> str:
        """Identifies what images this generator makes (reference caches, run configs)."""

    def schedule_flops(self, ratios: list[float], unconditional: list[bool] | None = None) -> list[float]:
        """Per-scale transformer FLOPs of one image for a ratio list (analytic, no generation)."""

    def flops_full(self) -> float:
        """Transformer FLOPs of one unpruned image (prefill + every scale)."""

    def uses_unconditional(self, scale_index: int) -> bool:
        """Whether scale ``scale_index`` runs the unconditional CFG branch unless the step drops it."""

    def flops_fraction(self, ratios: list[float], unconditional: list[bool] | None = None) -> float:
        """Transformer FLOPs of a ratio list as a fraction of ``flops_full()``."""

    def decode_flops(self) -> float:
        """FLOPs of decoding one image's accumulated codes into pixels (the VQ/VAE decoder); the
        same for every schedule (a skipped scale still leaves a latent map to decode)."""

    def text_flops(self) -> float:
        """FLOPs of encoding one image's prompt that ``flops_full()`` does NOT already count (a text
        encoder outside the transformer, e.g. Infinity's T5); 0 where the prefill includes it."""

    def start(self, prompts: list[str] | str, seeds: list[int] | int) -> GenerationProgress:
        """Encode the prompts and prefill; the returned state is at scale 0."""

    def step(self, state: GenerationProgress, ratio: float, drop_unconditional: bool = False) -> StepReport:
        """Run scale ``state.scale_index`` with ``ratio``; advances ``state`` in place."""

    def decode(self, state: GenerationProgress) -> torch.Tensor:
        """The image of the codes accumulated so far, (B, 3, H, W) float in [0, 1]."""

    def decode_scale(self, state: GenerationProgress, scale_index: int) -> torch.Tensor | None:
        """Scale k's own contribution decoded alone (None if skipped)."""

    def scale_latents(self, state: GenerationProgress, scale_index: int):
        """(contribution at latent resolution, codes at the scale's resolution), or None if skipped."""

    def accumulated_codes(self, state: GenerationProgress) -> torch.Tensor:
        """The latent code map accumulated so far, (B, C, h, w)."""

    def generate(self, prompts: list[str] | str, seeds: list[int] | int, schedule=None):
        """Whole generation with a schedule: (images_B3HW, final state)."""


def total_flops_full(generator: PerScaleGenerator) -> float:
    """One unpruned image's whole compute: transformer (prefill included) + decoder + text encoder."""
    return generator.flops_full() + generator.decode_flops() + generator.text_flops()


def total_fraction_of_used(generator: PerScaleGenerator, transformer_flops_used: float) -> float:
    """An image's total compute as a fraction of the unpruned image's, from its transformer FLOPs
    (``state.flops_used``): (used + decoder + text) / (full + decoder + text)."""
    fixed = generator.decode_flops() + generator.text_flops()
    return (float(transformer_flops_used) + fixed) / (generator.flops_full() + fixed)


def total_flops_fraction(generator: PerScaleGenerator, ratios: list[float],
                         unconditional: list[bool] | None = None) -> float:
    """Total-compute fraction of a schedule: (transformer + decoder + text) / (unpruned transformer +
    decoder + text). ``generator.flops_fraction`` is the transformer-only fraction of the same schedule."""
    used = generator.flops_fraction(ratios, unconditional) * generator.flops_full()
    return total_fraction_of_used(generator, used)
