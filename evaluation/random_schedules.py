"""Random pruning schedules at a FLOPs target: the "random" row of the comparison (what an agent's
FLOPs buy without any choice), drawn reproducibly from a seeded ``np.random.Generator``."""

from __future__ import annotations

import numpy as np


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

