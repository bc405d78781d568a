"""Folder mode: score existing image sets (Original / FAST / RL ...) matched by file name.

Reads flat folders (prompts from ``meta_data.json`` / ``metadata.json`` = ``{image_id: {"prompt": ...}}``,
else from the file name: ``xxx_yyy.jpg`` -> "xxx yyy") and the ``gen_images_<name>/`` layout that
generate.py writes (prompt from each folder's config.json). Nothing is dropped silently: missing,
extra, unreadable and size-mismatched images are listed and counted in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
META_FILES = ("meta_data.json", "metadata.json")


@dataclass
class ImageSet:
    root: Path
    images: dict[str, Path]  # image id -> file
    prompts: dict[str, str]  # image id -> prompt (where known from metadata)
    notes: list[str] = field(default_factory=list)


def _prompt_from_name(image_id: str) -> str:
    stem = Path(image_id.split("/")[0] if "/" in image_id else image_id).stem
    return stem.replace("_", " ").strip()


def _read_meta(root: Path) -> tuple[dict[str, str], list[str]]:
    for name in META_FILES:
        f = root / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                return {}, [f"{f} is not valid JSON ({e}); prompts taken from file names"]
            out = {}
            for k, v in data.items() if isinstance(data, dict) else []:
                p = v.get("prompt") if isinstance(v, dict) else v if isinstance(v, str) else None
                if isinstance(p, str):
                    out[str(k)] = p
            return out, []
    return {}, []


def collect(root: str | Path) -> ImageSet:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    gen_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("gen_images_"))
    images: dict[str, Path] = {}
    prompts: dict[str, str] = {}
    notes: list[str] = []
    if gen_dirs:  # generate.py layout
        for d in gen_dirs:
            name = d.name[len("gen_images_"):]
            prompt = None
            cfg = d / "config.json"
            if cfg.is_file():
                try:
                    prompt = json.loads(cfg.read_text()).get("prompt")
                except json.JSONDecodeError:
                    notes.append(f"{cfg} is not valid JSON; prompt taken from the folder name")
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    iid = f"{name}/{f.name}"
                    images[iid] = f
                    prompts[iid] = prompt or name.replace("_", " ")
    else:
        meta, notes = _read_meta(root)
        for f in sorted(root.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                images[f.name] = f
                p = meta.get(f.name, meta.get(f.stem))
                if p is not None:
                    prompts[f.name] = p
    if not images:
        notes.append(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return ImageSet(root, images, prompts, notes)


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; raises ValueError for unreadable files."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: unreadable image ({type(e).__name__})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def evaluate_folders(orig: str | Path, methods: dict[str, str | Path], suite) -> dict:
    """Per-method metrics vs ``orig`` (matched by image id) plus a full account of what was not scored."""
    from rewards.stats import mean_ci

    ref_set = collect(orig)
    report: dict = {"orig": str(ref_set.root), "num_orig": len(ref_set.images), "notes": list(ref_set.notes),
                    "unavailable": suite.unavailable(), "methods": {}}
    ref_cache: dict[str, torch.Tensor | None] = {}
    ref_unreadable: list[str] = []

    def ref_image(iid: str):
        if iid not in ref_cache:
            try:
                ref_cache[iid] = load_image(ref_set.images[iid])
            except ValueError:
                ref_cache[iid] = None
                ref_unreadable.append(iid)
        return ref_cache[iid]

    sets = {"orig": ref_set, **{name: collect(d) for name, d in methods.items()}}
    for name, s in sets.items():
        rows, unreadable, mismatched = [], [], []
        missing = sorted(set(ref_set.images) - set(s.images))
        extra = sorted(set(s.images) - set(ref_set.images))
        for iid in sorted(set(ref_set.images) & set(s.images)):
            ref = ref_image(iid)
            if ref is None:
                continue  # listed once under the reference's unreadable images
            try:
                img = ref if name == "orig" else load_image(s.images[iid])
            except ValueError:
                unreadable.append(iid)
                continue
            if img.shape != ref.shape:
                mismatched.append(f"{iid}: {tuple(img.shape[1:])} vs orig {tuple(ref.shape[1:])}")
                continue
            prompt = s.prompts.get(iid) or ref_set.prompts.get(iid) or _prompt_from_name(iid)
            scores = suite.score(img[None], [prompt], None if name == "orig" else ref[None])[0]
            rows.append({"image": iid, "prompt": prompt, **scores})
        agg = {}
        for metric in ("psnr", "ssim", "lpips", "clip_score", "image_reward", "hpsv2"):
            vals = [r[metric] for r in rows if metric in r]
            if vals:
                m, h, n = mean_ci(vals)
                agg[metric] = {"mean": m, "ci95": h, "n": n}
        report["methods"][name] = {"folder": str(s.root), "num_images": len(s.images), "num_scored": len(rows),
                                   "missing": missing, "extra": extra, "unreadable": unreadable,
                                   "size_mismatch": mismatched, "notes": s.notes, "metrics": agg, "per_image": rows}
    report["orig_unreadable"] = sorted(ref_unreadable)
    return report


def folder_report_markdown(report: dict) -> str:
    def fmt(agg: dict, metric: str) -> str:
        if metric not in agg:
            return "n/a"
        a = agg[metric]
        ci = "" if a["ci95"] != a["ci95"] else f" ± {a['ci95']:.3f}"
        return f"{a['mean']:.3f}{ci}"

    lines = [f"Reference (--orig): {report['orig']} ({report['num_orig']} images)", "",
             "| set | scored / images | PSNR (dB) | SSIM | LPIPS | CLIP score | ImageReward | HPSv2 | missing | extra | unreadable | size mismatch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        a = m["metrics"]
        lines.append(f"| {name} | {m['num_scored']} / {m['num_images']} | {fmt(a, 'psnr')} | {fmt(a, 'ssim')} | "
                     f"{fmt(a, 'lpips')} | {fmt(a, 'clip_score')} | {fmt(a, 'image_reward')} | {fmt(a, 'hpsv2')} | {len(m['missing'])} | "
                     f"{len(m['extra'])} | {len(m['unreadable'])} | {len(m['size_mismatch'])} |")
    lines.append("")
    lines.append("Mean ± 95% CI over scored images; PSNR/SSIM/LPIPS vs --orig (the orig row has CLIP score only).")
    for metric, why in report["unavailable"].items():
        lines.append(f"- {metric}: {why}")
    problems = [(n, k, m[k]) for n, m in report["methods"].items() for k in ("missing", "extra", "unreadable", "size_mismatch") if m[k]]
    if report.get("orig_unreadable"):
        problems.append(("orig", "unreadable", report["orig_unreadable"]))
    for name, kind, items in problems:
        shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
        lines.append(f"- {name} {kind}: {shown}")
    for n, m in report["methods"].items():
        for note in m["notes"]:
            lines.append(f"- {n}: {note}")
    return "\n".join(lines)
