"""How well the judge reads images whose scene is known: held-out renders and their tokenizer reconstructions.

A generated image is a token map decoded by the VQ tokenizer, never a render, so the judge is measured
on both: renders it never saw, and the *full* multi-scale reconstructions of those renders (the best
image the generator could emit for that scene). Labels are the render's scene. Two diagnostics sit
beside the targets: accuracy by object size (a small object is about one 8x8-pixel token), and
reconstructions with the last scale dropped (what a skipped last scale leaves of a perfect code map;
the judge is never trained on such images).

Targets (issue "Instruments we can trust"): on reconstructions attribute accuracy >= 0.97, every single
attribute >= 0.95 and scene accuracy >= 0.85; on renders attribute >= 0.98 and scene >= 0.90.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from domain import SIZES, Scene, parse_caption
from domain import caption as caption_of
from judge.checks import attribute_checks, score_scene
from judge.heads import ATTRIBUTES, OBJECT_HEADS
from judge.model import DomainJudge

#: the attributes the targets name: ATTRIBUTES with "background" split into its two checks
DETAILED_ATTRIBUTES = ("position", "shape", "colour", "texture", "size", "background_kind", "background_colour")
TARGETS = {"reconstruction": {"attribute_accuracy": 0.97, "each_attribute": 0.95, "scene_accuracy": 0.85},
           "render": {"attribute_accuracy": 0.98, "scene_accuracy": 0.90}}


def detailed_accuracy(seen: list[Scene], captions: list[str]) -> dict:
    """Mean attribute and scene accuracy, pooled accuracy per DETAILED_ATTRIBUTES, per object size the
    pooled accuracy of that size's objects' five checks (position, shape, colour, texture, size) and of
    each of them, and the scene accuracy of the images with no small object (a small object is about one
    8x8-pixel token: where the reconstruction's misses concentrate)."""
    if len(seen) != len(captions):
        raise ValueError(f"{len(seen)} scenes but {len(captions)} captions: need one caption per image")
    hits = {a: [] for a in DETAILED_ATTRIBUTES}
    by_size: dict[str, dict[str, list[bool]]] = {s: {a: [] for a in ("position", *OBJECT_HEADS)} for s in SIZES}
    attr, scene, has_small = [], [], []
    for s, c in zip(seen, captions):
        want = parse_caption(c)
        checks = attribute_checks(s, want)
        for a in ATTRIBUTES[:-1]:
            hits[a] += checks[a]
        kind_ok, colour_ok = checks["background"]
        hits["background_kind"].append(kind_ok)
        hits["background_colour"].append(colour_ok)
        for i, o in enumerate(want.objects):
            for a, v in by_size[o.size].items():
                v.append(checks[a][i])
        score = score_scene(s, want)
        attr.append(score.attribute_accuracy)
        scene.append(score.scene_accuracy)
        has_small.append(any(o.size == "small" for o in want.objects))
    no_small = [sc for sc, small in zip(scene, has_small) if not small]
    sizes = {k: v for k, v in by_size.items() if v["position"]}
    return {"n_images": len(seen), "attribute_accuracy": float(np.mean(attr)), "scene_accuracy": float(np.mean(scene)),
            "per_attribute": {a: float(np.mean(v)) for a, v in hits.items()},
            "by_object_size": {k: float(np.mean([x for col in v.values() for x in col])) for k, v in sizes.items()},
            "by_object_size_and_attribute": {k: {a: float(np.mean(col)) for a, col in v.items()} for k, v in sizes.items()},
            "scene_accuracy_without_small_objects": float(np.mean(no_small)) if no_small else None,
            "n_images_without_small_objects": len(no_small)}


def reconstruct(tokenizer, images_uint8_NHW3: np.ndarray, drop_last_scales: int = 0, batch: int = 100) -> np.ndarray:
    """Multi-scale VQ reconstructions (uint8) of uint8 images: encode, quantise every scale, decode; with
    ``drop_last_scales`` > 0 the last scales' codes contribute nothing (as when they are skipped)."""
    from generator.images import to_uint8

    x = torch.from_numpy(np.ascontiguousarray(images_uint8_NHW3)).permute(0, 3, 1, 2).float() / 255
    out = []
    with torch.no_grad():
        for chunk in x.split(batch):
            idx = tokenizer.encode_indices(chunk)
            if drop_last_scales:
                idx = idx[:-drop_last_scales] + [None] * drop_last_scales
            out.append(to_uint8(tokenizer.decode(tokenizer.indices_to_f_hat(idx))))
    return np.concatenate(out)


def embedded_tokenizer():
    """The shipped embedded model's VQ tokenizer, reached through the backend registry (the judge sits
    below the backends and never imports one)."""
    from generator.backends import load_backend

    return load_backend("tiny")().tokenizer


def targets_met(block: dict) -> dict[str, bool]:
    """Which of TARGETS a ``judge_on_reconstructions`` block meets."""
    rec, ren = block["reconstructions"], block["renders"]
    t_rec, t_ren = TARGETS["reconstruction"], TARGETS["render"]
    return {"reconstruction_attribute": rec["attribute_accuracy"] >= t_rec["attribute_accuracy"],
            "reconstruction_each_attribute": min(rec["per_attribute"].values()) >= t_rec["each_attribute"],
            "reconstruction_scene": rec["scene_accuracy"] >= t_rec["scene_accuracy"],
            "render_attribute": ren["attribute_accuracy"] >= t_ren["attribute_accuracy"],
            "render_scene": ren["scene_accuracy"] >= t_ren["scene_accuracy"]}


def judge_on_reconstructions(judge: DomainJudge, num_renders: int, seed: int, tokenizer=None,
                             failures_png: Path | None = None, erasure: int = 0,
                             small_failures_png: Path | None = None) -> dict:
    """The judge on ``num_renders`` renders drawn with ``seed`` (``domain.sample_batch``), on their full
    reconstructions and, as a diagnostic, on reconstructions without the last scale. Returns the
    ``reconstruction`` block of ``python -m judge --json`` (accuracies, targets, which are met);
    ``failures_png`` also writes a grid of reconstructions the judge misreads, beside their renders, and
    ``small_failures_png`` one of those where it misreads a small object it reads right on the render;
    ``erasure`` > 0: on the first ``erasure`` renders, which checks the reconstructions still hold,
    measured without the judge (``judge.erasure``: ~45 counterfactual reconstructions per image), and the
    judge's accuracy on those and on the others."""
    from domain import render, sample_scenes

    if num_renders < 1:
        raise ValueError(f"num_renders must be >= 1, got {num_renders}")
    tokenizer = embedded_tokenizer() if tokenizer is None else tokenizer
    scenes = sample_scenes(seed, num_renders)
    renders = np.stack([render(sc, s) for sc, s in scenes])   # = sample_batch(seed, num_renders)[0]
    captions = [caption_of(sc) for sc, _ in scenes]
    recon = reconstruct(tokenizer, renders)
    seen_recon, seen_render = judge.predict(recon), judge.predict(renders)
    block = {"seed": seed, "renders": detailed_accuracy(seen_render, captions),
             "reconstructions": detailed_accuracy(seen_recon, captions),
             "reconstructions_last_scale_dropped": detailed_accuracy(judge.predict(reconstruct(tokenizer, renders, 1)),
                                                                     captions),
             "targets": TARGETS}
    block["targets_met"] = targets_met(block)
    # the issue excuses misses where a reconstruction no longer holds the attribute, naming small objects (one
    # 8x8 token): the same targets on the images that have none, beside the failure grid of the small ones
    no_small = [i for i, c in enumerate(captions) if all(o.size != "small" for o in parse_caption(c).objects)]
    if no_small:
        sub = detailed_accuracy([seen_recon[i] for i in no_small], [captions[i] for i in no_small])
        block["reconstructions_without_small_objects"] = sub
        block["targets_met_without_small_objects"] = {
            k: v for k, v in targets_met({"reconstructions": sub, "renders": block["renders"]}).items()
            if k.startswith("reconstruction")}
    if erasure:
        from judge.erasure import READABLE_THRESHOLD, readable_accuracy, retentions

        n = min(int(erasure), num_renders)
        kept = retentions(lambda x: reconstruct(tokenizer, x), scenes[:n], renders[:n], recon[:n])
        flat = np.asarray([r for k in kept for v in k.values() for r in v if np.isfinite(r)])
        block["erasure"] = {"n_images": n,
                            "retention_percentiles": {str(q): float(np.percentile(flat, q)) for q in (1, 5, 25, 50)},
                            "by_threshold": [readable_accuracy(seen_recon[:n], scenes[:n], kept, t)
                                             for t in (READABLE_THRESHOLD, 0.5)]}
    if failures_png is not None:
        wrong = [i for i, (s, c) in enumerate(zip(seen_recon, captions)) if score_scene(s, parse_caption(c)).scene_accuracy < 1]
        block["failures_png"] = str(failures_png)
        write_failure_grid(failures_png, renders[wrong], recon[wrong], [captions[i] for i in wrong],
                           [seen_recon[i] for i in wrong])
    if small_failures_png is not None:
        wrong = small_object_misreads(seen_recon, seen_render, captions)
        block["small_failures_png"] = str(small_failures_png)
        block["small_object_misreads"] = len(wrong)
        write_failure_grid(small_failures_png, renders[wrong], recon[wrong], [captions[i] for i in wrong],
                           [seen_recon[i] for i in wrong])
    return block


def small_object_misreads(seen_recon: list[Scene], seen_render: list[Scene], captions: list[str]) -> list[int]:
    """Indices of the images where some small object has a check the judge gets wrong on the reconstruction and
    right on the render: the reconstruction, not the judge's reading of such objects in general, changed."""
    out = []
    for i, c in enumerate(captions):
        want = parse_caption(c)
        on_recon, on_render = attribute_checks(seen_recon[i], want), attribute_checks(seen_render[i], want)
        if any(o.size == "small" and any(on_render[a][k] and not on_recon[a][k] for a in ("position", *OBJECT_HEADS))
               for k, o in enumerate(want.objects)):
            out.append(i)
    return out


def write_failure_grid(path: Path, renders: np.ndarray, recons: np.ndarray, captions: list[str],
                       seen: list[Scene], max_rows: int = 24, scale: int = 3) -> None:
    """A human-checkable PNG: per misread reconstruction, the render, the reconstruction (both enlarged
    ``scale`` x) and the caption against what the judge read, so one can tell a judge error from a
    reconstruction that no longer shows the attribute."""
    import io
    import textwrap

    from PIL import Image, ImageDraw

    from domain import caption
    from generator.weights_io import atomic_write_bytes

    n = min(len(captions), max_rows)
    size = renders.shape[1] * scale if n else 64
    row_h, text_w = size + 6, 520
    sheet = Image.new("RGB", (2 * size + text_w + 12, max(1, n) * row_h + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r in range(n):
        y = 3 + r * row_h
        for k, im in enumerate((renders[r], recons[r])):
            sheet.paste(Image.fromarray(im).resize((size, size), Image.NEAREST), (3 + k * (size + 3), y))
        lines = [("black", t) for t in textwrap.wrap("prompt: " + captions[r], 84)]
        reading = (caption(seen[r]) if seen[r].objects else  # the grammar has no caption for an empty scene
                   f"no object on a {seen[r].background} {seen[r].background_colour} background")
        lines += [("darkred", t) for t in textwrap.wrap("judge read the reconstruction as: " + reading, 84)]
        for k, (colour, text) in enumerate(lines[:size // 12]):
            draw.text((2 * size + 12, y + 2 + 12 * k), text, fill=colour)
    if n == 0:
        draw.text((4, 4), "no misread reconstruction", fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
