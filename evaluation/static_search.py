"""The true best static schedule: an exhaustive grid, a FLOPs filter before any generation, a local
refinement; the static Pareto frontier; the per-prompt oracle; random schedules at a FLOPs target.

A static schedule (``generator.schedules.StaticSchedule``) is a ratio per scale plus, per scale, a flag
that drops the unconditional classifier-free-guidance branch there: the same levers a VarPrune-v0
agent has, fixed for every prompt. The grid gives each controllable scale the options
``{0, 0.25, 0.5, 0.75} x {keep CFG, drop CFG} + {skip}`` (9 per guided scale: 9^4 = 6,561 schedules
for the default last four scales); earlier scales run unpruned with CFG.

Everything here is ranked by QUALITY: the reward's quality terms only (``RewardFunction.terminal``'s
``quality_reward``: CLIP-score change, 1 - SSIM, LPIPS, PSNR shortfall with the run's weights), never
the FLOPs bonus or the budget penalty. FLOPs are analytic, so a schedule over the FLOPs target is
dropped before anything is generated. The FLOPs target is a TOTAL fraction (transformer + decoder +
text encoder, ``generator.protocol.total_flops_fraction``).

Generation is shared: schedules are arranged in a prefix tree over the scales (``state.copy()`` at
each branching), batched over the items, so the 9 options of the first controllable scale are run once
each, not once per schedule. Per-item results are cached on disk (``GridCache``) keyed by the
generator's fingerprint, the items and the scorer, so a rerun evaluates nothing it has seen.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from generator.protocol import total_flops_fraction
from generator.schedules import StaticSchedule
from generator.weights_io import atomic_write_bytes

GRID_RATIOS = (0.0, 0.25, 0.5, 0.75)
SKIP = 1.0
REFINE_STEPS = (0.05, 0.125)
CACHE_VERSION = 1


# ---- the grid and its FLOPs -------------------------------------------------------------------------

def guided_scales(generator) -> list[bool]:
    """Per scale: does guidance run the unconditional branch there (unless a step drops it)?"""
    return [bool(generator.uses_unconditional(k)) for k in range(generator.num_scales)]


def grid_schedules(generator, first: int, ratios: Sequence[float] = GRID_RATIOS, allow_drop: bool = True,
                   allow_skip: bool = True) -> list[StaticSchedule]:
    """Every combination of per-scale options on scales ``first .. n-1``: each ratio with the CFG
    branch kept and (on scales where guidance runs it, if ``allow_drop``) dropped, plus skip."""
    n = generator.num_scales
    if not 0 <= first < n:
        raise ValueError(f"first controllable scale {first} is outside 0..{n - 1}")
    guided = guided_scales(generator)
    per_scale = []
    for k in range(first, n):
        opts = [(float(r), False) for r in ratios]
        if allow_drop and guided[k]:
            opts += [(float(r), True) for r in ratios]
        if allow_skip:
            opts.append((SKIP, False))
        per_scale.append(opts)
    out = []
    for combo in itertools.product(*per_scale):
        out.append(StaticSchedule(tuple([0.0] * first + [r for r, _ in combo]),
                                  tuple([False] * first + [d for _, d in combo])))
    return out


def schedule_fractions(generator, schedule: StaticSchedule) -> tuple[float, float]:
    """(transformer fraction, total fraction) of a static schedule, analytic."""
    flags = schedule.unconditional_flags(guided_scales(generator))
    return generator.flops_fraction(list(schedule.ratios), flags), total_flops_fraction(generator, list(schedule.ratios), flags)


class FlopsTable:
    """Memoised ``schedule_fractions`` of one generator: the unpruned cost, the prefill and the fixed
    decoder + text cost are computed once, then one ``schedule_flops`` call per schedule (filtering a
    6,561-schedule grid at several targets asks for the same schedules many times). Equal to
    ``schedule_fractions`` (tested)."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.guided = guided_scales(generator)
        self.full = generator.flops_full()
        self.prefill = self.full - sum(generator.schedule_flops([0.0] * generator.num_scales))
        self.fixed = generator.decode_flops() + generator.text_flops()
        self._memo: dict[StaticSchedule, tuple[float, float]] = {}

    def __call__(self, schedule: StaticSchedule) -> tuple[float, float]:
        if schedule not in self._memo:
            used = self.prefill + sum(self.generator.schedule_flops(list(schedule.ratios),
                                                                    schedule.unconditional_flags(self.guided)))
            self._memo[schedule] = (used / self.full, (used + self.fixed) / (self.full + self.fixed))
        return self._memo[schedule]

    def transformer(self, schedule: StaticSchedule) -> float:
        return self(schedule)[0]

    def total(self, schedule: StaticSchedule) -> float:
        return self(schedule)[1]


