"""Pruning schedules: one protocol for fixed schedules, FastVAR's, the user's, and trained agents.

A schedule answers "what pruning ratio for scale i of n?" (0 <= r < 1 prunes a fraction r of the
tokens, r >= 1 skips the scale), optionally looking at the generation state so far. The generation
loop cannot tell a hand-made schedule from a trained agent (``agents.AgentSchedule``).

The answer is a float shared by every image of the batch (every fixed schedule here), or a list
with one ratio per image of ``state`` (a schedule that looks at each image, e.g. a trained agent on
a batch); the same holds for the optional ``drop_unconditional``. ``run_schedule`` passes either to
``generator.step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class PruningSchedule(Protocol):
    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float | list[float]: ...


def _check_index(scale_index: int, num_scales: int) -> None:
    if not 0 <= scale_index < num_scales:
        raise IndexError(f"scale index {scale_index} is outside 0..{num_scales - 1}")


@dataclass(frozen=True)
class OriginalSchedule:
    """No pruning anywhere."""

    name: str = "original"

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float:
        _check_index(scale_index, num_scales)
        return 0.0

    def describe(self, widths: tuple[int, ...]) -> str:
        return "original"


@dataclass(frozen=True)
class RatioListSchedule:
    """An explicit ratio per scale index."""

    ratios: tuple[float, ...]
    name: str = "ratios"

    def __post_init__(self) -> None:
        for r in self.ratios:
            if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
                raise ValueError(f"ratios must be finite numbers >= 0, got {r!r} in {self.ratios}")

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float:
        _check_index(scale_index, num_scales)
        if len(self.ratios) != num_scales:
            raise ValueError(f"schedule has {len(self.ratios)} ratios but the generator has {num_scales} scales")
        return float(self.ratios[scale_index])

    def describe(self, widths: tuple[int, ...]) -> str:
        return ",".join(f"{w}:{r:g}" for w, r in zip(widths, self.ratios) if r > 0) or "original"


@dataclass(frozen=True)
class StaticSchedule:
    """A fixed ratio per scale plus, per scale, whether to drop the unconditional CFG branch there
    (half that scale's compute; see ``PerScaleGenerator.step``). Same for every prompt.

    ``drop_uncond`` defaults to all False (then this is a ``RatioListSchedule``); a flag on a skipped
    scale (ratio >= 1) is meaningless and rejected, so equal schedules compare equal.
    """

    ratios: tuple[float, ...]
    drop_uncond: tuple[bool, ...] | None = None
    name: str = "static"

    def __post_init__(self) -> None:
        RatioListSchedule(tuple(self.ratios))  # validates the ratios
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        flags = tuple(bool(f) for f in (self.drop_uncond or (False,) * len(self.ratios)))
        if len(flags) != len(self.ratios):
            raise ValueError(f"need one drop_uncond flag per scale: {len(self.ratios)} ratios, {len(flags)} flags")
        for k, (r, f) in enumerate(zip(self.ratios, flags)):
            if f and r >= 1.0:
                raise ValueError(f"scale {k} is skipped (ratio {r:g}) and cannot also drop its unconditional branch")
        object.__setattr__(self, "drop_uncond", flags)

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float:
        return RatioListSchedule(self.ratios).ratio(scale_index, num_scales, state)

    def drop_unconditional(self, scale_index: int, num_scales: int, state: Any | None = None) -> bool:
        _check_index(scale_index, num_scales)
        return self.drop_uncond[scale_index]

    def unconditional_flags(self, needs_unconditional: list[bool]) -> list[bool]:
        """Per scale: does the unconditional branch run (the generator's guidance needs it and this
        schedule does not drop it)? The ``unconditional`` argument of ``schedule_flops``."""
        return [bool(u) and not d for u, d in zip(needs_unconditional, self.drop_uncond)]

    def describe(self, widths: tuple[int, ...]) -> str:
        """``"width:ratio"`` entries (1 = skip) as in the seed's pruning_scales string; ``/nocfg`` marks
        a scale run without the unconditional branch; ``original`` if nothing is changed."""
        parts = []
        for w, r, d in zip(widths, self.ratios, self.drop_uncond):
            if r > 0 or d:
                parts.append(f"{w}:{r:g}" + ("/nocfg" if d else ""))
        return ",".join(parts) or "original"


@dataclass(frozen=True)
class PerImageSchedules:
    """A batch in which image b follows its own state-independent schedule ``schedules[b]``: per-image
    ratios (and CFG-drop flags) for ``run_schedule`` and ``PerScaleGenerator.step``."""

    schedules: tuple
    name: str = "per_image"

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> list[float]:
        return [float(s.ratio(scale_index, num_scales, None)) for s in self.schedules]

    def drop_unconditional(self, scale_index: int, num_scales: int, state: Any | None = None) -> list[bool]:
        out = []
        for s in self.schedules:
            drop = getattr(s, "drop_unconditional", None)
            out.append(bool(drop(scale_index, num_scales, None)) if drop is not None else False)
        return out


@dataclass(frozen=True)
class WidthRatioSchedule:
    """The user's ``pruning_scales`` string, keyed by token-map width: ``"32:0.4,40:0.5"``.

    Widths not listed run unpruned. ``widths`` is the generator's width per scale index.
    """

    by_width: dict[int, float]
    widths: tuple[int, ...]
    name: str = "widths"

    @classmethod
    def parse(cls, text: str, widths: tuple[int, ...]) -> "WidthRatioSchedule":
        valid = ", ".join(map(str, widths))
        by_width: dict[int, float] = {}
        if not text.strip():
            raise ValueError('empty pruning_scales string; expected "width:ratio,..." e.g. "32:0.4,40:0.5"')
        for part in text.split(","):
            part = part.strip()
            w_txt, sep, r_txt = part.partition(":")
            if not sep:
                raise ValueError(f'bad entry {part!r} in pruning_scales {text!r}: expected "width:ratio"')
            try:
                w = int(w_txt)
            except ValueError:
                raise ValueError(f"bad width {w_txt!r} in pruning_scales {text!r}: valid widths are {valid}") from None
            try:
                r = float(r_txt)
            except ValueError:
                raise ValueError(f"bad ratio {r_txt!r} for width {w} in {text!r}: expected a number >= 0") from None
            if w not in widths:
                raise ValueError(f"unknown width {w} in pruning_scales {text!r}: valid widths are {valid}")
            if not math.isfinite(r) or r < 0:
                raise ValueError(f"bad ratio {r_txt!r} for width {w}: must be finite and >= 0 "
                                 "(0 <= r < 1 prunes, r >= 1 skips)")
            if w in by_width:
                raise ValueError(f"width {w} appears twice in pruning_scales {text!r}")
            by_width[w] = r
        return cls(by_width, tuple(widths))

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float:
        _check_index(scale_index, num_scales)
        if len(self.widths) != num_scales:
            raise ValueError(f"schedule was parsed for {len(self.widths)} scales, generator has {num_scales}")
        return float(self.by_width.get(self.widths[scale_index], 0.0))

    def describe(self, widths: tuple[int, ...]) -> str:
        return ",".join(f"{w}:{r:g}" for w, r in self.by_width.items())


@dataclass(frozen=True)
class TailPatternSchedule:
    """The seed's ``get_pruning_ratio``: no pruning, then ``tail`` on the last len(tail) scales."""

    tail: tuple[float, ...] = (0.3, 0.4, 1.0, 1.0, 0.8, 1.0)
    name: str = "tail"

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float:
        _check_index(scale_index, num_scales)
        n_tail = min(len(self.tail), num_scales)
        ratios = [0.0] * num_scales
        ratios[num_scales - n_tail:] = list(self.tail[:n_tail])
        return ratios[scale_index]

    def describe(self, widths: tuple[int, ...]) -> str:
        return RatioListSchedule(tuple(self.ratio(i, len(widths)) for i in range(len(widths)))).describe(widths)


@dataclass(frozen=True)
class FastVARSchedule:
    """FastVAR's default mapped onto any scale schedule: prune the 4th- and 3rd-from-last scales at
    0.4 / 0.5 and skip the last two (on Infinity-2B: "32:0.4,40:0.5,48:1,64:1")."""

    pattern: tuple[float, ...] = (0.4, 0.5, 1.0, 1.0)
    name: str = "fastvar"

    def ratio(self, scale_index: int, num_scales: int, state: Any | None = None) -> float:
        return TailPatternSchedule(self.pattern).ratio(scale_index, num_scales)

    def describe(self, widths: tuple[int, ...]) -> str:
        return TailPatternSchedule(self.pattern).describe(widths)


NAMED = ("original", "fastvar", "tail")


def parse_schedule(spec: str, widths: tuple[int, ...]) -> PruningSchedule:
    """``original`` | ``fastvar`` | ``tail`` | ``"width:ratio,..."`` -> a schedule."""
    s = spec.strip()
    if s == "original":
        return OriginalSchedule()
    if s == "fastvar":
        return FastVARSchedule()
    if s == "tail":
        return TailPatternSchedule()
    if ":" not in s:
        raise ValueError(f"unknown schedule {spec!r}: use one of {', '.join(NAMED)} or a "
                         f'"width:ratio,..." string with widths from {", ".join(map(str, widths))}')
    return WidthRatioSchedule.parse(s, widths)


def schedule_ratios(schedule: PruningSchedule, num_scales: int) -> list[float]:
    """The ratios a state-independent schedule gives for every scale."""
    return [schedule.ratio(i, num_scales, None) for i in range(num_scales)]


def run_schedule(generator, state, schedule: PruningSchedule | None, after_step=None):
    """Step ``state`` to the end, each scale's ratio (and, for schedules that have it, whether to drop
    the unconditional branch) from ``schedule`` (None = unpruned), shared or one per image;
    ``after_step(state, k)`` is called after scale k. Works for every backend with the step-wise API;
    returns the state."""
    while not state.finished:
        k, n = state.scale_index, state.num_scales
        r = 0.0 if schedule is None else schedule.ratio(k, n, state)
        drop = getattr(schedule, "drop_unconditional", None)
        d = drop(k, n, state) if drop is not None else False
        generator.step(state, r, drop_unconditional=d if isinstance(d, (list, tuple)) else bool(d))
        if after_step is not None:
            after_step(state, k)
    return state
