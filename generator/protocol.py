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

Per-image decisions: ``step(state, ratios, drop_unconditional)`` also takes one ratio (and one flag)
per image of the batch. Images pruned by different amounts run in one forward pass (kept tokens
padded to the batch's maximum, padded keys masked out); an image that skips the scale while others
run it gets no codes and no KV entries for it. Each image ends where it would have ended alone with
its own ratios (same codes; floating-point values within reduction-order noise, see the tests). A
step whose images did the same thing records one :class:`StepReport`; otherwise a
:class:`BatchStepReport` with one ``StepReport`` per image (``state.image_reports(b)`` reads image
b's history either way, ``state.flops_used_per_image`` its FLOPs).

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


class MixedBatchError(ValueError):
    """A batch-level value was asked of a step (or state) whose images differ in it."""


def whole_batch_codes(state, scale_index: int):
    """Scale k's codes of the whole batch from ``state.codes`` (a backend's tensor, or a per-image list
    when the images of a mixed batch did different things there): the tensor, None if every image
    skipped the scale, :class:`MixedBatchError` if only some did."""
    codes = state.codes[scale_index]
    if isinstance(codes, list):
        raise MixedBatchError(f"only some images of this batch ran scale {scale_index}; decode them one at a time "
                              "(state.image_codes(b, k) is None for those that skipped)")
    return codes


@dataclass(frozen=True)
class BatchStepReport:
    """One scale of a batch whose images did different things: one :class:`StepReport` per image.

    ``scale_index``, ``width``, ``height`` and ``tokens`` are the batch's; ``ratio``, ``kept``,
    ``skipped``, ``unconditional`` and ``flops`` are returned only when every image agrees (a caller
    written for uniform batches then still works) and raise :class:`MixedBatchError` otherwise:
    read ``images[b]`` instead. Never reports image 0's value for the whole batch.
    """

    images: tuple[StepReport, ...]

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("a BatchStepReport needs at least one image report")

    scale_index = property(lambda self: self.images[0].scale_index)
    width = property(lambda self: self.images[0].width)
    height = property(lambda self: self.images[0].height)
    tokens = property(lambda self: self.images[0].tokens)

    def _uniform(self, name: str):
        values = [getattr(r, name) for r in self.images]
        if any(v != values[0] for v in values[1:]):
            raise MixedBatchError(f"the images of scale {self.scale_index} differ in {name!r} ({values}); "
                                  f"read report.images[b].{name} (or state.image_reports(b))")
        return values[0]

    ratio = property(lambda self: self._uniform("ratio"))
    kept = property(lambda self: self._uniform("kept"))
    skipped = property(lambda self: self._uniform("skipped"))
    unconditional = property(lambda self: self._uniform("unconditional"))
    flops = property(lambda self: self._uniform("flops"))

    def to_dict(self) -> dict:
        return {"scale_index": self.scale_index, "images": [r.to_dict() for r in self.images]}


def combine_reports(reports: list[StepReport]) -> "StepReport | BatchStepReport":
    """One StepReport when every image's report is identical, else a BatchStepReport."""
    first = reports[0]
    if all(r == first for r in reports[1:]):
        return first
    return BatchStepReport(tuple(reports))


def image_report(report: "StepReport | BatchStepReport", b: int) -> StepReport:
    """Image b's report of one scale."""
    return report.images[b] if isinstance(report, BatchStepReport) else report


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
        """Per-image FLOPs so far, prefill included; raises :class:`MixedBatchError` when the batch's
        images spent different amounts (use ``flops_used_per_image``)."""
        per = self.flops_used_per_image
        if any(f != per[0] for f in per[1:]):
            raise MixedBatchError(f"the images of this batch spent different FLOPs {per}: use state.flops_used_per_image")
        return per[0]

    @property
    def flops_used_per_image(self) -> list[float]:
        """FLOPs so far of each image (prefill included), as if it had been generated alone."""
        out = []
        for b in range(self.batch):
            out.append(self.flops_prefill + sum(image_report(r, b).flops for r in self.reports))
        return out

    def image_reports(self, b: int) -> list[StepReport]:
        """Image b's per-scale reports so far."""
        if not 0 <= b < self.batch:
            raise IndexError(f"image {b} is outside 0..{self.batch - 1}")
        return [image_report(r, b) for r in self.reports]

    def image_codes(self, b: int, scale_index: int):
        """Image b's codes of one scale (None if it skipped that scale or it has not run yet)."""
        codes = self.codes[scale_index]
        return None if codes is None else codes[b]

    def record_skip(self, width: int, height: int, ratio: float | list[float]) -> "StepReport | BatchStepReport":
        """Skip the current scale for every image (ratios >= 1): no forward pass, no codes, nothing
        appended to the KV cache."""
        k = self.scale_index
        ratios = [ratio] * self.batch if isinstance(ratio, (int, float)) else list(ratio)
        report = combine_reports([StepReport(k, width, height, width * height, float(r), 0, True, False, 0.0)
                                  for r in ratios])
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


def per_image_decisions(ratio, drop_unconditional, batch: int) -> tuple[list[float], list[bool]]:
    """One validated ratio and one CFG-drop flag per image, from a scalar (shared by every image) or
    a sequence / 1-D array of ``batch`` values; anything else is a ValueError naming what was given."""
    def expand(value, what: str) -> list:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            if value.ndim == 0:
                return [value.item()] * batch
            if value.ndim != 1:
                raise ValueError(f"per-image {what} must be a scalar or one value per image (shape ({batch},)), "
                                 f"got an array of shape {value.shape}")
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            if len(value) != batch:
                raise ValueError(f"got {len(value)} {what} for a batch of {batch} images (give one per image, or a scalar)")
            return list(value)
        return [value] * batch

    ratios = [validate_ratio(r) for r in expand(ratio, "ratios")]
    drops = []
    for d in expand(drop_unconditional, "drop_unconditional flags"):
        if isinstance(d, (bool, np.bool_)) or (isinstance(d, (int, np.integer)) and d in (0, 1)):
            drops.append(bool(d))
        else:
            raise ValueError(f"drop_unconditional must be a bool (or one bool per image), got {d!r}")
    return ratios, drops


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


IMAGE_MARK = "@"


def image_fingerprint(model_fingerprint: str, **how) -> str:
    """A generator's fingerprint: the model part (model, guidance, sampling: what the images are), then
    ``@`` and how they are computed (``how``: the decoder's arithmetic version, the device). The second
    part changes images only in their last bits (a GPU also draws other random numbers), so reference
    caches must keep them apart, but an agent does not care: ``model_part`` is what its check compares."""
    return model_fingerprint + IMAGE_MARK + ",".join(f"{k}={v}" for k, v in how.items())


def model_part(fingerprint: str) -> str:
    """The fingerprint without how its images are computed (equal for the same model on another device
    or decoder arithmetic: an agent trained on the CPU can serve on a GPU)."""
    return fingerprint.split(IMAGE_MARK)[0]


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
    reports: list  # StepReport | BatchStepReport per scale run so far
    flops_prefill: float
    last_entropy_B: torch.Tensor | None

    @property
    def finished(self) -> bool: ...

    @property
    def batch(self) -> int: ...

    @property
    def flops_used(self) -> float: ...

    @property
    def flops_used_per_image(self) -> list[float]: ...

    def image_reports(self, b: int) -> list[StepReport]: ...

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
        """Identifies what images this generator makes (reference caches, run configs); see
        ``image_fingerprint`` for its two parts."""

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

    def step(self, state: GenerationProgress, ratio, drop_unconditional=False) -> "StepReport | BatchStepReport":
        """Run scale ``state.scale_index`` with ``ratio`` (a float, or one per image) and
        ``drop_unconditional`` (a bool, or one per image); advances ``state`` in place."""

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
