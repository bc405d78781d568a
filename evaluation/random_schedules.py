"""Random pruning schedules at a FLOPs target: the "random" row of the comparison (what an agent's
FLOPs buy without any choice), drawn reproducibly from a seeded ``np.random.Generator``.

The random row gets the compared agent's levers and never more than its compute: ratios on the
agent's controllable scales, CFG-drop flags where the agent may drop the branch, and a transformer
FLOPs fraction in ``[target - tolerance, target]`` (never above the target)."""

from __future__ import annotations

import numpy as np

from generator.schedules import StaticSchedule

TOLERANCE = 0.02         # a random schedule's transformer FLOPs fraction lies in [target - TOLERANCE, target]
DROP_PROBABILITY = 0.5   # where the agent may drop the CFG branch, each guided, run scale drops it with this chance


def vector_to_ratios(x: np.ndarray, num_scales: int, first: int, skip_threshold: float) -> list[float]:
    """Search vector in [0, 1]^k -> full ratio list (ratio >= skip_threshold becomes a skip, 1.0)."""
    r = [0.0] * num_scales
    for i, v in enumerate(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)):
        r[first + i] = 1.0 if v >= skip_threshold else float(v)
    return r


def _draw_block(d: np.ndarray, n: int, first: int, skip_threshold: float, guided: np.ndarray,
                allow_drop: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ratios (m, n), drop flags (m, n)) of m tries from their uniform draws ``d`` (m, k + 1 [+ k]):
    the k ratios, then the power, then (with ``allow_drop``) one draw per controllable scale for its flag."""
    k = n - first
    lo, hi = np.log(0.2), np.log(5.0)
    power = np.exp(lo + (hi - lo) * d[:, k])          # = rng.uniform(lo, hi), drawn after the k ratios
    v = np.clip(d[:, :k] ** power[:, None], 0.0, 1.0)
    ratios = np.zeros((len(d), n))
    ratios[:, first:] = np.where(v >= skip_threshold, 1.0, v)
    drops = np.zeros((len(d), n), dtype=bool)
    if allow_drop:
        drops[:, first:] = (d[:, k + 1:] < DROP_PROBABILITY) & guided[first:] & (ratios[:, first:] < 1.0)
    return ratios, drops


def cheapest_schedule(num_scales: int, first: int) -> StaticSchedule:
    """Every controllable scale skipped: the least compute any schedule on these scales can spend."""
    return StaticSchedule(tuple([0.0] * first + [1.0] * (num_scales - first)))


def random_schedule_at(generator, target_fraction: float, first: int, rng: np.random.Generator,
                       skip_threshold: float = 0.9, tolerance: float = TOLERANCE, tries: int = 20000,
                       block: int = 1024, allow_drop: bool = False) -> StaticSchedule:
    """A random schedule on scales ``first..n-1`` whose transformer FLOPs fraction lies in
    ``[target - tolerance, target]``: never above the target. Each try draws u ~ U(0, 1)^k and raises
    it to a random power in [0.2, 5] (one per try): power 1 is uniform, small powers push ratios
    towards skipping and large ones towards keeping, so low and high targets are reached in a few
    tries rather than thousands. With ``allow_drop`` (the agent may drop the CFG branch) each try also
    draws, per controllable scale, whether a guided scale that runs drops it (probability 1/2). The
    first try in the window is returned; else the closest try at or below the target; else (none of
    ``tries`` at or below it) every controllable scale skipped, the cheapest schedule. A target below
    that cheapest schedule's FLOPs is an error.

    Tries are drawn ``block`` at a time from the same stream, in the same order, as one at a time
    (per try: the k ratios, the power, then with ``allow_drop`` k flag draws), and the stream is left
    right after the accepted try: the same draws as a one-at-a-time loop, without its Python cost per
    try (a target near the all-skip floor, 0.206 here, needs ~20,000 tries per image)."""
    n = generator.num_scales
    k = n - first
    full = float(generator.flops_full())
    prefill = full - float(sum(generator.schedule_flops([0.0] * n)))  # the fraction is (prefill + used) / full,
    guided = np.asarray([bool(generator.uses_unconditional(j)) for j in range(n)])  # as flops_fraction computes it
    floor = cheapest_schedule(n, first)
    floor_fraction = (prefill + float(sum(generator.schedule_flops(list(floor.ratios))))) / full
    if target_fraction < floor_fraction:
        raise ValueError(f"FLOPs target {target_fraction:.4f} is below {floor_fraction:.4f}, the cheapest schedule on "
                         f"scales {first}..{n - 1} (every one skipped): no schedule can meet it")
    many = getattr(generator, "schedule_flops_many", None)  # all of a block's FLOPs in one call, where offered
    width = k + 1 + (k if allow_drop else 0)

    def fractions(ratios_mn: np.ndarray, unc_mn: np.ndarray, stop_in_window: bool) -> np.ndarray:
        if many is not None:
            return (prefill + np.asarray(many(ratios_mn, unc_mn), dtype=np.float64)) / full
        out = np.full(len(ratios_mn), np.inf)  # one schedule at a time, stopping at the first in the window
        for j in range(len(ratios_mn)):
            out[j] = (prefill + float(sum(generator.schedule_flops([float(x) for x in ratios_mn[j]],
                                                                   [bool(u) for u in unc_mn[j]])))) / full
            if stop_in_window and target_fraction - tolerance <= out[j] <= target_fraction:
                break
        return out

    best, best_gap, done = None, float("inf"), 0
    while done < tries:
        m = min(block, tries - done)
        state = rng.bit_generator.state
        ratios_mn, drops_mn = _draw_block(rng.random((m, width)), n, first, skip_threshold, guided, allow_drop)
        frac = fractions(ratios_mn, guided[None, :] & ~drops_mn, stop_in_window=True)
        below = frac <= target_fraction
        hit = np.flatnonzero(below & (frac >= target_fraction - tolerance))
        if hit.size:
            j = int(hit[0])
            rng.bit_generator.state = state   # leave the stream right after the accepted try
            rng.random((j + 1, width))
            return StaticSchedule(tuple(float(x) for x in ratios_mn[j]), tuple(bool(x) for x in drops_mn[j]))
        gaps = np.where(below, target_fraction - frac, np.inf)
        j = int(np.argmin(gaps))
        if gaps[j] < best_gap:
            best = StaticSchedule(tuple(float(x) for x in ratios_mn[j]), tuple(bool(x) for x in drops_mn[j]))
            best_gap = float(gaps[j])
        done += m
    return best if best is not None else floor  # reported with its own FLOPs, never hidden
