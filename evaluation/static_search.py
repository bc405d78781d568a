"""Fixed schedules matched to a FLOPs target: the best one (CMA-ES black-box search) and random ones.

A static schedule is a ratio per controllable scale, shared by every prompt. The search maximises
the mean terminal quality reward (the run's own reward weights: CLIP change, 1 - SSIM, LPIPS) on
validation prompts, with a steep penalty above the FLOPs target, so the result is the best a single
hand-tunable schedule can do at the RL agent's compute. FLOPs are analytic, so the constraint is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OVER_BUDGET_PENALTY = 20.0  # reward per unit of FLOPs fraction above the target during the search


def vector_to_ratios(x: np.ndarray, num_scales: int, first: int, skip_threshold: float) -> list[float]:
    """Search vector in [0, 1]^k -> full ratio list (ratio >= skip_threshold becomes a skip, 1.0)."""
    r = [0.0] * num_scales
    for i, v in enumerate(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)):
        r[first + i] = 1.0 if v >= skip_threshold else float(v)
    return r


@dataclass
class SearchResult:
    ratios: list[float]
    flops_fraction: float
    mean_quality: float
    evaluations: int
    history: list[tuple[list[float], float, float]]  # (ratios, flops fraction, objective) per evaluation


class StaticScheduleSearch:
    """Scores fixed ratio lists on a prompt set against cached unpruned references."""

    def __init__(self, generator, prompts: list[str], seeds: list[int], reward_fn, batch: int = 32) -> None:
        self.g, self.reward_fn, self.batch = generator, reward_fn, batch
        self.items = [(p, s) for p in prompts for s in seeds]
        with torch.no_grad():
            self.refs = torch.cat([self._generate(None, self.items[i:i + batch]) for i in range(0, len(self.items), batch)])
        clip = reward_fn.clip
        self.ref_clip = None
        if clip is not None:
            self.ref_clip = clip.score(self.refs, [p for p, _ in self.items]).tolist()

    def _generate(self, ratios, items):
        from generator.schedules import RatioListSchedule

        sched = None if ratios is None else RatioListSchedule(tuple(ratios))
        img, _ = self.g.generate([p for p, _ in items], [s for _, s in items], schedule=sched)
        return img

    @torch.no_grad()
    def mean_quality(self, ratios: list[float]) -> float:
        """Mean terminal quality reward (budget term excluded) of a fixed schedule over the prompt set."""
        total = 0.0
        for i in range(0, len(self.items), self.batch):
            chunk = self.items[i:i + self.batch]
            imgs = self._generate(ratios, chunk)
            for j, (p, _) in enumerate(chunk):
                k = i + j
                _, terms = self.reward_fn.terminal(imgs[j:j + 1], self.refs[k:k + 1], p, used_fraction=0.0,
                                                   reference_clip=None if self.ref_clip is None else self.ref_clip[k])
                total += terms["quality_reward"]
        return total / len(self.items)

    def search(self, target_fraction: float, first: int, skip_threshold: float = 0.9, evaluations: int = 60,
               seed: int = 0, x0: list[float] | None = None) -> SearchResult:
        """CMA-ES over the controllable ratios; best feasible (FLOPs <= target) schedule found."""
        import cma

        n = self.g.num_scales
        k = n - first
        history: list = []
        best: tuple[float, list[float], float] | None = None

        def objective(x) -> float:
            nonlocal best
            ratios = vector_to_ratios(x, n, first, skip_threshold)
            frac = self.g.flops_fraction(ratios)
            excess = max(0.0, frac - target_fraction)
            # over budget: rank by excess only (no need to render), so the search walks back into the feasible set
            q = self.mean_quality(ratios) if excess == 0 else float("nan")
            obj = q if excess == 0 else -OVER_BUDGET_PENALTY * excess - 10.0
            history.append((ratios, frac, obj))
            if excess == 0 and (best is None or q > best[0]):
                best = (q, ratios, frac)
            return -obj

        start = np.clip(np.asarray(x0 if x0 is not None else [0.5] * k, dtype=np.float64), 0.0, 1.0)
        es = cma.CMAEvolutionStrategy(start.tolist(), 0.3, {"bounds": [0.0, 1.0], "seed": seed + 1, "verbose": -9,
                                                            "maxfevals": evaluations, "popsize": max(6, 4 + int(3 * np.log(k)))})
        while not es.stop() and len(history) < evaluations:
            xs = es.ask()
            es.tell(xs, [objective(x) for x in xs])
        if best is None:  # nothing feasible visited: fall back to skipping every controllable scale
            ratios = vector_to_ratios(np.ones(k), n, first, skip_threshold)
            best = (self.mean_quality(ratios), ratios, self.g.flops_fraction(ratios))
        return SearchResult(ratios=best[1], flops_fraction=best[2], mean_quality=best[0], evaluations=len(history),
                            history=history)


def random_schedule_at(generator, target_fraction: float, first: int, rng: np.random.Generator,
                       skip_threshold: float = 0.9, tolerance: float = 0.02, tries: int = 20000) -> list[float]:
    """A uniformly random controllable ratio vector whose FLOPs fraction is within ``tolerance`` of the target."""
    n = generator.num_scales
    best, best_gap = None, float("inf")
    for _ in range(tries):
        ratios = vector_to_ratios(rng.random(n - first), n, first, skip_threshold)
        gap = abs(generator.flops_fraction(ratios) - target_fraction)
        if gap <= tolerance:
            return ratios
        if gap < best_gap:
            best, best_gap = ratios, gap
    return best  # closest found (reported with its own FLOPs, never hidden)
