"""Which attributes a tokenizer reconstruction still holds, measured without the judge.

For an object attribute (shape, colour, texture, size) of a held-out render x, each alternative value v
gives a counterfactual render x_v: the same scene and render seed with only that attribute of that
object changed (positions, jitter and background noise are identical). The tokenizer keeps the
attribute to the extent that the reconstructions still differ where the renders differ:

    retention(v) = || R(x) - R(x_v) ||_2 / || x - x_v ||_2         (R = encode, quantise, decode)

and ``retention`` of the check is the minimum over the alternatives: how much of the difference to the
most confusable other value survives the tokenizer. A check whose retention is below ``threshold``
(default 0.25: three quarters of the difference erased) is **unreadable**: nothing that reads the
reconstruction can tell the prompt's value from that alternative much better than the pixels allow. The
judge's accuracy is then reported on the readable and the unreadable checks apart; the judge is only
ever *measured* here, never involved in deciding what is readable.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from domain import COLOURS, SHAPES, SIZES, TEXTURES, Scene, render
from judge.checks import attribute_checks, score_scene

ERASURE_ATTRIBUTES = ("shape", "colour", "texture", "size")
VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES, "size": tuple(SIZES)}
READABLE_THRESHOLD = 0.25


def counterfactuals(scene: Scene, j: int, attribute: str) -> list[Scene]:
    """``scene`` with object j's ``attribute`` set to each other value, in VALUES order."""
    o = scene.objects[j]
    out = []
    for v in VALUES[attribute]:
        if v != getattr(o, attribute):
            objs = list(scene.objects)
            objs[j] = replace(o, **{attribute: v})
            out.append(replace(scene, objects=tuple(objs)))
    return out


def retentions(reconstruct: Callable[[np.ndarray], np.ndarray], scenes: list[tuple[Scene, int]], renders: np.ndarray,
               recons: np.ndarray, batch: int = 500) -> list[dict[str, list[float]]]:
    """Per image, per ERASURE_ATTRIBUTES, one retention per object (the module docstring's minimum over
    the alternatives), objects in the scene's order. ``reconstruct``: uint8 (N, H, W, 3) renders -> their
    tokenizer reconstructions (``judge.accuracy.reconstruct`` with the tokenizer bound)."""
    jobs, alt = [], []
    for i, (scene, seed) in enumerate(scenes):
        for j in range(len(scene.objects)):
            for a in ERASURE_ATTRIBUTES:
                for sc in counterfactuals(scene, j, a):
                    jobs.append((i, j, a))
                    alt.append(render(sc, seed, renders.shape[1]))
    out = [{a: [np.inf] * len(s.objects) for a in ERASURE_ATTRIBUTES} for s, _ in scenes]
    for k in range(0, len(alt), batch):
        x_alt = np.stack(alt[k:k + batch])
        r_alt = reconstruct(x_alt)
        for m, (i, j, a) in enumerate(jobs[k:k + batch]):
            d_render = np.linalg.norm(renders[i].astype(np.float64) - x_alt[m].astype(np.float64))
            d_recon = np.linalg.norm(recons[i].astype(np.float64) - r_alt[m].astype(np.float64))
            ratio = d_recon / d_render if d_render > 0 else np.inf  # identical renders: nothing to erase
            out[i][a][j] = min(out[i][a][j], float(ratio))
    return out


def readable_accuracy(seen: list[Scene], scenes: list[tuple[Scene, int]], kept: list[dict[str, list[float]]],
                      threshold: float = READABLE_THRESHOLD) -> dict:
    """The judge's accuracy per ERASURE_ATTRIBUTES on readable checks (retention >= ``threshold``) and on
    unreadable ones, the share of checks and of misses that are unreadable, and the scene accuracy of
    images all of whose object checks are readable."""
    hits = {a: {"readable": [], "unreadable": []} for a in ERASURE_ATTRIBUTES}
    scene_ok = []
    for s, (want, _), k in zip(seen, scenes, kept):
        checks = attribute_checks(s, want)
        all_readable = True
        for a in ERASURE_ATTRIBUTES:
            for ok, r in zip(checks[a], k[a]):
                hits[a]["readable" if r >= threshold else "unreadable"].append(bool(ok))
                all_readable &= r >= threshold
        if all_readable:
            scene_ok.append(score_scene(s, want).scene_accuracy)
    per = {}
    for a, h in hits.items():
        n_r, n_u = len(h["readable"]), len(h["unreadable"])
        misses = n_r - sum(h["readable"]) + n_u - sum(h["unreadable"])
        per[a] = {"readable_accuracy": float(np.mean(h["readable"])) if n_r else float("nan"),
                  "unreadable_accuracy": float(np.mean(h["unreadable"])) if n_u else float("nan"),
                  "unreadable_share_of_checks": n_u / max(1, n_r + n_u),
                  "unreadable_share_of_misses": (n_u - sum(h["unreadable"])) / misses if misses else 0.0}
    return {"threshold": threshold, "per_attribute": per,
            "images_all_readable": len(scene_ok),
            "scene_accuracy_all_readable": float(np.mean(scene_ok)) if scene_ok else float("nan")}
