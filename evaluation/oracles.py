"""Oracles over a set of candidate schedules: which schedule each test item would get if one could choose
with (some) knowledge of the test images. They bound what a controller choosing among the same
candidates can reach; none of them is a method.

Every oracle reads ``quality[s]``: the QUALITY (or any higher-is-better score) of candidate ``s`` on
every test item, items being (prompt, seed) pairs in a fixed order, and returns the schedule it gives
each item. Three kinds, from the most to the least reachable:

- ``cross_validated_oracle`` (leave one seed out): for item (p, k), the candidate best on prompt p's
  *other* seeds. Its choice never sees the image it is scored on, so a per-prompt controller that knew
  each prompt's seed-averaged quality perfectly could reach it: it bounds per-prompt choice.
- ``in_sample_oracle`` (the scoreboard's original oracle): per prompt, the candidate best on that
  prompt's own test images, scored on the same images. The maximum of noisy estimates: part of its
  headroom is seed noise that no method can reach.
- ``per_image_oracle``: per item, the candidate best on that very image. The ceiling of choosing per
  image (from what the image's own early scales show); again partly noise.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

Item = tuple[str, int]


def _prompt_index(items: Sequence[Item]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, (p, _) in enumerate(items):
        out.setdefault(p, []).append(i)
    return out


def _matrix(quality: dict[Hashable, np.ndarray], candidates: Sequence[Hashable], n_items: int) -> np.ndarray:
    if not candidates:
        raise ValueError("an oracle needs at least one candidate schedule")
    missing = [c for c in candidates if c not in quality]
    if missing:
        raise ValueError(f"{len(missing)} candidate(s) have no quality values, e.g. {missing[0]!r}")
    q = np.stack([np.asarray(quality[c], dtype=np.float64) for c in candidates])
    if q.shape != (len(candidates), n_items):
        raise ValueError(f"quality arrays must hold one value per item ({n_items}), got shape {q.shape[1:]}")
    return q


def in_sample_oracle(quality: dict[Hashable, np.ndarray], items: Sequence[Item],
                     candidates: Sequence[Hashable]) -> dict[Item, Hashable]:
    """Per prompt, the candidate with the highest mean over that prompt's own items (first on ties)."""
    q = _matrix(quality, candidates, len(items))
    out: dict[Item, Hashable] = {}
    for idx in _prompt_index(items).values():
        best = candidates[int(np.argmax(q[:, idx].mean(axis=1)))]
        out.update({items[i]: best for i in idx})
    return out


def cross_validated_oracle(quality: dict[Hashable, np.ndarray], items: Sequence[Item],
                           candidates: Sequence[Hashable]) -> dict[Item, Hashable]:
    """Per item (p, k): the candidate with the highest mean over prompt p's other items (first on ties).
    Needs at least two seeds per prompt."""
    q = _matrix(quality, candidates, len(items))
    out: dict[Item, Hashable] = {}
    for p, idx in _prompt_index(items).items():
        if len(idx) < 2:
            raise ValueError(f"prompt {p!r} has one seed: a cross-validated oracle needs >= 2 seeds per prompt")
        total = q[:, idx].sum(axis=1)
        for i in idx:
            out[items[i]] = candidates[int(np.argmax((total - q[:, i]) / (len(idx) - 1)))]
    return out


def per_image_oracle(quality: dict[Hashable, np.ndarray], items: Sequence[Item],
                     candidates: Sequence[Hashable]) -> dict[Item, Hashable]:
    """Per item, the candidate with the highest value on that item itself (first on ties)."""
    q = _matrix(quality, candidates, len(items))
    best = np.argmax(q, axis=0)
    return {item: candidates[int(b)] for item, b in zip(items, best)}


def oracle_value(quality: dict[Hashable, np.ndarray], items: Sequence[Item], choice: dict[Item, Hashable]) -> np.ndarray:
    """Per item, the value of the schedule the oracle chose for it (the items' order)."""
    return np.asarray([float(quality[choice[it]][i]) for i, it in enumerate(items)])


ORACLES = {"oracle": in_sample_oracle, "oracle_cv": cross_validated_oracle, "oracle_image": per_image_oracle}
