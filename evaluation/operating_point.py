"""The operating point of a method at a quality tolerance, and bootstrap intervals over prompts.

Pure functions on arrays (no model, no image), used by ``evaluation.iso_quality``:

- ``choose_operating_point``: among a method's candidate settings (a pruning strength, a static
  schedule, an agent's budget), the cheapest whose quality loss against Original is within the
  tolerance. Original itself (FLOPs 1, loss 0) is always acceptable and is what "no candidate" means.
- ``bootstrap_paired_ci``: a percentile interval of the mean paired difference a - b, resampling PROMPTS
  (each prompt's seeds averaged first: images of one prompt are not independent; the same unit as
  ``rewards.stats.clustered_paired``).
- ``bootstrap_choices`` / ``bootstrap_savings``: the uncertainty of the FLOPs saving at the operating
  point. The point is chosen on validation prompts, so its saving is uncertain mainly through the
  choice; each replicate resamples the validation prompts and chooses again, then resamples the test
  prompts and measures the chosen candidate's saving there (for a static schedule the saving is the
  same on every image, for an agent it varies per image).

Every bootstrap is seeded (``numpy.random.default_rng(seed)``) and deterministic: the same inputs and
seed give the same interval.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rewards.stats import cluster_means

FLOPS_TIE = 1e-12   # candidates this close in FLOPs are equally cheap (then the smaller loss wins)


def choose_operating_point(flops: Sequence[float], val_loss: Sequence[float], tolerance: float) -> int | None:
    """Index of the cheapest candidate whose validation loss is within ``tolerance`` (loss <= tolerance;
    among equally cheap ones the smaller loss, then the first), or None when no candidate is (the
    operating point is then Original). ``flops``: each candidate's FLOPs fraction (any one kind:
    transformer and total order candidates alike); ``val_loss``: Original's score minus the candidate's
    (positive = worse than Original); NaN = not evaluated (never chosen)."""
    f = np.asarray(flops, dtype=np.float64)
    loss = np.asarray(val_loss, dtype=np.float64)
    if f.shape != loss.shape or f.ndim != 1:
        raise ValueError(f"need one FLOPs value and one loss per candidate, got shapes {f.shape} and {loss.shape}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0 (a loss in score units), got {tolerance!r}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"FLOPs must be finite, got {f.tolist()}")
    ok = np.flatnonzero(np.isfinite(loss) & (loss <= tolerance + 1e-12))
    if ok.size == 0:
        return None
    cheapest = f[ok].min()
    tied = ok[f[ok] <= cheapest + FLOPS_TIE]
    return int(tied[np.argmin(loss[tied])])  # argmin: the first of equal losses


def prompt_means(values: Sequence[float | None], prompts: Sequence) -> np.ndarray:
    """Mean of each prompt's finite values, prompts in first-occurrence order (NaN for a prompt with none)."""
    return cluster_means([None if v is None else float(v) for v in values], list(prompts))[1]


def percentile_ci(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of bootstrap samples (NaN, NaN when there are none)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - confidence) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def resample_indices(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_clusters) cluster indices drawn with replacement by ``default_rng(seed)``."""
    if n_clusters < 1:
        raise ValueError("a bootstrap needs at least one prompt")
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))


def bootstrap_paired_ci(a: Sequence[float | None], b: Sequence[float | None], prompts: Sequence, n_boot: int = 2000,
                        seed: int = 0, confidence: float = 0.95) -> dict:
    """Mean paired difference a - b over prompts (each prompt's per-image differences averaged first)
    and its percentile bootstrap interval over prompts: {mean_diff, lo, hi, n (prompts), n_boot, seed}.
    Images where either value is missing or not finite are left out; a prompt with none is left out."""
    _check_bootstrap(n_boot, confidence)
    if not len(a) == len(b) == len(prompts):
        raise ValueError(f"paired lists differ in length: {len(a)}, {len(b)}, {len(prompts)}")
    d = [None if (x is None or y is None or not math.isfinite(x) or not math.isfinite(y)) else float(x) - float(y)
         for x, y in zip(a, b)]
    m = prompt_means(d, prompts)
    m = m[np.isfinite(m)]
    out = {"mean_diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": int(m.size), "n_boot": n_boot,
           "seed": seed, "confidence": confidence}
    if m.size == 0:
        return out
    reps = m[resample_indices(m.size, n_boot, seed)].mean(axis=1)
    lo, hi = percentile_ci(reps, confidence)
    out.update(mean_diff=float(m.mean()), lo=lo, hi=hi)
    return out


def bootstrap_choices(flops: Sequence[float], loss_by_prompt: np.ndarray, tolerance: float, n_boot: int = 2000,
                      seed: int = 0) -> np.ndarray:
    """The operating point chosen in each bootstrap replicate of the validation prompts: (n_boot,) candidate
    indices, -1 where no candidate is within the tolerance (Original). ``loss_by_prompt``: (candidates,
    prompts) per-prompt mean loss; a candidate's replicate loss is its mean over the resampled prompts
    (a NaN row, a candidate not evaluated, is never chosen)."""
    _check_bootstrap(n_boot, 0.95)
    loss = np.asarray(loss_by_prompt, dtype=np.float64)
    if loss.ndim != 2 or loss.shape[0] != len(flops):
        raise ValueError(f"loss_by_prompt must be (candidates={len(flops)}, prompts), got shape {loss.shape}")
    idx = resample_indices(loss.shape[1], n_boot, seed)
    with np.errstate(invalid="ignore"):
        reps = loss[:, idx].mean(axis=2)  # (candidates, n_boot)
    out = np.empty(n_boot, dtype=np.int64)
    for r in range(n_boot):
        c = choose_operating_point(flops, reps[:, r], tolerance)
        out[r] = -1 if c is None else c
    return out


def bootstrap_savings(choices: np.ndarray, saving_by_prompt: dict[int, np.ndarray], n_test_prompts: int,
                      seed: int = 1) -> np.ndarray:
    """Per replicate, the FLOPs saving (1 - FLOPs fraction) of the candidate chosen in it, averaged over a
    resample of the test prompts (``default_rng(seed)``; 0 where the choice is Original, -1).
    ``saving_by_prompt[c]``: candidate c's per-test-prompt mean saving (every chosen c must be there)."""
    choices = np.asarray(choices, dtype=np.int64)
    missing = sorted({int(c) for c in choices if c >= 0} - set(saving_by_prompt))
    if missing:
        raise ValueError(f"no test savings for chosen candidate(s) {missing}")
    for c, s in saving_by_prompt.items():
        if np.shape(s) != (n_test_prompts,):
            raise ValueError(f"candidate {c}: need one saving per test prompt ({n_test_prompts}), got shape {np.shape(s)}")
    idx = resample_indices(n_test_prompts, choices.size, seed)
    out = np.zeros(choices.size)
    for r, c in enumerate(choices):
        if c >= 0:
            out[r] = float(np.asarray(saving_by_prompt[int(c)], dtype=np.float64)[idx[r]].mean())
    return out
