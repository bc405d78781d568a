"""What the explorer page (``app.py``) computes, without the page: one prompt and seed, several
pruning schedules side by side.

    explorer = Explorer.build(generator_name="tiny")
    comparison = explorer.compare("a large red solid circle in the centre on a plain gray background", 0,
                                  [ScheduleRequest("fastvar"), ScheduleRequest("widths", "5:0.5,6:1,8:1")])
    for outcome in comparison.outcomes:          # Original first: the reference of every metric
        outcome.image_HW3, outcome.flops_fraction, outcome.latency_ms, outcome.ssim, outcome.clip_score

For each schedule: the final image, the image of the codes summed up to every scale (what
``generate.py --save-intermediate`` writes to ``summed_codes/``; skipped scales add no codes), each
scale's ratio, tokens and analytic FLOPs, the total FLOPs and its fraction of the unpruned image's
(transformer FLOPs, as everywhere in this project), the measured latency (batch 1, median of
``latency_repeats`` runs on this machine), and vs Original: SSIM, PSNR, the CLIP-score change and,
where ``evaluation.judge`` is present and its weights load, DomainEval's attribute and scene accuracy.

Bad input raises ``ValueError`` / ``agents.RunError`` with the messages the command-line tools print
(``generator.checks``, ``generator.schedules.parse_schedule``, ``agents.schedule``); the page shows
them as they are. Nothing here imports gradio, so all of it is tested without a browser.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agents.schedule import RunError, load_agent_schedule, read_run_config
from generator.checks import check_prompt_in_grammar
from generator.images import to_uint8
from generator.schedules import FastVARSchedule, OriginalSchedule, TailPatternSchedule, parse_schedule, run_schedule

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


@dataclass
class ScheduleOutcome:
    """One schedule's column. Metrics vs Original are None for Original itself where they are trivial."""

    request: ScheduleRequest
    label: str
    image_HW3: np.ndarray
    scales: list[ScaleRow]
    flops: float
    flops_fraction: float
    latency_ms: float
    ssim: float
    psnr: float
    clip_score: float | None
    clip_delta: float | None
    judge: dict | None = None
    total_fraction: float | None = None  # with the VQ decoder (and a separate text encoder): of the image's whole compute

    @property
    def ratios(self) -> list[float]:
        return [s.ratio for s in self.scales]

    def metrics_markdown(self) -> str:
        """The column's figures as Markdown (what the page prints under the images)."""
        lines = [f"**FLOPs**: {self.flops / 1e6:,.1f} MFLOPs = **{self.flops_fraction:.3f}** of the unpruned image's "
                 f"transformer FLOPs" + ("" if self.total_fraction is None else
                                         f"; {self.total_fraction:.3f} of its total with the decoder"),
                 f"**latency**: {self.latency_ms:.1f} ms (batch 1, this machine)",
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
        head = ["schedule", "FLOPs frac", "total frac", "MFLOPs", "latency ms", "SSIM", "PSNR dB"]
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
                    "the VQ decoder (and a separate text encoder), the image's whole compute; MFLOPs: transformer.")
        return "\n".join(rows)


def format_psnr(db: float) -> str:
    return "∞ (identical)" if math.isinf(db) else f"{db:.2f} dB"


@dataclass(frozen=True)
class AgentInfo:
    """What the page needs to know about a run before running it."""

    run: Path
    algo: str
    cfg_scale: float | None
    budget_range: tuple[float, float] | None

    def describe(self) -> str:
        budget = ("FLOPs budget range {:g}–{:g}".format(*self.budget_range) if self.budget_range is not None
                  else "no budget range (one fixed budget; the budget slider is for budget-conditioned agents)")
        return f"{self.run.name}: {self.algo}, trained with CFG {self.cfg_scale}, {budget}"


def agent_budget_range(run_config: dict) -> tuple[float, float] | None:
    """The FLOPs-budget range a budget-conditioned agent was trained on (``env.budget_range`` in its
    config.json, [low, high] as fractions of the unpruned transformer FLOPs: ``train.py --budget-range``),
    or None for an agent trained at one fixed budget."""
    rng = run_config.get("env", {}).get("budget_range")
    if rng is None:
        return None
    low, high = (float(x) for x in rng)
    return low, high