def schedule_key(schedule: StaticSchedule) -> str:
    """A stable text key: ratios and the drop flags (``d`` per dropped scale)."""
    return ",".join(f"{r:g}" + ("d" if d else "") for r, d in zip(schedule.ratios, schedule.drop_uncond))


# ---- shared-prefix generation -----------------------------------------------------------------------

def run_prefix_tree(generator, items: list[tuple[str, int]], schedules: Sequence[StaticSchedule],
                    on_leaf: Callable[[StaticSchedule, slice, torch.Tensor], None], batch_size: int = 100,
                    progress: Callable[[int], None] | None = None) -> None:
    """Generate every schedule on every item, sharing the scales that schedules have in common.

    For each chunk of ``batch_size`` items, a depth-first walk over the scales groups the schedules by
    their (ratio, drop) at scale k, steps a copy of the state once per group and recurses; at the end
    the images are decoded once per distinct schedule and ``on_leaf(schedule, item_slice, images_B3HW)``
    is called. Images are identical to ``generator.generate`` of the same chunk with that schedule
    (tested): the state is explicit and every random draw is seeded per (image seed, scale).
    """
    uniq = list(dict.fromkeys(schedules))
    n = generator.num_scales
    for s in uniq:
        if len(s.ratios) != n:
            raise ValueError(f"schedule {schedule_key(s)} has {len(s.ratios)} scales, the generator has {n}")
    for lo in range(0, len(items), batch_size):
        chunk = items[lo:lo + batch_size]
        sl = slice(lo, lo + len(chunk))
        with torch.no_grad():
            state = generator.start([p for p, _ in chunk], [s for _, s in chunk])

            def walk(st, k: int, group: list[StaticSchedule]) -> None:
                if k == n:
                    images = generator.decode(st)
                    for s in group:
                        on_leaf(s, sl, images)
                    if progress is not None:
                        progress(len(group))
                    return
                buckets: dict[tuple[float, bool], list[StaticSchedule]] = {}
                for s in group:
                    buckets.setdefault((s.ratios[k], s.drop_uncond[k]), []).append(s)
                for i, ((r, d), sub) in enumerate(buckets.items()):
                    child = st if i == len(buckets) - 1 else st.copy()  # the last branch may consume st
                    generator.step(child, r, drop_unconditional=d)
                    walk(child, k + 1, sub)

            walk(state, 0, uniq)


# ---- scoring ----------------------------------------------------------------------------------------

