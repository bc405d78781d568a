"""The selector: per image, one of the K best frontier schedules of its budget, chosen from what the
image shows before the first controllable scale (SkipVAR-style), falling back to the frontier schedule.

Per budget b it holds K candidate static schedules (``candidates[0]`` = the frontier schedule for b,
the others the next best static schedules within b on validation) and a linear model per candidate of
the QUALITY gain over the frontier schedule (ridge regression on standardised features: the agent's
observation at the first controllable scale, i.e. the code-map statistics of the early scales and the
prompt's projected CLIP embedding). An image gets the candidate of the largest predicted gain if that
gain exceeds ``margin`` (tuned on validation), else the frontier schedule. Fitting lives in
``evaluation.selector_fit``; ``train.py --algo selector`` runs it. The run directory holds
``selector.safetensors`` (the weights, float32, and the candidates and margins in its header).

It implements the schedule protocol (``ratio`` / ``drop_unconditional`` per scale, one value per image
for a batch), so ``generate.py --agent`` and ``evaluate_agent.py`` use it like any trained agent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from generator.schedules import StaticSchedule

SELECTOR_FILE = "selector.safetensors"


@dataclass
class BudgetSelector:
    """One budget's candidates and gain model. ``weights``: (K, F + 1) (last column the intercept; row 0,
    the frontier schedule's gain over itself, is 0)."""

    budget: float
    candidates: list[StaticSchedule]
    weights: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    margin: float

    def predicted_gain(self, X_NF: np.ndarray) -> np.ndarray:
        """(N, K) predicted QUALITY gain of each candidate over the frontier schedule."""
        Z = (np.asarray(X_NF, np.float64) - self.feature_mean) / self.feature_std
        Z1 = np.concatenate([Z, np.ones((Z.shape[0], 1))], axis=1)
        return Z1 @ self.weights.T

    def choose(self, X_NF: np.ndarray, margin: float | None = None) -> np.ndarray:
        """(N,) candidate index per image: the best predicted gain if it exceeds the margin, else 0."""
        g = self.predicted_gain(X_NF)
        best = np.argmax(g, axis=1)
        m = self.margin if margin is None else margin
        return np.where(g[np.arange(len(best)), best] > m, best, 0)


class _Weights(nn.Module):
    """The selectors' arrays as buffers, so that they save and load as safetensors."""

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        for i, (k, f) in enumerate(shapes):
            self.register_buffer(f"w{i}", torch.zeros(k, f + 1, dtype=torch.float64))
            self.register_buffer(f"mean{i}", torch.zeros(f, dtype=torch.float64))
            self.register_buffer(f"std{i}", torch.ones(f, dtype=torch.float64))


def save_selectors(path: Path, selectors: list[BudgetSelector], info: dict) -> None:
    from generator.weights_io import save_module

    shapes = [(s.weights.shape[0], s.weights.shape[1] - 1) for s in selectors]
    w = _Weights(shapes)
    for i, s in enumerate(selectors):
        getattr(w, f"w{i}").copy_(torch.from_numpy(s.weights))
        getattr(w, f"mean{i}").copy_(torch.from_numpy(s.feature_mean))
        getattr(w, f"std{i}").copy_(torch.from_numpy(s.feature_std))
    meta = {"shapes": shapes, "budgets": [s.budget for s in selectors], "margins": [s.margin for s in selectors],
            "candidates": [[[list(c.ratios), list(c.drop_uncond)] for c in s.candidates] for s in selectors],
            "info": info}
    save_module(w, path, meta, dtype=torch.float64)


def load_selectors(path: Path) -> tuple[list[BudgetSelector], dict]:
    from generator.weights_io import load_module, read_metadata

    how = "Train one with `python train.py --algo selector`."
    meta = read_metadata(path, how)
    if meta.get("objective") == "iso-quality":
        raise ValueError(f"{path} is a lossless selector (--objective iso-quality): it takes a tolerance, not a budget")
    shapes = [tuple(s) for s in meta["shapes"]]
    w = load_module(_Weights(shapes), path, how)
    out = []
    for i, (b, m, cands) in enumerate(zip(meta["budgets"], meta["margins"], meta["candidates"])):
        out.append(BudgetSelector(float(b), [StaticSchedule(tuple(r), tuple(d)) for r, d in cands],
                                  getattr(w, f"w{i}").numpy(), getattr(w, f"mean{i}").numpy(),
                                  getattr(w, f"std{i}").numpy(), float(m)))
    return sorted(out, key=lambda s: s.budget), meta.get("info", {})


def selector_for(selectors: list[BudgetSelector], budget: float) -> BudgetSelector:
    """The selector of the largest trained budget <= ``budget`` (its candidates all fit ``budget``)."""
    fitting = [s for s in selectors if s.budget <= budget + 1e-9]
    if not fitting:
        raise ValueError(f"budget {budget:.4f} is below the selector's smallest trained budget {selectors[0].budget:.4f} "
                         f"(trained at {[round(s.budget, 4) for s in selectors]})")
    return fitting[-1]


