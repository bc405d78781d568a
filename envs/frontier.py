"""The static frontier: per FLOPs budget, the best static schedule found by the static search.

A learned controller starts from it (the residual policy's "keep" reproduces it exactly) and the
evaluation's best static schedule at a budget is its entry, because both come from one search on the
same validation items (``evaluation.frontier_build``; ``train.py`` writes ``frontier.json``).

Units: ``budget``, ``transformer_fraction`` are fractions of the unpruned image's transformer FLOPs
(``generator.flops_full()``, the unit of the budget guard); ``total_fraction`` adds the VQ decoder and
the text encoder; ``val_quality`` is the mean of the reward's quality terms on the validation items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from generator.schedules import StaticSchedule
from generator.weights_io import atomic_write_json

FRONTIER_VERSION = 1


class FrontierError(ValueError):
    """A frontier file is missing, malformed or does not fit the generator."""


@dataclass(frozen=True)
class FrontierEntry:
    """The best static schedule found within ``budget`` (transformer FLOPs fraction)."""

    budget: float
    schedule: StaticSchedule
    transformer_fraction: float
    total_fraction: float
    val_quality: float

    def to_dict(self, widths: tuple[int, ...] | None = None) -> dict:
        d = {"budget": self.budget, "ratios": list(self.schedule.ratios), "drop_uncond": list(self.schedule.drop_uncond),
             "transformer_fraction": self.transformer_fraction, "total_fraction": self.total_fraction,
             "val_quality": self.val_quality}
        if widths is not None:
            d["schedule"] = self.schedule.describe(widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FrontierEntry":
        try:
            return cls(float(d["budget"]), StaticSchedule(tuple(d["ratios"]), tuple(d["drop_uncond"])),
                       float(d["transformer_fraction"]), float(d["total_fraction"]), float(d["val_quality"]))
        except (KeyError, TypeError, ValueError) as e:
            raise FrontierError(f"frontier entry {d!r} is malformed ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class Frontier:
    """Entries sorted by budget; ``schedule_for(b)`` is the entry of the largest budget <= b."""

    entries: tuple[FrontierEntry, ...]
    num_scales: int
    first_controllable: int
    generator_fingerprint: str = ""
    info: dict | None = None

    def __post_init__(self) -> None:
        if not self.entries:
            raise FrontierError("a frontier needs at least one entry")
        ordered = tuple(sorted(self.entries, key=lambda e: e.budget))
        for e in ordered:
            if len(e.schedule.ratios) != self.num_scales:
                raise FrontierError(f"frontier schedule has {len(e.schedule.ratios)} scales, the generator {self.num_scales}")
            if e.transformer_fraction > e.budget + 1e-9:
                raise FrontierError(f"frontier entry at budget {e.budget:.4f} spends {e.transformer_fraction:.4f}: over its budget")
            if any(r != 0.0 or d for r, d in zip(e.schedule.ratios[:self.first_controllable],
                                                 e.schedule.drop_uncond[:self.first_controllable])):
                raise FrontierError(f"frontier schedule changes a scale before the first controllable one ({self.first_controllable})")
        object.__setattr__(self, "entries", ordered)

    @property
    def budgets(self) -> list[float]:
        return [e.budget for e in self.entries]

    def entry_for(self, budget: float) -> FrontierEntry:
        """The entry of the largest frontier budget <= ``budget`` (its schedule fits ``budget``)."""
        b = float(budget)
        if not math.isfinite(b):
            raise FrontierError(f"budget must be a finite fraction of the unpruned transformer FLOPs, got {budget!r}")
        fitting = [e for e in self.entries if e.budget <= b + 1e-9]
        if not fitting:
            raise FrontierError(f"budget {b:.4f} is below the frontier's smallest budget {self.entries[0].budget:.4f}")
        return fitting[-1]

    def schedule_for(self, budget: float) -> StaticSchedule:
        return self.entry_for(budget).schedule

    def to_dict(self, widths: tuple[int, ...] | None = None) -> dict:
        return {"version": FRONTIER_VERSION, "num_scales": self.num_scales, "first_controllable_scale": self.first_controllable,
                "generator_fingerprint": self.generator_fingerprint, "units": "fractions of the unpruned transformer FLOPs",
                "info": self.info or {}, "entries": [e.to_dict(widths) for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict) -> "Frontier":
        if d.get("version") != FRONTIER_VERSION:
            raise FrontierError(f"frontier version {d.get('version')!r}, this code reads {FRONTIER_VERSION}")
        try:
            return cls(tuple(FrontierEntry.from_dict(e) for e in d["entries"]), int(d["num_scales"]),
                       int(d["first_controllable_scale"]), str(d.get("generator_fingerprint", "")), d.get("info"))
        except KeyError as e:
            raise FrontierError(f"frontier is missing {e}") from None

    def save(self, path: str | Path, widths: tuple[int, ...] | None = None) -> None:
        atomic_write_json(Path(path), self.to_dict(widths))

    @classmethod
    def load(cls, path: str | Path) -> "Frontier":
        from generator.weights_io import read_json_file

        return cls.from_dict(read_json_file(path, FrontierError,
                                            f"frontier file {path} does not exist (train.py writes RUN/frontier.json)"))

    def check_generator(self, generator) -> None:
        """Raise if the frontier was searched on another generator (scales or model)."""
        if generator.num_scales != self.num_scales:
            raise FrontierError(f"frontier has {self.num_scales} scales, the generator {generator.num_scales}")
        if self.generator_fingerprint and hasattr(generator, "fingerprint"):
            from generator.protocol import model_part

            if model_part(self.generator_fingerprint) != model_part(generator.fingerprint()):
                raise FrontierError("frontier was searched on another generator configuration (fingerprints differ)")