class QualityScorer:
    """Per-image QUALITY of images against the unpruned references of the same items: the reward's
    quality terms (``RewardFunction.terminal(...)[1]["quality_reward"]``, tested equal), batched, plus
    the terms themselves (ssim, psnr, clip_score, lpips where the reward has it). No FLOPs terms.

    references_B3HW: unpruned images of ``prompts`` (same order as the items).
    """

    def __init__(self, reward_fn, references_B3HW: torch.Tensor, prompts: list[str]) -> None:
        self.rfn, self.refs, self.prompts = reward_fn, references_B3HW, list(prompts)
        if len(self.prompts) != references_B3HW.shape[0]:
            raise ValueError(f"{len(self.prompts)} prompts but {references_B3HW.shape[0]} references")
        self.ref_clip = None
        if reward_fn.clip is not None:
            self.ref_clip = np.concatenate([reward_fn.clip.score(references_B3HW[i:i + 256], self.prompts[i:i + 256])
                                            .double().numpy() for i in range(0, len(self.prompts), 256)])

    def identity(self) -> dict:
        """What the scores depend on besides the images (part of the cache key): the reward weights and
        the CLIP / LPIPS models (name and a fingerprint of their weights)."""
        ident = {"reward": self.rfn.config.to_dict(), "clip": None, "lpips": None}
        if self.rfn.clip is not None:
            ident["clip"] = f"{getattr(self.rfn.clip, 'name', type(self.rfn.clip).__name__)}:" \
                            f"{module_fingerprint(getattr(self.rfn.clip, 'model', None))}"
        if self.rfn.lpips is not None:
            ident["lpips"] = module_fingerprint(getattr(self.rfn.lpips, "model", self.rfn.lpips))
        return ident

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, sl: slice) -> dict[str, np.ndarray]:
        from rewards.similarity import psnr, ssim

        ref = self.refs[sl]
        out = {"ssim": ssim(images_B3HW, ref).double().numpy(), "psnr": psnr(images_B3HW, ref).double().numpy()}
        if self.rfn.clip is not None:
            out["clip_score"] = self.rfn.clip.score(images_B3HW, self.prompts[sl]).double().numpy()
        if self.rfn.lpips is not None:
            out["lpips"] = self.rfn.lpips(images_B3HW, ref).double().numpy()
        out["quality"] = self.quality_of(out, sl)
        return out

    def quality_of(self, terms: dict[str, np.ndarray], sl: slice) -> np.ndarray:
        """QUALITY from already computed per-image terms (ssim, psnr, and clip_score / lpips where the
        reward uses them) of the items ``sl``: what ``__call__`` returns as ``quality``, without
        scoring the images twice when the caller has those terms already."""
        c = self.rfn.config
        s, p = np.asarray(terms["ssim"], np.float64), np.asarray(terms["psnr"], np.float64)
        q = -c.ssim_weight * (1.0 - s) - c.psnr_weight * (1.0 - np.minimum(p, c.psnr_cap_db) / c.psnr_cap_db)
        if self.rfn.clip is not None:
            q = q + c.clip_weight * (np.asarray(terms["clip_score"], np.float64) - self.ref_clip[sl])
        if self.rfn.lpips is not None:
            q = q - c.lpips_weight * np.asarray(terms["lpips"], np.float64)
        return q


# ---- on-disk cache ----------------------------------------------------------------------------------

def module_fingerprint(module) -> str:
    """Parameter count and two float64 sums of a torch module's weights (tells checkpoints apart)."""
    if not isinstance(module, torch.nn.Module):
        return type(module).__name__
    with torch.no_grad():
        ps = [p.detach().double() for p in module.parameters()]
        n = sum(p.numel() for p in ps)
        s1 = sum(float(p.sum()) for p in ps)
        s2 = sum(float((p * p).sum()) for p in ps)
    return f"{n}:{s1:.12e}:{s2:.12e}"


class GridCache:
    """Per-item metrics of static schedules on one item set, one ``.npz`` per (generator fingerprint,
    items, scorer identity), rewritten atomically after each batch of new schedules."""

    def __init__(self, directory: Path | str | None, fingerprint: str, items: list[tuple[str, int]], scorer_id: dict) -> None:
        blob = json.dumps({"v": CACHE_VERSION, "gen": fingerprint, "items": items, "scorer": scorer_id}, sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        self.path = None if directory is None else Path(directory) / f"grid_{self.key}.npz"
        self.n_items = len(items)
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        if self.path is not None and self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                keys = [str(k) for k in z["keys"]]
                metrics = [m for m in z.files if m != "keys"]
                for i, k in enumerate(keys):
                    self.rows[k] = {m: z[m][i] for m in metrics}

    def get(self, schedule: StaticSchedule) -> dict[str, np.ndarray] | None:
        return self.rows.get(schedule_key(schedule))

    def put(self, schedule: StaticSchedule, metrics: dict[str, np.ndarray]) -> None:
        self.rows[schedule_key(schedule)] = metrics

    def save(self) -> None:
        if self.path is None or not self.rows:
            return
        keys = list(self.rows)
        names = sorted(set.intersection(*(set(r) for r in self.rows.values())))
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(keys), **{m: np.stack([self.rows[k][m] for k in keys]) for m in names})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buf.getvalue())