class SelectorSchedule:
    """A ``BudgetSelector`` as a per-image schedule: at the first controllable scale it observes each
    image and picks its candidate; every controllable scale then follows that candidate."""

    name = "selector"

    def __init__(self, selector: BudgetSelector, observer, first_controllable: int, label: str = "selector") -> None:
        self.selector, self.observer, self.first = selector, observer, first_controllable
        self.label = label
        self._chosen: list[StaticSchedule] | None = None
        self._decided, self._state_id = None, None

    def choose(self, state) -> list[StaticSchedule]:
        """The candidate of every image of ``state``, decided once, at the first controllable scale (a
        state reaching it again, or a new state, is decided afresh)."""
        if state.scale_index == self.first:
            key = (id(state), len(state.reports))
            if self._decided != key:
                idx = self.selector.choose(self.observer.observe_batch(state, None))
                self._chosen, self._decided, self._state_id = [self.selector.candidates[i] for i in idx], key, id(state)
        elif self._state_id != id(state) or self._chosen is None or len(self._chosen) != state.batch:
            raise ValueError(f"the selector decides at scale {self.first}: this state was not shown to it there")
        return self._chosen

    def _per_image(self, values: list, state):
        return values[0] if state.batch == 1 else values

    def ratio(self, scale_index: int, num_scales: int, state=None):
        if scale_index < self.first:
            return 0.0
        if state is None:
            raise ValueError("the selector observes the generation: pass the state")
        return self._per_image([s.ratios[scale_index] for s in self.choose(state)], state)

    def drop_unconditional(self, scale_index: int, num_scales: int, state=None):
        if scale_index < self.first or state is None:
            return False
        return self._per_image([s.drop_uncond[scale_index] for s in self.choose(state)], state)

    def describe(self, widths) -> str:
        at = "eps=" if isinstance(self.selector, LosslessSelector) else ""
        return f"{self.label}@{at}{self.selector.budget:g}"


# ---- the lossless selector (--objective iso-quality) ------------------------------------------------

@dataclass
class LosslessLevel:
    """One operating point of a ``LosslessSelector``: the validation quality loss ``epsilon`` it was tuned
    to stay within, and its rule: ``("static", i)`` serves candidate i to every image; ``("price", mu)``
    serves each image the candidate of least ``transformer FLOPs + mu * predicted quality loss``."""

    epsilon: float
    rule: str
    value: float

    def to_json(self) -> list:
        return [self.epsilon, self.rule, self.value]


@dataclass
class LosslessSelector:
    """Lossless mode: per image the candidate (static schedules sorted by transformer FLOPs, the unpruned
    schedule last) that is cheapest for its predicted quality loss. ``weights`` (K, F + 1): a linear model
    per candidate of the QUALITY loss (>= 0; the unpruned schedule's is 0) from the standardised
    first-controllable-scale observation; predictions below 0 count as 0."""

    candidates: list[StaticSchedule]
    flops: np.ndarray
    weights: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    levels: list[LosslessLevel]
    level: int = 0

    @property
    def budget(self) -> float:  # what SelectorSchedule.describe prints: here the operating point's epsilon
        return self.levels[self.level].epsilon

    def predicted_loss(self, X_NF: np.ndarray) -> np.ndarray:
        """(N, K) predicted QUALITY loss of each candidate, floored at 0."""
        Z = (np.asarray(X_NF, np.float64) - self.feature_mean) / self.feature_std
        return np.maximum(np.concatenate([Z, np.ones((Z.shape[0], 1))], axis=1) @ self.weights.T, 0.0)

    def choose_at(self, X_NF: np.ndarray, rule: str, value: float) -> np.ndarray:
        """(N,) candidate index per image under a rule (``LosslessLevel``)."""
        n = np.asarray(X_NF).shape[0]
        if rule == "static":
            return np.full(n, int(value))
        return np.argmin(self.flops[None, :] + value * self.predicted_loss(X_NF), axis=1)

    def choose(self, X_NF: np.ndarray) -> np.ndarray:
        lv = self.levels[self.level]
        return self.choose_at(X_NF, lv.rule, lv.value)

    def at(self, epsilon: float) -> "LosslessSelector":
        """This selector at the operating point of the largest trained epsilon <= ``epsilon``."""
        eps = [lv.epsilon for lv in self.levels]
        fitting = [i for i, e in enumerate(eps) if e <= epsilon + 1e-12]
        if not fitting:
            raise ValueError(f"tolerance {epsilon:g} is below the lossless selector's smallest trained epsilon "
                             f"{min(eps):g} (trained at {eps})")
        return replace(self, level=max(fitting, key=lambda i: eps[i]))


def save_lossless(path: Path, sel: LosslessSelector, info: dict) -> None:
    from generator.weights_io import save_module

    k, f = sel.weights.shape[0], sel.weights.shape[1] - 1
    w = _Weights([(k, f)])
    w.w0.copy_(torch.from_numpy(sel.weights))
    w.mean0.copy_(torch.from_numpy(sel.feature_mean))
    w.std0.copy_(torch.from_numpy(sel.feature_std))
    meta = {"objective": "iso-quality", "shapes": [(k, f)], "flops": [float(x) for x in sel.flops],
            "candidates": [[list(c.ratios), list(c.drop_uncond)] for c in sel.candidates],
            "levels": [lv.to_json() for lv in sel.levels], "info": info}
    save_module(w, path, meta, dtype=torch.float64)


def load_lossless(path: Path) -> tuple[LosslessSelector, dict]:
    from generator.weights_io import load_module, read_metadata

    how = "Train one with `python train.py --algo selector --objective iso-quality`."
    meta = read_metadata(path, how)
    if meta.get("objective") != "iso-quality":
        raise ValueError(f"{path} is a budget selector, not a lossless one")
    w = load_module(_Weights([tuple(s) for s in meta["shapes"]]), path, how)
    cands = [StaticSchedule(tuple(r), tuple(d)) for r, d in meta["candidates"]]
    levels = [LosslessLevel(float(e), str(r), float(v)) for e, r, v in meta["levels"]]
    return LosslessSelector(cands, np.asarray(meta["flops"], np.float64), w.w0.numpy(), w.mean0.numpy(),
                            w.std0.numpy(), levels), meta.get("info", {})