def judge_or_none():
    """(DomainEval judge, "") when ``evaluation.judge`` exists and its weights load, else (None, why)."""
    try:
        from judge import DomainJudge  # another part of the project; absent in older checkouts
    except ImportError as e:
        return None, f"DomainEval is not available in this checkout ({e})"
    try:
        return DomainJudge.load(), ""
    except Exception as e:  # noqa: BLE001 - a judge that cannot load is reported on the page, not raised
        return None, f"DomainEval judge could not be loaded: {type(e).__name__}: {e}"


class Explorer:
    """Runs schedules for one prompt and seed on one generator and compares them with Original.

    ``clip``: a ``rewards.ClipScorer`` (None: no CLIP column); ``judge``: a DomainEval judge with
    ``score(images_uint8_BHW3, prompts)`` (None: no DomainEval column); ``grammar``: whether prompts
    must be in the procedural domain's grammar (the embedded model's only language).
    """

    def __init__(self, generator, clip=None, judge=None, grammar: bool = True, latency_repeats: int = 3,
                 notes: list[str] | None = None, clip_spec: tuple[str | None, str | None] = (None, None)) -> None:
        if latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {latency_repeats}")
        self.generator, self.clip, self.judge, self.grammar = generator, clip, judge, grammar
        self.latency_repeats = latency_repeats
        self.clip_spec = clip_spec  # (open_clip model, pretrained) of ``clip``; (None, None) = the shipped small CLIP
        self.notes = list(notes or [])
        self.flops_full = float(generator.flops_full())
        self.flops_unpruned = [float(f) for f in generator.schedule_flops([0.0] * generator.num_scales)]
        self._agents: dict[tuple, object] = {}

    @classmethod
    def build(cls, generator_args=None, clip_model: str | None = None, clip_pretrained: str | None = None,
              judge: bool = True, latency_repeats: int = 3) -> "Explorer":
        """The generator the command-line tools build from the same options (``generator_args``: a namespace
        with the options of ``generator.backends.add_generator_args``; None = the embedded default), the
        shipped small CLIP for the embedded model (or ``clip_model``), and the DomainEval judge where it exists."""
        import argparse

        from generator.backends import add_generator_args, build_generator
        from rewards import ClipScorer

        if generator_args is None:
            ap = argparse.ArgumentParser()
            add_generator_args(ap)
            generator_args = ap.parse_args([])
        generator = build_generator(generator_args)
        generator_name = generator_args.generator
        notes = []
        if clip_model is not None:
            clip = ClipScorer.from_pretrained(clip_model, clip_pretrained)
        elif generator_name == "tiny":
            clip = ClipScorer.embedded()
        else:
            clip = None
            notes.append("no CLIP score: the shipped small CLIP knows only the procedural domain; give --clip-model "
                         "and --clip-pretrained for this generator")
        judge_model = None
        if judge and generator_name == "tiny":
            judge_model, why = judge_or_none()
            if judge_model is None:
                notes.append(why)
        explorer = cls(generator, clip=clip, judge=judge_model, grammar=generator_name == "tiny",
                       latency_repeats=latency_repeats, notes=notes, clip_spec=(clip_model, clip_pretrained))
        explorer.warm_up()
        return explorer

    def warm_up(self) -> None:
        """One untimed unpruned generation: the first call pays one-off costs (allocations, kernel choice)
        that would otherwise land in the first latency shown."""
        self._generate("warm-up", 0, OriginalSchedule())

    # ---- inputs ----------------------------------------------------------------------------------
    def check_prompt(self, prompt: str | None) -> str:
        if prompt is None or not prompt.strip():
            raise ValueError("the prompt is empty: type one, or pick one from a split")
        prompt = prompt.strip()
        return check_prompt_in_grammar(prompt) if self.grammar else prompt

    @staticmethod
    def check_seed(seed) -> int:
        try:
            value = float(seed)
        except (TypeError, ValueError):
            raise ValueError(f"seed must be an integer in 0..{SEED_MAX}, got {seed!r}") from None
        if not math.isfinite(value) or value != int(value) or not 0 <= value <= SEED_MAX:
            raise ValueError(f"seed must be an integer in 0..{SEED_MAX}, got {seed!r}")
        return int(value)

    @staticmethod
    def agent_info(run_dir: str | Path) -> AgentInfo:
        """The run's algorithm, CFG and budget range (RunError for a missing or broken run)."""
        text = str(run_dir).strip()
        if not text:
            raise ValueError("no run directory given for the trained agent (train one with `python train.py`)")
        cfg = read_run_config(text)
        return AgentInfo(Path(text), cfg["algo"], cfg["env"].get("cfg_scale"), agent_budget_range(cfg))

    def schedule_for(self, request: ScheduleRequest):
        """The schedule a request names (the same parsing and checks as generate.py)."""
        g = self.generator
        if request.kind == "original":
            return OriginalSchedule()
        if request.kind == "fastvar":
            return FastVARSchedule()
        if request.kind == "tail":
            return TailPatternSchedule()
        if request.kind == "widths":
            if not request.text.strip():
                raise ValueError('the width:ratio schedule is empty; write e.g. "5:0.5,6:1,8:1" '
                                 f"(widths: {', '.join(map(str, g.scale_widths))}; ratio >= 1 skips)")
            return parse_schedule(request.text, g.scale_widths)
        return self._agent(request)

    def _agent(self, request: ScheduleRequest):
        """The run as a schedule (``load_agent_schedule``: the fit checks and budget checks generate.py runs,
        with its messages), cached until the run's files change."""
        info = self.agent_info(request.text)
        stamps = tuple(p.stat().st_mtime_ns if p.is_file() else None
                       for p in (info.run / "config.json", info.run / f"{request.which}_model.zip"))
        # a retrained or edited run is loaded (and checked) again; each budget is its own schedule
        key = (str(info.run.resolve()), request.which, stamps, request.budget)
        if key not in self._agents:
            self._agents[key] = load_agent_schedule(info.run, self.generator, which=request.which,
                                                    clip=self._run_clip(info), budget=request.budget)
        return self._agents[key]

    def _run_clip(self, info: AgentInfo):
        """The page's CLIP where the run observes prompts with the same model and weights, else None (then
        ``load_agent_schedule`` builds the run's own)."""
        env = read_run_config(info.run)["env"]
        same = (env.get("clip_model"), env.get("clip_pretrained")) == self.clip_spec
        return self.clip if same else None

    def _total_fraction(self, transformer_flops: float) -> float | None:
        """The image's whole compute (transformer + VQ decoder + a separate text encoder) as a fraction of
        the unpruned image's; None for a backend without decoder / text-encoder FLOPs."""
        if not (hasattr(self.generator, "decode_flops") and hasattr(self.generator, "text_flops")):
            return None
        from generator.protocol import total_fraction_of_used

        return float(total_fraction_of_used(self.generator, transformer_flops))

    # ---- running ---------------------------------------------------------------------------------
    def _generate(self, prompt: str, seed: int, schedule, after_step=None):
        if hasattr(schedule, "bind"):
            schedule.bind(None)
        with torch.no_grad():
            state = run_schedule(self.generator, self.generator.start([prompt], [seed]), schedule, after_step=after_step)
            image = self.generator.decode(state)[0]
        return image, state

    def _run_one(self, prompt: str, seed: int, request: ScheduleRequest, schedule) -> tuple[torch.Tensor, list[ScaleRow], float, float]:
        times = []
        for _ in range(self.latency_repeats):  # timed without intermediate decodes, as generate.py times
            t0 = time.perf_counter()
            image, state = self._generate(prompt, seed, schedule)
            times.append(time.perf_counter() - t0)
        summed: dict[int, np.ndarray] = {}

        def keep_summed(st, k):
            if st.codes[k] is not None:  # a skipped scale adds no codes (generate.py writes nothing for it)
                summed[k] = to_uint8(self.generator.decode(st)[0])

        again, state2 = self._generate(prompt, seed, schedule, after_step=keep_summed)
        if not torch.equal(again, image):
            raise RuntimeError(f"{request.label}: the same prompt, seed and schedule gave two different images")
        rows = [ScaleRow(r.scale_index, r.width, r.height, r.tokens, r.kept, float(r.ratio), bool(r.skipped), float(r.flops),
                         self.flops_unpruned[r.scale_index], summed.get(r.scale_index)) for r in state2.reports]
        return image, rows, float(state2.flops_used), 1000.0 * statistics.median(times)

    def compare(self, prompt: str, seed, requests: list[ScheduleRequest]) -> Comparison:
        """Original (always, first: the reference) and every requested schedule, in order. Every input is
        checked before anything is generated."""
        from rewards.similarity import psnr, ssim

        prompt = self.check_prompt(prompt)
        seed = self.check_seed(seed)
        requests = [r for r in requests if r.kind != "original"]
        labels = [r.label for r in requests]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"schedule {twice[0]!r} is requested twice")
        requests = [ScheduleRequest("original")] + requests
        schedules = [self.schedule_for(r) for r in requests]
        runs = [self._run_one(prompt, seed, r, s) for r, s in zip(requests, schedules)]
        images = torch.stack([img for img, _, _, _ in runs])
        ref = images[:1]
        ssims, psnrs = ssim(images, ref).tolist(), psnr(images, ref).tolist()
        clips = self.clip.score(images, [prompt] * len(runs)).tolist() if self.clip is not None else [None] * len(runs)
        judged = [None] * len(runs)
        if self.judge is not None:
            scores = self.judge.score(to_uint8(images), [prompt] * len(runs))
            judged = [{"attribute_accuracy": float(s.attribute_accuracy), "scene_accuracy": float(s.scene_accuracy),
                       "per_attribute": dict(getattr(s, "per_attribute", {}) or {})} for s in scores]
        outcomes = []
        for i, (req, (img, rows, flops, latency)) in enumerate(zip(requests, runs)):
            outcomes.append(ScheduleOutcome(req, req.label, to_uint8(img), rows, flops, flops / self.flops_full, latency,
                                            float(ssims[i]), float(psnrs[i]), clips[i],
                                            None if clips[i] is None else clips[i] - clips[0], judged[i],
                                            self._total_fraction(flops)))
        return Comparison(prompt, seed, outcomes, self.flops_full, list(self.notes))


