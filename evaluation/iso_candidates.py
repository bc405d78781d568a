"""What the iso-quality comparison evaluates, and what that costs before anything is generated.

- ``scaled_fastvar``: FastVAR's pattern at strength s in [0, 1], a one-parameter family from Original
  (s = 0) to FastVAR exactly (s = 1). FastVAR's per-scale ratios, with a skip counted as ratio 1, are
  multiplied by s: on Infinity-2B's last four scales (0.4, 0.5, skip, skip) becomes (0.4 s, 0.5 s, s, s),
  so the two skipped scales are pruned at ratio s below s = 1 and skipped at s = 1. Every ratio grows
  with s, and FLOPs only fall when a ratio grows (fewer kept tokens, shorter KV caches later), so the
  family's FLOPs are non-increasing in s (tested on a fine grid of s). No CFG branch is dropped
  (FastVAR keeps guidance).
- ``near_lossless_schedules``: the static candidates near the lossless end, small enough to finish on a
  CPU: every one-scale modification of the unpruned schedule on the controllable scales (each ratio
  with and, where allowed, without the CFG branch; ratio 0 without it; skip) plus two-scale
  modifications (every pair of controllable scales, each pruned at a ratio of ``two_scale_ratios``,
  CFG kept; no skips: skipping one scale already costs more than 0.02 attribute accuracy). The full
  near-lossless grid ({0, .125, .25, .375, .5} x CFG kept / dropped + skip on four scales: 11^4 =
  14,641 schedules) is far beyond a CPU's budget; the default subset (``evaluation.iso_quality``) is
  39 schedules.
- ``prefix_tree_flops`` / ``CostModel``: the transformer FLOPs ``evaluation.grid_evaluation`` will
  spend on a set of schedules (it groups them by the first scale where they differ and shares every
  prefix within a group), and seconds from a calibration on Original's images, for the estimate the
  runner prints before generating.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

from generator.schedules import FastVARSchedule, StaticSchedule, schedule_ratios

SKIP = 1.0


# ---- FastVAR's pattern at other strengths -----------------------------------------------------------

def scaled_fastvar(num_scales: int, strength: float) -> StaticSchedule:
    """FastVAR's ratios (a skip counted as 1) times ``strength`` on a generator of ``num_scales`` scales:
    strength 0 = Original, 1 = FastVAR exactly (ratio 1 = skip), in between a prune of every scale FastVAR
    touches (see the module docstring)."""
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"FastVAR strength must be a number in [0, 1] (0 = Original, 1 = FastVAR), got {strength!r}")
    base = [min(r, SKIP) for r in schedule_ratios(FastVARSchedule(), num_scales)]
    return StaticSchedule(tuple(round(strength * r, 9) for r in base))


def strength_label(strength: float) -> str:
    return f"s={strength:g}"


# ---- static candidates near the lossless end --------------------------------------------------------

def one_scale_options(ratios: Sequence[float], guided: bool, allow_drop: bool) -> list[tuple[float, bool]]:
    """(ratio, drop CFG) options of one scale that change it: each ratio > 0 with the CFG branch kept,
    each ratio (0 too) without it where guidance runs it and dropping is allowed, and skip."""
    opts = [(float(r), False) for r in ratios if r > 0]
    if allow_drop and guided:
        opts += [(float(r), True) for r in ratios]
    return opts + [(SKIP, False)]


def near_lossless_schedules(num_scales: int, first: int, guided: Sequence[bool], one_scale_ratios: Sequence[float],
                            two_scale_ratios: Sequence[float], allow_drop: bool) -> list[StaticSchedule]:
    """The unpruned schedule, its one-scale modifications and its two-scale modifications on scales
    ``first .. num_scales - 1`` (module docstring), without duplicates, the unpruned one first."""
    if not 0 <= first < num_scales:
        raise ValueError(f"first controllable scale {first} is outside 0..{num_scales - 1}")
    for name, rs in (("one-scale", one_scale_ratios), ("two-scale", two_scale_ratios)):
        bad = [r for r in rs if not (isinstance(r, (int, float)) and 0.0 <= r < 0.9)]
        if bad:
            raise ValueError(f"{name} ratios must be pruning ratios in [0, 0.9) (skip is always included), got {bad}")
    n = num_scales
    unpruned = StaticSchedule((0.0,) * n)
    out = [unpruned]

    def with_changes(changes: dict[int, tuple[float, bool]]) -> StaticSchedule:
        r, d = [0.0] * n, [False] * n
        for k, (ratio, drop) in changes.items():
            r[k], d[k] = ratio, drop
        return StaticSchedule(tuple(r), tuple(d))

    for k in range(first, n):
        out += [with_changes({k: o}) for o in one_scale_options(one_scale_ratios, guided[k], allow_drop)]
    pair_opts = [(float(r), False) for r in two_scale_ratios if r > 0]
    for k1, k2 in itertools.combinations(range(first, n), 2):
        out += [with_changes({k1: o1, k2: o2}) for o1 in pair_opts for o2 in pair_opts]
    return list(dict.fromkeys(out))


# ---- what generating them costs ---------------------------------------------------------------------

def prefix_tree_flops(generator, schedules: Sequence[StaticSchedule]) -> float:
    """Transformer FLOPs (per image) that ``GridEvaluator.evaluate`` spends on ``schedules``: one
    prefix-tree pass per group of schedules sharing their option at the first scale where any differ,
    each pass paying the prefill once and every distinct prefix's step once."""
    from evaluation.grid_evaluation import _prefix_groups
    from evaluation.static_search import guided_scales

    uniq = list(dict.fromkeys(schedules))
    if not uniq:
        return 0.0
    guided = guided_scales(generator)
    prefill = generator.flops_full() - sum(generator.schedule_flops([0.0] * generator.num_scales))
    total = 0.0
    for group in _prefix_groups(uniq):
        total += prefill
        seen: set = set()
        for s in group:
            steps = generator.schedule_flops(list(s.ratios), s.unconditional_flags(guided))
            for k in range(generator.num_scales):
                prefix = (s.ratios[:k + 1], s.drop_uncond[:k + 1])
                if prefix not in seen:
                    seen.add(prefix)
                    total += steps[k]
    return total


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work on this machine, measured on Original's images: ``s_per_flop`` (start +
    every scale, per transformer FLOP of one image), ``decode_s`` / ``judge_s`` / ``quality_s`` per image."""

    s_per_flop: float
    decode_s: float
    judge_s: float
    quality_s: float

    def static_seconds(self, generator, schedules: Sequence[StaticSchedule], n_items: int, quality: bool) -> float:
        """Generating, decoding and judging (and, with ``quality``, QUALITY-scoring) every schedule."""
        per_leaf = self.decode_s + self.judge_s + (self.quality_s if quality else 0.0)
        return n_items * (self.s_per_flop * prefix_tree_flops(generator, schedules) + len(set(schedules)) * per_leaf)

    def images_seconds(self, generator, transformer_fraction: float, n_items: int) -> float:
        """Generating, decoding and judging ``n_items`` images at a transformer FLOPs fraction."""
        return n_items * (self.s_per_flop * transformer_fraction * generator.flops_full() + self.decode_s + self.judge_s)
