"""Fitting the lossless selector (``agents.selector.LosslessSelector``, ``train.py --algo selector
--objective iso-quality``): per image, the fewest FLOPs for a bounded loss of quality.

Candidates: the static frontier's schedules, the near-lossless grid (``evaluation.iso_candidates``: one-
and two-scale modifications of the unpruned schedule, with the run's levers) and the unpruned schedule;
of these, the Pareto set of mean QUALITY loss vs transformer FLOPs on the TRAINING items (QUALITY under
the iso-quality objective: the CLIP term capped at 0, so the loss is >= 0 and 0 for the unpruned
schedule). Every candidate is generated on the training and the validation items (the static search's
``GridEvaluator`` and cache), so each image has a loss per candidate; a ridge regression per candidate
predicts that loss from the image's observation at the first controllable scale (the ridge strength
with the smallest validation error).

Operating points: per ``epsilon`` (a bound on the mean QUALITY loss), the rules tried on the validation
items are every single candidate for every image ("static": the best static schedule among them is the
cheapest within epsilon) and the price rules (each image the candidate of least FLOPs + mu * predicted
loss, for a grid of mu). Feasible: validation mean loss <= epsilon. A price rule replaces the best
static schedule only if it is cheaper with the one-sided 95 % lower bound of its paired FLOPs saving
above 0, so learning can only add to the best static schedule. Nothing here reads the judge: the judge
only picks which epsilon is reported, in ``evaluation.iso_quality``, as for every other family.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from agents.selector import LosslessLevel, LosslessSelector

DEFAULT_EPSILONS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25)


@dataclass(frozen=True)
class LosslessSettings:
    """Operating points (mean QUALITY losses), training items, ridge strengths, prices tried on validation,
    the near-lossless grid's ratios."""

    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    train_source: str = "train"
    train_prompts: int = 150
    train_seeds: tuple[int, ...] = (0, 1)
    ridge: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    prices: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.1, 1000.0, 41))
    one_scale_ratios: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5)
    two_scale_ratios: tuple[float, ...] = (0.25,)
    batch_size: int = 100
    cache_dir: Path | None = Path("results") / "cache"

    def check(self) -> None:
        if not self.epsilons or any(not (isinstance(e, (int, float)) and 0 <= e < 1) for e in self.epsilons):
            raise ValueError(f"lossless epsilons must be quality losses in [0, 1), got {list(self.epsilons)}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError(f"lossless epsilons list a value twice: {list(self.epsilons)}")


def quality_loss(quality: np.ndarray) -> np.ndarray:
    """The lossless objective's per-image loss L = -QUALITY, >= 0 (float rounding can leave -0.0 or a
    few ulps below 0 for an image equal to its reference)."""
    return np.maximum(-np.asarray(quality, np.float64), 0.0)


def pareto_by_loss(flops: dict, loss: dict) -> list:
    """Schedules of the lower-left Pareto set of (transformer FLOPs, mean loss), sorted by FLOPs: each one
    strictly less lossy than every cheaper one."""
    out, best = [], math.inf
    for s in sorted(flops, key=lambda s: (flops[s], loss[s])):
        if loss[s] < best - 1e-12:
            out.append(s)
            best = loss[s]
    return out


def _lower_bound(x: np.ndarray) -> float:
    return float(x.mean() - 1.645 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else -math.inf


def choose_levels(sel: LosslessSelector, X_val: np.ndarray, loss_val: np.ndarray, epsilons, prices,
                  labels: list[str]) -> tuple[list, list]:
    """Per epsilon the ``LosslessLevel`` (module docstring) and its report line (``labels``: the candidates')."""
    n, k = loss_val.shape
    rows = np.arange(n)
    price_rules = []
    for mu in prices:
        idx = sel.choose_at(X_val, "price", mu)
        price_rules.append((mu, idx, sel.flops[idx], loss_val[rows, idx]))
    levels, report = [], []
    for eps in epsilons:
        within = [i for i in range(k) if loss_val[:, i].mean() <= eps + 1e-12]
        static = min(within, key=lambda i: (sel.flops[i], loss_val[:, i].mean()))  # the unpruned one always fits
        best = ("static", float(static), float(sel.flops[static]), float(loss_val[:, static].mean()), 0.0, 0.0, 0.0)
        for mu, idx, f, l in price_rules:
            saving = sel.flops[static] - f
            if l.mean() <= eps + 1e-12 and saving.mean() > best[4] and _lower_bound(saving) > 0:
                best = ("price", float(mu), float(f.mean()), float(l.mean()), float(saving.mean()),
                        _lower_bound(saving), float((idx != static).mean()))
        levels.append(LosslessLevel(float(eps), best[0], best[1]))
        report.append({"epsilon": eps, "rule": best[0], "value": best[1], "val_flops": best[2], "val_loss": best[3],
                       "best_static": labels[static],
                       "best_static_flops": float(sel.flops[static]), "best_static_val_loss": float(loss_val[:, static].mean()),
                       "val_flops_saving_vs_static": best[4], "val_saving_lower_bound": best[5],
                       "val_deviation_rate": best[6]})
    return levels, report


def fit_lossless(generator, reward_fn, observer, frontier, val_items: list, train_items: list,
                 settings: LosslessSettings, allow_drop: bool, log: Callable[[str], None] = print
                 ) -> tuple[LosslessSelector, dict]:
    """The lossless selector (module docstring) and a report of the fit."""
    from evaluation.grid_evaluation import items_quality
    from evaluation.iso_candidates import near_lossless_schedules
    from evaluation.selector_fit import first_scale_features, fit_ridge
    from evaluation.static_search import FlopsTable, guided_scales

    settings.check()
    if reward_fn.config.objective != "iso-quality":
        raise ValueError("the lossless selector is fitted with the iso-quality objective's QUALITY")
    t0 = time.time()
    flops = FlopsTable(generator)
    first = frontier.first_controllable
    grid = near_lossless_schedules(generator.num_scales, first, guided_scales(generator), settings.one_scale_ratios,
                                   settings.two_scale_ratios, allow_drop)
    pool = list(dict.fromkeys([e.schedule for e in frontier.entries] + grid))
    loss = {}
    for name, items in (("train", train_items), ("val", val_items)):
        q = items_quality(generator, reward_fn, items, pool, settings.batch_size, settings.cache_dir,
                          f"lossless candidates on the {name} items")
        loss[name] = {s: quality_loss(q[s]) for s in pool}
    f = {s: flops.transformer(s) for s in pool}
    cands = pareto_by_loss(f, {s: float(loss["train"][s].mean()) for s in pool})
    L = {n: np.stack([loss[n][s] for s in cands], axis=1) for n in ("train", "val")}
    X = {"train": first_scale_features(generator, observer, train_items, first, settings.batch_size),
         "val": first_scale_features(generator, observer, val_items, first, settings.batch_size)}
    fits = {lam: fit_ridge(X["train"], L["train"], lam) for lam in settings.ridge}
    cand_flops = np.asarray([f[s] for s in cands])

    def val_error(lam: float) -> float:
        sel = LosslessSelector(cands, cand_flops, *fits[lam], levels=[])
        return float(((sel.predicted_loss(X["val"]) - L["val"]) ** 2).mean())

    lam = min(settings.ridge, key=val_error)
    sel = LosslessSelector(cands, cand_flops, *fits[lam], levels=[])
    sel.levels, levels_report = choose_levels(sel, X["val"], L["val"], settings.epsilons, settings.prices,
                                                 [c.describe(tuple(generator.scale_widths)) for c in cands])
    for r in levels_report:
        what = (f"price {r['value']:.3g}: {r['val_flops']:.3f} FLOPs, saving {r['val_flops_saving_vs_static']:+.3f} "
                f"(lower bound {r['val_saving_lower_bound']:+.3f}) on {r['val_deviation_rate']:.0%} of images"
                if r["rule"] == "price" else f"the best static schedule ({r['val_flops']:.3f} FLOPs)")
        log(f"lossless selector at epsilon {r['epsilon']:g}: {what}; best static {r['best_static']} "
            f"{r['best_static_flops']:.3f} (val loss {r['best_static_val_loss']:.3f})")
    widths = tuple(generator.scale_widths)
    report = {"candidates": [{"schedule": s.describe(widths), "transformer": f[s], "train_loss": float(loss["train"][s].mean()),
                              "val_loss": float(loss["val"][s].mean())} for s in cands],
              "pool": len(pool), "ridge": lam, "ridge_val_mse": {str(k): val_error(k) for k in settings.ridge},
              "levels": levels_report, "train_items": len(train_items), "val_items": len(val_items),
              "seconds": round(time.time() - t0, 1)}
    return sel, report