@dataclass
class GridEvaluator:
    """Per-item metrics of static schedules on a fixed item set: cached, prefix-shared, batched.

    scorers: callables ``(images_B3HW, item_slice) -> {metric: per-image array}``; the first must give
    ``quality``. ``evaluate`` returns ``{schedule: {metric: (n_items,) array}}``.
    """

    generator: object
    items: list[tuple[str, int]]
    scorers: list
    cache: GridCache | None = None
    batch_size: int = 100
    generated: int = 0       # schedules generated by this evaluator (not taken from the cache)
    seconds: float = 0.0

    def evaluate(self, schedules: Sequence[StaticSchedule], label: str = "") -> dict[StaticSchedule, dict[str, np.ndarray]]:
        out: dict[StaticSchedule, dict[str, np.ndarray]] = {}
        todo = []
        for s in dict.fromkeys(schedules):
            hit = self.cache.get(s) if self.cache is not None else None
            if hit is not None:
                out[s] = hit
            else:
                todo.append(s)
        if todo:
            t0 = time.time()
            n = len(self.items)
            bar = _progress_bar(len(todo) * -(-n // self.batch_size), label)
            for group in _prefix_groups(todo):
                acc: dict[StaticSchedule, dict[str, np.ndarray]] = {}

                def on_leaf(s: StaticSchedule, sl: slice, images: torch.Tensor) -> None:
                    row = acc.setdefault(s, {})
                    for scorer in self.scorers:
                        for m, v in scorer(images, sl).items():
                            row.setdefault(m, np.full(n, np.nan))[sl] = v

                run_prefix_tree(self.generator, self.items, group, on_leaf, self.batch_size,
                                progress=None if bar is None else bar.update)
                for s in group:
                    out[s] = acc[s]
                    if self.cache is not None:
                        self.cache.put(s, acc[s])
                if self.cache is not None:  # after every group: an interrupted run keeps what it finished
                    self.cache.save()
                self.generated += len(group)
            if bar is not None:
                bar.close()
            self.seconds += time.time() - t0
        return out

    def mean_quality(self, schedules: Sequence[StaticSchedule]) -> np.ndarray:
        """Mean QUALITY over the items of each schedule (the search objective)."""
        res = self.evaluate(schedules)
        return np.asarray([float(np.nanmean(res[s]["quality"])) for s in schedules])


def _prefix_groups(schedules: list[StaticSchedule]) -> list[list[StaticSchedule]]:
    """Split schedules by their option at the first scale where they differ: each group still shares
    every scale before that one and is generated (and cached) in one prefix-tree pass."""
    if len(schedules) <= 1:
        return [list(schedules)]
    n = len(schedules[0].ratios)
    for k in range(n):
        opts = {(s.ratios[k], s.drop_uncond[k]) for s in schedules}
        if len(opts) > 1:
            groups: dict = {}
            for s in schedules:
                groups.setdefault((s.ratios[k], s.drop_uncond[k]), []).append(s)
            return list(groups.values())
    return [list(schedules)]


def _progress_bar(total: int, label: str):
    if not label or total <= 0:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit="sched", leave=False, mininterval=2.0)


# ---- the search -------------------------------------------------------------------------------------

@dataclass
class StaticSearchResult:
    """The best static schedule at a total-FLOPs target, with the evidence that it is the best."""

    schedule: StaticSchedule
    quality: float                      # mean validation QUALITY of ``schedule``
    transformer_fraction: float
    total_fraction: float
    target_total_fraction: float
    grid_size: int                      # schedules in the grid
    grid_points_evaluated: int          # grid schedules with total FLOPs <= target (all evaluated)
    best_grid_schedule: StaticSchedule
    best_grid_quality: float            # the best of those: quality >= this by construction
    refinement_evaluations: int = 0
    refinement_rounds: int = 0

    def to_dict(self, widths: tuple[int, ...]) -> dict:
        return {"schedule": self.schedule.describe(widths), "ratios": list(self.schedule.ratios),
                "drop_uncond": list(self.schedule.drop_uncond), "val_quality": self.quality,
                "transformer_fraction": self.transformer_fraction, "total_fraction": self.total_fraction,
                "target_total_fraction": self.target_total_fraction, "grid_size": self.grid_size,
                "grid_points_evaluated": self.grid_points_evaluated,
                "best_grid_schedule": self.best_grid_schedule.describe(widths), "best_grid_val_quality": self.best_grid_quality,
                "refinement_evaluations": self.refinement_evaluations, "refinement_rounds": self.refinement_rounds}


def neighbours(schedule: StaticSchedule, first: int, guided: list[bool], max_ratio: float,
               steps: Sequence[float] = REFINE_STEPS) -> list[StaticSchedule]:
    """Coordinate moves on the controllable scales: ratio +-step (a ratio reaching ``max_ratio`` - the
    agent's skip threshold - becomes a skip; a skip moves down to 1 - step, on a guided scale also with
    the CFG branch dropped), and flipping the drop flag of a guided, non-skipped scale."""
    out = []
    r0, d0 = list(schedule.ratios), list(schedule.drop_uncond)
    for k in range(first, len(r0)):
        for step in steps:
            for sign in (-1.0, 1.0):
                r = round(r0[k] + sign * step, 6)
                if r < 0 or (r0[k] >= 1.0 and sign > 0):
                    continue
                if r >= max_ratio:
                    r = SKIP
                ratios, drops = list(r0), list(d0)
                ratios[k] = r
                if r >= 1.0:
                    drops[k] = False
                if (ratios, drops) != (r0, d0):
                    out.append(StaticSchedule(tuple(ratios), tuple(drops)))
                if r0[k] >= 1.0 and r < 1.0 and guided[k]:  # leaving a skip: also without the CFG branch,
                    drops[k] = True  # which may be the only way back under the target (one move, not two)
                    out.append(StaticSchedule(tuple(ratios), tuple(drops)))
        if r0[k] < 1.0 and guided[k]:
            drops = list(d0)
            drops[k] = not drops[k]
            out.append(StaticSchedule(tuple(r0), tuple(drops)))
    return list(dict.fromkeys(out))


def search_best_static(grid: Sequence[StaticSchedule], total_fraction: Callable[[StaticSchedule], float],
                       mean_quality: Callable[[list[StaticSchedule]], np.ndarray], target_total_fraction: float,
                       first: int, guided: list[bool], max_ratio: float = 0.9, refine_rounds: int = 4,
                       transformer_fraction: Callable[[StaticSchedule], float] | None = None,
                       known: dict[StaticSchedule, float] | None = None) -> StaticSearchResult:
    """Exhaustive grid (filtered by total FLOPs <= target before evaluating anything), then a greedy
    local refinement from the best grid point: each round evaluates every unseen neighbour that fits
    the target and moves to the best one if it is strictly better; stops when none is, or after
    ``refine_rounds`` rounds.

    mean_quality: schedules -> their mean QUALITY (injectable: the real one generates and scores
    images; tests pass an analytic objective). known: qualities already computed (reused, not asked).
    """
    seen: dict[StaticSchedule, float] = dict(known or {})
    fits = [s for s in grid if total_fraction(s) <= target_total_fraction + 1e-12]
    if not fits:
        raise ValueError(f"no grid schedule has total FLOPs <= {target_total_fraction:.4f} of the unpruned image's")

    def ask(schedules: list[StaticSchedule]) -> None:
        new = [s for s in dict.fromkeys(schedules) if s not in seen]
        if new:
            for s, q in zip(new, mean_quality(new)):
                seen[s] = float(q)

    ask(fits)
    best = max(fits, key=lambda s: seen[s])  # ties: the first in grid order
    best_grid, best_grid_q = best, seen[best]
    evaluated_refine, rounds = 0, 0
    for _ in range(refine_rounds):
        cands = [s for s in neighbours(best, first, guided, max_ratio)
                 if s not in seen and total_fraction(s) <= target_total_fraction + 1e-12]
        rounds += 1
        if not cands:
            break
        ask(cands)
        evaluated_refine += len(cands)
        top = max(cands, key=lambda s: seen[s])
        if seen[top] <= seen[best]:
            break
        best = top
    tf = transformer_fraction(best) if transformer_fraction is not None else float("nan")
    return StaticSearchResult(best, seen[best], tf, total_fraction(best), target_total_fraction, len(grid), len(fits),
                              best_grid, best_grid_q, evaluated_refine, rounds)


def pareto_frontier(points: Sequence[tuple[StaticSchedule, float, float]]) -> list[tuple[StaticSchedule, float, float]]:
    """(schedule, total fraction, quality) points that no cheaper-or-equal point beats: sorted by FLOPs,
    each strictly better than every point at or below its FLOPs."""
    ordered = sorted(points, key=lambda p: (p[1], -p[2]))
    out, best = [], -np.inf
    for p in ordered:
        if p[2] > best:
            out.append(p)
            best = p[2]
    return out


def per_prompt_oracle(quality_by_schedule: dict[StaticSchedule, np.ndarray], items: list[tuple[str, int]],
                      fits: Callable[[StaticSchedule], bool]) -> dict[str, StaticSchedule]:
    """For each prompt, the fitting schedule with the highest mean QUALITY over that prompt's own items
    (an upper bound on any per-prompt choice among these schedules: it sees the test images)."""
    cands = [s for s in quality_by_schedule if fits(s)]
    if not cands:
        raise ValueError("no evaluated schedule fits the oracle's FLOPs target")
    prompts = list(dict.fromkeys(p for p, _ in items))
    idx = {p: [i for i, (q, _) in enumerate(items) if q == p] for p in prompts}
    out = {}
    for p in prompts:
        means = [float(np.mean(quality_by_schedule[s][idx[p]])) for s in cands]
        out[p] = cands[int(np.argmax(means))]
    return out


# ---- random schedules -------------------------------------------------------------------------------

def vector_to_ratios(x: np.ndarray, num_scales: int, first: int, skip_threshold: float) -> list[float]:
    """Search vector in [0, 1]^k -> full ratio list (ratio >= skip_threshold becomes a skip, 1.0)."""
    r = [0.0] * num_scales
    for i, v in enumerate(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)):
        r[first + i] = 1.0 if v >= skip_threshold else float(v)
    return r