# ---- pictures (numpy uint8, channels last: what the page shows) --------------------------------------
def upscale(image_HW3: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscaling to ``size`` pixels wide (tiny images stay crisp)."""
    from PIL import Image

    h, w = image_HW3.shape[:2]
    return np.asarray(Image.fromarray(image_HW3).resize((size, max(1, round(size * h / w))), Image.NEAREST))


def intermediates_strip(scales: list[ScaleRow], tile: int = 96) -> np.ndarray:
    """The summed-codes image after every scale, left to right, each captioned with its map size and
    ratio; a skipped scale is a grey tile marked "skipped"."""
    from PIL import Image, ImageDraw

    caption_h, pad = 16, 4
    strip = Image.new("RGB", (len(scales) * (tile + pad) + pad, tile + caption_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, s in enumerate(scales):
        x = pad + i * (tile + pad)
        what = "skip" if s.skipped else ("full" if s.ratio == 0 else f"r={s.ratio:g}")
        draw.text((x, 2), f"{s.width}x{s.height} {what}", fill=(0, 0, 0))
        if s.summed_HW3 is not None:
            strip.paste(Image.fromarray(upscale(s.summed_HW3, tile)), (x, caption_h))
        else:
            draw.rectangle([x, caption_h, x + tile - 1, caption_h + tile - 1], fill=(200, 200, 200))
            draw.text((x + tile // 2 - 20, caption_h + tile // 2 - 6), "skipped", fill=(90, 90, 90))
    return np.asarray(strip)


def scales_chart(outcome: ScheduleOutcome, width_px: int = 420) -> np.ndarray:
    """Two bar charts per scale: the ratio (skips drawn at 1, hatched) and the FLOPs spent vs unpruned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    scales = outcome.scales
    x = np.arange(len(scales))
    names = [f"{s.width}x{s.height}" for s in scales]
    fig, (ax_r, ax_f) = plt.subplots(2, 1, figsize=(width_px / 100, 3.6), dpi=100, sharex=True)
    colours = ["#9e9e9e" if s.skipped else "#1f77b4" for s in scales]
    bars = ax_r.bar(x, [1.0 if s.skipped else s.ratio for s in scales], color=colours)
    for b, s in zip(bars, scales):
        if s.skipped:
            b.set_hatch("//")
            ax_r.text(b.get_x() + b.get_width() / 2, 0.5, "skip", ha="center", va="center", fontsize=7, rotation=90)
    if not any(s.skipped or s.ratio > 0 for s in scales):
        ax_r.text(0.5, 0.5, "no pruning", transform=ax_r.transAxes, ha="center", va="center", fontsize=9, color="#555555")
    ax_r.set_ylim(0, 1.05)
    ax_r.set_ylabel("ratio")
    ax_r.set_title(f"{outcome.label}: {outcome.flops_fraction:.3f} of the FLOPs", fontsize=9)
    ax_f.bar(x, [s.flops_unpruned / 1e6 for s in scales], color="none", edgecolor="#555555", label="unpruned")
    ax_f.bar(x, [s.flops / 1e6 for s in scales], color="#ff7f0e", label="this schedule")
    ax_f.set_ylabel("MFLOPs")
    ax_f.set_xticks(x, names, fontsize=8)
    ax_f.set_xlabel("token map")
    ax_f.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


# ---- the page's view of one click (app.py maps it onto components) ---------------------------------
def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the answer (the command-line tools print the same text and exit 2)."""
    from generator.weights_io import WeightsError
    from rewards import ClipWeightsUnavailable, LpipsUnavailable

    return (ValueError, RunError, FileNotFoundError, WeightsError, ClipWeightsUnavailable, LpipsUnavailable)


@dataclass
class PageView:
    """Everything the page shows after one click. ``error`` set: nothing else is shown."""

    error: str | None = None
    table_md: str = ""
    #: per schedule kind shown: (final image, upscaled, caption with its FLOPs fraction, latency and SSIM)
    finals: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    #: per schedule kind shown: (title Markdown, intermediates strip, per-scale chart, metrics Markdown)
    details: dict[str, tuple[str, np.ndarray, np.ndarray, str]] = field(default_factory=dict)
    comparison: Comparison | None = None


def requests_from_form(named: list[str], widths_text: str, agent_dir: str, agent_which: str = "best",
                       budget: float | None = None) -> list[ScheduleRequest]:
    """The page's inputs as schedule requests: ``named`` holds kinds or titles of fastvar / tail; an empty
    width string or run directory means that column is not wanted."""
    by_title = {v: k for k, v in KIND_TITLES.items()}
    requests = []
    for n in named or []:
        kind = by_title.get(n, n)
        if kind not in ("original", "fastvar", "tail"):
            raise ValueError(f"unknown schedule {n!r}; allowed: {', '.join(KIND_TITLES[k] for k in ('fastvar', 'tail'))}")
        requests.append(ScheduleRequest(kind))
    if widths_text and widths_text.strip():
        requests.append(ScheduleRequest("widths", widths_text.strip()))
    if agent_dir and agent_dir.strip():
        requests.append(ScheduleRequest("agent", agent_dir.strip(), budget=budget, which=agent_which or "best"))
    return requests


def page_view(explorer: Explorer, prompt: str, seed, named: list[str], widths_text: str = "", agent_dir: str = "",
              agent_which: str = "best", budget: float | None = None, image_px: int = 192) -> PageView:
    """One click of "Run": the comparison as pictures and Markdown, or the error message the CLIs give.
    An unexpected exception (a bug) becomes a message too; the page never shows a traceback."""
    try:
        requests = requests_from_form(named, widths_text, agent_dir, agent_which, budget)
        comparison = explorer.compare(prompt, seed, requests)
    except expected_errors() as e:
        return PageView(error=f"error: {e}")
    except Exception as e:  # noqa: BLE001 - a bug: say so in words, the server log keeps the traceback
        import traceback

        traceback.print_exc()
        return PageView(error=f"unexpected error (a bug, please report it; the server log has the traceback): "
                              f"{type(e).__name__}: {e}")
    view = PageView(table_md=comparison.table_markdown(), comparison=comparison)
    for o in comparison.outcomes:
        caption = f"{o.label}: {o.flops_fraction:.3f} of the FLOPs, SSIM {o.ssim:.3f}"
        view.finals[o.request.kind] = (upscale(o.image_HW3, image_px), caption)
        view.details[o.request.kind] = (f"### {o.label}", intermediates_strip(o.scales), scales_chart(o), o.metrics_markdown())
    return view


def agent_form_state(run_dir: str) -> tuple[str, tuple[float, float] | None]:
    """(what the page says about the run directory typed so far, its budget range or None)."""
    if not run_dir or not run_dir.strip():
        return "no trained agent (type a run directory, e.g. runs/ppo_s0)", None
    try:
        info = Explorer.agent_info(run_dir)
    except expected_errors() as e:
        return f"error: {e}", None
    return info.describe(), info.budget_range
