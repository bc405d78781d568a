"""Per-item metrics of static schedules on a fixed item set: generated over a prefix tree of the
scales, scored for QUALITY, cached on disk.

Generation is shared: schedules are arranged in a prefix tree over the scales (``state.copy()`` at
each branching), batched over the items, so the 9 options of the first controllable scale are run once
each, not once per schedule. Per-item results are cached on disk (``GridCache``) keyed by the
generator's fingerprint, the items and the scorer, so a rerun evaluates nothing it has seen.
QUALITY is the reward's quality terms only (see ``evaluation.static_search``).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from evaluation.static_search import schedule_key
from rewards.stats import check_unique
from generator.schedules import StaticSchedule
from generator.weights_io import atomic_write_bytes

CACHE_VERSION = 1


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
    quality terms (``RewardConfig.quality``, the formula ``RewardFunction.terminal(...)[1]["quality_reward"]``
    uses too; tested equal), batched, plus
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
        reward = self.rfn.config.to_dict()
        if reward["objective"] == "budget":  # the keys the budget objective had before iso-quality existed: caches stay valid
            reward = {k: v for k, v in reward.items() if k not in ("objective", "epsilon", "lossless_penalty")}
        ident = {"reward": reward, "clip": None, "lpips": None}
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
        clip_delta = None
        if self.rfn.clip is not None:
            clip_delta = np.asarray(terms["clip_score"], np.float64) - self.ref_clip[sl]
        lpips = terms["lpips"] if self.rfn.lpips is not None else None
        return np.asarray(self.rfn.config.quality(terms["ssim"], terms["psnr"], clip_delta=clip_delta, lpips=lpips),
                          np.float64)


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


# ---- items and the validation pass -------------------------------------------------------------------

def check_items(prompts: list[str], seeds: list[int], source: str, grammar: bool) -> list[tuple[str, int]]:
    """(prompt, seed) items, every prompt with every seed. Duplicate prompts or seeds are an error
    naming them; with ``grammar`` (the procedural domain), a prompt outside the caption grammar is an
    error naming its line and the first word outside it."""
    check_unique(f"seeds in --seeds {' '.join(map(str, seeds))}", list(seeds))
    check_unique(f"prompts in {source}", list(prompts))
    if grammar:
        from domain.grammar import parse_caption

        for i, p in enumerate(prompts):
            try:
                parse_caption(p)
            except ValueError as e:
                raise ValueError(f"{source}, prompt {i + 1}: {e}") from None
    return [(p, int(s)) for p in prompts for s in seeds]


def generate_references(generator, items: list[tuple[str, int]], batch_size: int) -> torch.Tensor:
    """Unpruned images (N, 3, H, W) of the items, in batches (the QUALITY references)."""
    with torch.no_grad():
        return torch.cat([generator.generate([p for p, _ in items[i:i + batch_size]],
                                             [s for _, s in items[i:i + batch_size]])[0]
                          for i in range(0, len(items), batch_size)])


def quality_evaluator(generator, reward_fn, items: list[tuple[str, int]], batch_size: int,
                      cache_dir: Path | None) -> GridEvaluator:
    """A ``GridEvaluator`` of QUALITY on ``items`` against their unpruned references (generated here),
    through the ``GridCache`` in ``cache_dir`` (None: no cache)."""
    refs = generate_references(generator, items, batch_size)
    scorer = QualityScorer(reward_fn, refs, [p for p, _ in items])
    return GridEvaluator(generator, items, [scorer], batch_size=batch_size,
                         cache=GridCache(cache_dir, generator.fingerprint(), items, scorer.identity()))


def items_quality(generator, reward_fn, items: list[tuple[str, int]], schedules: list, batch_size: int,
                  cache_dir: Path | None, label: str) -> dict:
    """{schedule: per-item QUALITY (float64 array, items' order)} of static ``schedules`` on ``items``
    (``quality_evaluator``)."""
    res = quality_evaluator(generator, reward_fn, items, batch_size, cache_dir).evaluate(list(dict.fromkeys(schedules)),
                                                                                        label=label)
    return {s: np.asarray(res[s]["quality"], np.float64) for s in schedules}


def validation_pass(generator, fits: list, val_items: list[tuple[str, int]], reward_fn, cache_dir: Path | None,
                     batch_size: int):
    """Every fitting grid schedule on the validation items: (GridEvaluator, {schedule: mean QUALITY})."""
    val_eval = quality_evaluator(generator, reward_fn, val_items, batch_size, cache_dir)
    val_res = val_eval.evaluate(fits, label="static schedules on the validation items")
    return val_eval, {s: float(np.nanmean(val_res[s]["quality"])) for s in fits}