def random_schedule_at(generator, target_fraction: float, first: int, rng: np.random.Generator,
                       skip_threshold: float = 0.9, tolerance: float = 0.02, tries: int = 20000,
                       block: int = 1024) -> list[float]:
    """A random controllable ratio vector whose transformer FLOPs fraction is within ``tolerance`` of the
    target (CFG kept everywhere). Each try draws u ~ U(0, 1)^k and raises it to a random power in
    [0.2, 5] (one per try): power 1 is uniform, small powers push ratios towards skipping and large
    ones towards keeping, so low and high targets are reached in a few tries rather than thousands.
    The first try within tolerance is returned, else the closest of all ``tries``.

    Tries are drawn ``block`` at a time from the same stream, in the same order, as one at a time
    (k + 1 doubles each: the k ratios, then the power), and the stream is left right after the
    accepted try: the same draws as a one-at-a-time loop, without its Python cost per try (a target
    near the all-skip floor, 0.206 here, needs ~20,000 tries per image: 2 min for 300 images)."""
    n, k = generator.num_scales, generator.num_scales - first
    full = float(generator.flops_full())
    unpruned = float(sum(generator.schedule_flops([0.0] * n)))
    lo, hi = np.log(0.2), np.log(5.0)
    many = getattr(generator, "schedule_flops_many", None)  # all of a block's FLOPs in one call, where offered

    def gap_of(used: float | np.ndarray):  # = |generator.flops_fraction(ratios) - target|, without
        return np.abs(1.0 + (used - unpruned) / full - target_fraction)  # the unpruned FLOPs each time

    best, best_gap, done = None, float("inf"), 0
    while done < tries:
        m = min(block, tries - done)
        state = rng.bit_generator.state
        d = rng.random((m, k + 1))
        power = np.exp(lo + (hi - lo) * d[:, k])          # = rng.uniform(lo, hi), drawn after the k ratios
        v = np.clip(d[:, :k] ** power[:, None], 0.0, 1.0)
        ratios_mn = np.zeros((m, n))
        ratios_mn[:, first:] = np.where(v >= skip_threshold, 1.0, v)
        if many is not None:
            gaps = gap_of(many(ratios_mn))
            hit = np.flatnonzero(gaps <= tolerance)
            upto = int(hit[0]) + 1 if hit.size else m
        else:  # one schedule at a time, stopping at the first within tolerance
            gaps = np.full(m, np.inf)
            upto = m
            for j in range(m):
                gaps[j] = gap_of(float(sum(generator.schedule_flops([float(x) for x in ratios_mn[j]]))))
                if gaps[j] <= tolerance:
                    upto = j + 1
                    break
        j = int(np.argmin(gaps[:upto]))
        if gaps[j] <= tolerance:
            rng.bit_generator.state = state   # leave the stream right after the accepted try
            rng.random((upto, k + 1))
            return [float(x) for x in ratios_mn[j]]
        if gaps[j] < best_gap:
            best, best_gap = [float(x) for x in ratios_mn[j]], float(gaps[j])
        done += m
    return best  # closest found (reported with its own FLOPs, never hidden)

