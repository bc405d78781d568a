"""Fitting the selector (``agents.selector``): labels from training prompts, margin on validation.

Per budget: the candidates are the frontier schedule and the K - 1 next best frontier (Pareto) schedules
within the budget (by validation QUALITY, ``evaluation.frontier_build``): the cheaper frontier schedules,
not the whole search pool's near-copies of the first (docs/controllers.md, "The three learners"). Every
candidate is generated on the training items (``train`` prompts x seeds, through the static search's
``GridEvaluator`` and cache), so each training image has a QUALITY per candidate; the label of candidate
c is its gain over the frontier schedule on that image. A ridge regression per candidate predicts that
gain from the image's observation at the first controllable scale. The ridge strength and the fallback
margin are chosen on the validation items (the frontier's own) by the realised mean gain there, "never
deviate" (gain 0) among the choices: a selector that does not help on validation falls back to the
frontier everywhere. Ridge on the gains is a regret surrogate: the chosen candidate's realised loss
against the best one is what the validation choice measures. Nothing here reads the judge.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from agents.selector import BudgetSelector

NEVER = math.inf  # the margin that never deviates from the frontier schedule


@dataclass(frozen=True)
class SelectorSettings:
    """Budgets (transformer FLOPs fractions), candidates per budget, training items, the ridge
    strengths and margins tried on validation."""

    budgets: tuple[float, ...]
    k: int = 8
    train_source: str = "train"
    train_prompts: int = 1000
    train_seeds: tuple[int, ...] = (0, 1)
    ridge: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    margins: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, NEVER)
    batch_size: int = 100
    cache_dir: Path | None = Path("results") / "cache"

    def check(self) -> None:
        if self.k < 2:
            raise ValueError(f"--selector-k must be >= 2 (the frontier schedule and at least one other), got {self.k}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError(f"selector budgets must be fractions in (0, 1], got {list(self.budgets)}")


def first_scale_features(generator, observer, items: list[tuple[str, int]], first: int, batch_size: int) -> np.ndarray:
    """(N, F): each item's observation at the first controllable scale (the early scales run unpruned)."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            state = generator.start([p for p, _ in chunk], [s for _, s in chunk])
            for _ in range(first):
                generator.step(state, 0.0)
            rows.append(observer.observe_batch(state, None))
    return np.concatenate(rows).astype(np.float64)


def fit_ridge(X: np.ndarray, Y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge of every column of ``Y`` (N, K) on standardised ``X`` (N, F) with an unpenalised intercept:
    (weights (K, F + 1), feature mean, feature std; a constant feature gets std 1)."""
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    Z = (X - mean) / std
    Zc, Yc = Z - Z.mean(axis=0), Y - Y.mean(axis=0)
    A = Zc.T @ Zc + lam * np.eye(Z.shape[1])
    W = np.linalg.solve(A, Zc.T @ Yc)  # (F, K)
    b = Y.mean(axis=0) - Z.mean(axis=0) @ W
    return np.concatenate([W.T, b[:, None]], axis=1), mean, std


def realised_gain(sel: BudgetSelector, X: np.ndarray, gains: np.ndarray, margin: float) -> tuple[float, float, float]:
    """(mean realised gain over the frontier schedule, share of images deviating, one-sided 95 % lower
    bound of the mean gain) of ``sel`` at ``margin``."""
    idx = sel.choose(X, margin)
    g = gains[np.arange(len(idx)), idx]
    lower = float(g.mean() - 1.645 * g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else -math.inf
    return float(g.mean()), float((idx != 0).mean()), lower


def candidates_for(frontier, transformer: Callable, budget: float, k: int) -> list:
    """The frontier schedule for ``budget`` first, then the next best frontier schedules within it."""
    base = frontier.schedule_for(budget)
    quality = {e.schedule: e.val_quality for e in frontier.entries}
    others = sorted((s for s in quality if s != base and transformer(s) <= budget + 1e-9), key=lambda s: -quality[s])
    return [base] + others[:k - 1]


def fit_selectors(generator, reward_fn, observer, frontier, val_items: list, train_items: list,
                  settings: SelectorSettings, log: Callable[[str], None] = print) -> tuple[list[BudgetSelector], dict]:
    """One ``BudgetSelector`` per budget (module docstring) and a report of the fit."""
    from evaluation.grid_evaluation import items_quality
    from evaluation.static_search import FlopsTable

    settings.check()
    t0 = time.time()
    flops = FlopsTable(generator)
    first = frontier.first_controllable
    cands = {b: candidates_for(frontier, flops.transformer, b, settings.k) for b in settings.budgets}
    wanted = list(dict.fromkeys(s for c in cands.values() for s in c))
    per_item = {name: items_quality(generator, reward_fn, items, wanted, settings.batch_size, settings.cache_dir,
                                    f"selector candidates on the {name} items")
                for name, items in (("train", train_items), ("val", val_items))}
    X = {"train": first_scale_features(generator, observer, train_items, first, settings.batch_size),
         "val": first_scale_features(generator, observer, val_items, first, settings.batch_size)}
    selectors, report = [], {"budgets": [], "train_items": len(train_items), "val_items": len(val_items)}
    for b in settings.budgets:
        cs = cands[b]
        gains = {n: np.stack([per_item[n][s] - per_item[n][cs[0]] for s in cs], axis=1) for n in ("train", "val")}
        tried, fits = [], {}
        for lam in settings.ridge:
            fits[lam] = fit_ridge(X["train"], gains["train"], lam)
            sel = BudgetSelector(b, cs, *fits[lam], margin=NEVER)
            tried += [(*realised_gain(sel, X["val"], gains["val"], m), m, lam) for m in settings.margins if m != NEVER]
        g, dev, lower, m, lam = max(tried, key=lambda t: t[0])
        if not lower > 0:  # the best setting's paired validation gain is not surely positive: keep the frontier
            g, dev, m = 0.0, 0.0, NEVER
        selectors.append(BudgetSelector(b, cs, *fits[lam], margin=m))
        oracle = float(gains["val"].max(axis=1).mean())
        report["budgets"].append({"budget": b, "candidates": len(cs), "ridge": lam, "margin": m, "val_gain": g,
                                  "val_gain_lower_bound_of_best": lower, "val_deviation_rate": dev, "val_per_image_oracle_gain": oracle,
                                  "train_gain_at_margin": realised_gain(selectors[-1], X["train"], gains["train"], m)[0]})
        log(f"selector at {b:.3f}: {len(cs)} candidates; on validation gain {g:+.4f} deviating on {dev:.0%} "
            f"(margin {m:g}, ridge {lam:g}; per-image oracle {oracle:+.4f})")
    report["seconds"] = round(time.time() - t0, 1)
    return selectors, report
