"""What one click of the explorer compares: the schedule columns asked for and, per column, the image,
its per-scale rows and its figures (FLOPs, latency, metrics vs Original), with their Markdown.

Plain data: nothing here generates an image (``explorer.session`` does) or draws one (``explorer.render``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: what a schedule column can show; "widths" is a "width:ratio,..." string, "agent" a train.py run
SCHEDULE_KINDS = ("original", "fastvar", "tail", "widths", "agent")
KIND_TITLES = {"original": "Original", "fastvar": "FastVAR", "tail": "Tail pattern (the seed's)",
               "widths": "width:ratio", "agent": "Trained agent"}
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class ScheduleRequest:
    """One schedule column. ``text``: the "width:ratio,..." string (kind "widths") or the run directory
    (kind "agent"); ``budget``: FLOPs budget for budget-conditioned agents (fraction of the unpruned
    transformer FLOPs); ``which``: the run's "best" or "final" model."""

    kind: str
    text: str = ""
    budget: float | None = None
    which: str = "best"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}; allowed: {', '.join(SCHEDULE_KINDS)}")

    @property
    def label(self) -> str:
        if self.kind == "widths":
            return f"width:ratio {self.text.strip()}"
        if self.kind == "agent":
            name = Path(self.text.strip()).name or self.text.strip()
            return f"agent {name} ({self.which})" + (f" at budget {self.budget:g}" if self.budget is not None else "")
        return KIND_TITLES[self.kind]


@dataclass
class ScaleRow:
    """One scale of one generation. FLOPs are per image; ``flops_unpruned`` is the same scale unpruned."""

    index: int
    width: int
    height: int
    tokens: int
    kept: int
    ratio: float
    skipped: bool
    flops: float
    flops_unpruned: float
    summed_HW3: np.ndarray | None  # uint8 image of the codes summed up to this scale; None where skipped


def latency_note(timed_runs: int) -> str:
    """How the latency figure was measured, said beside it on the page."""
    return ("one timed run" if timed_runs == 1 else f"median of {timed_runs}") + " after a warm-up"


@dataclass
class ScheduleOutcome:
    """One schedule's column. Metrics vs Original are None for Original itself where they are trivial.

    ``latency_samples_ms``: the wall-clock milliseconds of each timed generation (batch 1, this machine),
    all taken after one untimed warm-up run of the same schedule; ``latency_ms`` is their median."""

    request: ScheduleRequest
    label: str
    image_HW3: np.ndarray
    scales: list[ScaleRow]
    flops: float
    flops_fraction: float
    latency_samples_ms: tuple[float, ...]
    ssim: float
    psnr: float
    clip_score: float | None
    clip_delta: float | None
    judge: dict | None = None
    total_fraction: float | None = None  # with the VQ decoder (and a separate text encoder): of the image's whole compute

    @property
    def ratios(self) -> list[float]:
        return [s.ratio for s in self.scales]

    @property
    def latency_ms(self) -> float:
        """Median of the timed runs, ms per image."""
        return float(statistics.median(self.latency_samples_ms))

    def metrics_markdown(self) -> str:
        """The column's figures as Markdown (what the page prints under the images)."""
        lines = [f"**FLOPs**: {self.flops / 1e6:,.1f} MFLOPs = **{self.flops_fraction:.3f}** of the unpruned image's "
                 f"transformer FLOPs" + ("" if self.total_fraction is None else
                                         f"; {self.total_fraction:.3f} of its total with the decoder"),
                 f"**latency**: {self.latency_ms:.1f} ms per image ({latency_note(len(self.latency_samples_ms))}; "
                 "batch 1, this machine)",
                 f"**SSIM** vs Original: {self.ssim:.3f} · **PSNR**: {format_psnr(self.psnr)}"]
        if self.clip_score is not None:
            lines.append(f"**CLIP score**: {self.clip_score:.1f} ({self.clip_delta:+.1f} vs Original)")
        if self.judge is not None:
            lines.append(f"**DomainEval**: attribute accuracy {self.judge['attribute_accuracy']:.2f}, "
                         f"scene accuracy {self.judge['scene_accuracy']:.0f}")
        lines.append("ratios: " + " ".join("skip" if s.skipped else f"{s.ratio:g}" for s in self.scales))
        return "  \n".join(lines)


@dataclass
class Comparison:
    prompt: str
    seed: int
    outcomes: list[ScheduleOutcome]
    flops_full: float
    notes: list[str] = field(default_factory=list)

    def table_markdown(self) -> str:
        """One row per schedule: the figures the columns show, side by side."""
        has_clip = any(o.clip_score is not None for o in self.outcomes)
        has_judge = any(o.judge is not None for o in self.outcomes)
        timed_runs = {len(o.latency_samples_ms) for o in self.outcomes}  # one Explorer: the same for every column
        latency_head = "latency, ms per image" + (f" ({latency_note(timed_runs.pop())})" if len(timed_runs) == 1 else "")
        head = ["schedule", "FLOPs frac", "total frac", "MFLOPs", latency_head, "SSIM", "PSNR dB"]
        head += ["CLIP", "ΔCLIP"] if has_clip else []
        head += ["attr acc", "scene acc"] if has_judge else []
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for o in self.outcomes:
            total = "n/a" if o.total_fraction is None else f"{o.total_fraction:.3f}"
            cells = [o.label, f"{o.flops_fraction:.3f}", total, f"{o.flops / 1e6:,.1f}", f"{o.latency_ms:.1f}", f"{o.ssim:.3f}",
                     format_psnr(o.psnr)]
            if has_clip:
                cells += [f"{o.clip_score:.1f}", f"{o.clip_delta:+.1f}"] if o.clip_score is not None else ["n/a", "n/a"]
            if has_judge:
                cells += ([f"{o.judge['attribute_accuracy']:.2f}", f"{o.judge['scene_accuracy']:.0f}"]
                          if o.judge is not None else ["n/a", "n/a"])
            rows.append("| " + " | ".join(cells) + " |")
        rows.append("\nFLOPs frac: transformer FLOPs / the unpruned image's (what pruning acts on); total frac: with "
                    "the VQ decoder (and a separate text encoder), the image's whole compute; MFLOPs: transformer; "
                    "latency: wall clock per image at batch 1 on this machine, each schedule run once untimed "
                    "(the warm-up) before the timed runs.")
        return "\n".join(rows)


def format_psnr(db: float) -> str:
    return "∞ (identical)" if math.isinf(db) else f"{db:.2f} dB"
