"""What the explorer page (``app.py``) computes, without the page: one prompt and seed, several
pruning schedules side by side.

    explorer = Explorer.build()                  # the embedded default generator, its small CLIP
    comparison = explorer.compare("a large red solid circle in the centre on a plain gray background", 0,
                                  [ScheduleRequest("fastvar"), ScheduleRequest("widths", "5:0.5,6:1,8:1")])
    for outcome in comparison.outcomes:          # Original first: the reference of every metric
        outcome.image_HW3, outcome.flops_fraction, outcome.latency_ms, outcome.ssim, outcome.clip_score

For each schedule: the final image, the image of the codes summed up to every scale (what
``generate.py --save-intermediate`` writes to ``summed_codes/``; skipped scales add no codes), each
scale's ratio, tokens and analytic FLOPs, the total FLOPs and its fraction of the unpruned image's
(transformer FLOPs, as everywhere in this project), the measured latency (batch 1, this machine: one
untimed warm-up run of the schedule, then the median of ``latency_repeats`` timed runs), and vs
Original: SSIM, PSNR, the CLIP-score change and, where the ``judge`` package is present and its
weights load, DomainEval's attribute and scene accuracy.

Bad input raises ``ValueError`` / ``agents.RunError`` with the messages the command-line tools print
(``generator.checks``, ``generator.schedules.parse_schedule``, ``agents.schedule``); the page shows
them as they are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.schedule import load_agent_schedule, read_run_config
from explorer.comparison import SEED_MAX, Comparison, ScaleRow, ScheduleOutcome, ScheduleRequest
from generator.checks import check_prompt_in_grammar
from generator.images import to_uint8
from generator.schedules import FastVARSchedule, OriginalSchedule, TailPatternSchedule, parse_schedule, run_schedule


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
    """(DomainEval judge, "") when the ``judge`` package exists and its weights load, else (None, why)."""
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
    must be in the procedural domain's grammar (the embedded model's only language); ``latency_repeats``:
    how many timed runs of each schedule, after its untimed warm-up run, the latency is the median of.
    """

    def __init__(self, generator, clip=None, judge=None, grammar: bool = True, latency_repeats: int = 3,
                 notes: list[str] | None = None, clip_spec: tuple[str | None, str | None] = (None, None)) -> None:
        if isinstance(latency_repeats, bool) or not isinstance(latency_repeats, int) or latency_repeats < 1:
            raise ValueError(f"latency repeats (app.py --latency-repeats) must be an integer >= 1, got {latency_repeats!r}")
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
        return cls(generator, clip=clip, judge=judge_model, grammar=generator_name == "tiny",
                   latency_repeats=latency_repeats, notes=notes, clip_spec=(clip_model, clip_pretrained))

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

    def _run_one(self, prompt: str, seed: int, request: ScheduleRequest,
                 schedule) -> tuple[torch.Tensor, list[ScaleRow], float, tuple[float, ...]]:
        """(image, per-scale rows, transformer FLOPs, milliseconds of each timed run).

        The first run is the warm-up and is not timed: it pays the one-off costs of this schedule's
        shapes (allocations, kernel choice) and decodes the codes summed after every scale for the
        strip. Then ``latency_repeats`` timed runs without intermediate decodes, as generate.py times."""
        summed: dict[int, np.ndarray] = {}

        def keep_summed(st, k):
            if st.codes[k] is not None:  # a skipped scale adds no codes (generate.py writes nothing for it)
                summed[k] = to_uint8(self.generator.decode(st)[0])

        image, state = self._generate(prompt, seed, schedule, after_step=keep_summed)
        samples_ms = []
        for _ in range(self.latency_repeats):
            t0 = time.perf_counter()
            again, _ = self._generate(prompt, seed, schedule)
            samples_ms.append(1000.0 * (time.perf_counter() - t0))
            if not torch.equal(again, image):
                raise RuntimeError(f"{request.label}: the same prompt, seed and schedule gave two different images")
        rows = [ScaleRow(r.scale_index, r.width, r.height, r.tokens, r.kept, float(r.ratio), bool(r.skipped), float(r.flops),
                         self.flops_unpruned[r.scale_index], summed.get(r.scale_index)) for r in state.reports]
        return image, rows, float(state.flops_used), tuple(samples_ms)

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
        for i, (req, (img, rows, flops, samples_ms)) in enumerate(zip(requests, runs)):
            outcomes.append(ScheduleOutcome(req, req.label, to_uint8(img), rows, flops, flops / self.flops_full, samples_ms,
                                            float(ssims[i]), float(psnrs[i]), clips[i],
                                            None if clips[i] is None else clips[i] - clips[0], judged[i],
                                            self._total_fraction(flops)))
        return Comparison(prompt, seed, outcomes, self.flops_full, list(self.notes))
