"""Reading GenEval's results (``evaluate_agent.py --geneval NAME=RESULTS.jsonl[@IMAGES_DIR]``): the lines
of a results file written by GenEval's ``evaluation/evaluate_images.py`` (format: ``evaluation.geneval``),
the per-image cost (FLOPs, latency) from the ``config.json`` generate.py wrote beside the images, and
per-image preference scores (HPSv2, ImageReward) of those images. Errors are GenEvalError naming the
file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from evaluation.geneval import GenEvalError, json_object_line


@dataclass(frozen=True)
class GenEvalImage:
    """One line of a GenEval results file."""

    line: int
    filename: str
    folder: str  # the prompt folder's name (the image's grandparent)
    sample: int  # k of samples/<k>.png
    tag: str
    prompt: str
    correct: bool
    key: str  # the prompt's metadata, canonical JSON: identifies the prompt across methods


def _canonical(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


def read_geneval_results(path: str | Path) -> list[GenEvalImage]:
    """The lines of a results file written by GenEval's ``evaluate_images.py``; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise GenEvalError(f"GenEval results file {path} does not exist")
    rows: list[GenEvalImage] = []
    seen: dict[tuple[str, int], int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        rec = json_object_line(line, where)
        missing = [k for k in ("filename", "tag", "correct", "metadata") if k not in rec]
        if missing:
            raise GenEvalError(f"{where}: missing {', '.join(missing)} (a line of GenEval's evaluate_images.py output "
                               f"has filename, tag, prompt, correct, reason, metadata, details)")
        if not isinstance(rec["correct"], bool):
            raise GenEvalError(f"{where}: 'correct' must be true or false, got {rec['correct']!r}")
        meta = rec["metadata"]
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError as e:
                raise GenEvalError(f"{where}: 'metadata' is not JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) or meta.get("tag") != rec["tag"]:
            raise GenEvalError(f"{where}: 'metadata' must be the prompt's metadata object with prompt and tag "
                               f"{rec['tag']!r}, got {str(rec['metadata'])[:120]!r}")
        fname = str(rec["filename"])
        parts = re.split(r"[\\/]", fname)
        if len(parts) < 3 or not re.fullmatch(r"\d+\.png", parts[-1]):
            raise GenEvalError(f"{where}: filename {fname!r} is not GenEval's <folder>/samples/<k>.png")
        key, sample = _canonical(meta), int(parts[-1][:-4])
        if (key, sample) in seen:
            raise GenEvalError(f"{where}: image {sample} of prompt {meta['prompt']!r} also on line {seen[(key, sample)]}")
        seen[(key, sample)] = n
        rows.append(GenEvalImage(n, fname, parts[-3], sample, rec["tag"], meta["prompt"], rec["correct"], key))
    if not rows:
        raise GenEvalError(f"GenEval results file {path} has no results")
    return rows


@dataclass
class GenEvalMethod:
    """One method's results, with its per-image cost from the config.json beside its images (where found)."""

    name: str
    results: Path
    images_dir: Path | None
    images: list[GenEvalImage]
    image_paths: dict[tuple[str, int], Path] = field(default_factory=dict)
    costs: dict[tuple[str, int], dict] = field(default_factory=dict)  # flops_fraction, flops, latency_ms
    schedule: str | None = None
    fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_method_spec(spec: str) -> tuple[str, Path, Path | None]:
    """``NAME=results.jsonl`` or ``NAME=results.jsonl@IMAGES_DIR`` -> (name, results, images dir)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest:
        raise GenEvalError(f"--geneval must be NAME=RESULTS.jsonl[@IMAGES_DIR], got {spec!r}")
    if Path(rest).is_file() or "@" not in rest:
        return name.strip(), Path(rest), None
    results, _, images = rest.rpartition("@")
    if not images:
        raise GenEvalError(f"--geneval {spec!r}: nothing after '@' (the images folder GenEval was run on)")
    if not Path(images).is_dir():
        raise GenEvalError(f"--geneval {spec!r}: images folder {images} does not exist")
    return name.strip(), Path(results), Path(images)


def _prompt_folder(method: GenEvalMethod, img: GenEvalImage) -> Path | None:
    if method.images_dir is not None:
        return method.images_dir / img.folder
    rel = Path(img.filename).parent.parent
    for cand in (rel, method.results.parent / rel):
        if cand.is_dir():
            return cand
    return None


def load_method(spec: str) -> GenEvalMethod:
    """Read one ``--geneval`` spec: results, image paths and costs (config.json written by generate.py)."""
    name, results, images_dir = parse_method_spec(spec)
    method = GenEvalMethod(name, results, images_dir, read_geneval_results(results))
    configs: dict[Path, dict | None] = {}
    not_found = []
    for img in method.images:
        folder = _prompt_folder(method, img)
        if folder is None:
            not_found.append(img)
            continue
        method.image_paths[(img.key, img.sample)] = folder / "samples" / Path(img.filename).name
        if folder not in configs:
            cfg_path = folder / "config.json"
            try:
                configs[folder] = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
            except json.JSONDecodeError as e:
                raise GenEvalError(f"{cfg_path} is not valid JSON ({e})") from None
            cfg = configs[folder]
            if cfg is not None and cfg.get("prompt") != img.prompt:
                raise GenEvalError(f"{results}:{img.line}: prompt {img.prompt!r}, but {cfg_path} is for {cfg.get('prompt')!r} "
                                   f"(wrong images folder for method {name!r}?)")
        cfg = configs[folder]
        if cfg is None:
            not_found.append(img)
            continue
        rec = next((r for r in cfg.get("images", []) if Path(r.get("file", "")).name == Path(img.filename).name), None)
        if rec is None:
            raise GenEvalError(f"{folder}/config.json has no record of {Path(img.filename).name} ({results}:{img.line})")
        method.costs[(img.key, img.sample)] = {"flops_fraction": float(rec["flops_fraction"]),
                                               "flops": float(rec["flops_total"]), "latency_ms": 1000 * float(rec["latency_s"])}
        method.schedule = method.schedule or cfg.get("schedule")
        method.fingerprint = method.fingerprint or cfg.get("generator_fingerprint")
    if not_found and (images_dir is not None or method.costs):
        first = not_found[0]
        raise GenEvalError(f"method {name!r}: no config.json for {len(not_found)} of {len(method.images)} images, "
                           f"e.g. {first.filename} ({results}:{first.line}); generate them with "
                           f"`generate.py --prompts geneval:...` or point NAME=RESULTS@IMAGES_DIR at their folder")
    if not_found:
        method.notes.append(f"{name}: no config.json found next to the images (e.g. {not_found[0].filename}, "
                            f"relative to . and to {results.parent}): FLOPs and latency n/a; "
                            f"pass {name}=RESULTS.jsonl@IMAGES_DIR")
    return method


def score_images(methods: list[GenEvalMethod], scorers: dict[str, Callable[[torch.Tensor, list[str]], list[float]]],
                 batch: int = 16) -> dict[str, dict[str, dict[tuple[str, int], float]]]:
    """Per-image human-preference scores (e.g. HPSv2, ImageReward) of every method's images vs their prompts."""
    from evaluation.folders import load_image

    out: dict[str, dict[str, dict[tuple[str, int], float]]] = {}
    for m in methods:
        out[m.name] = {name: {} for name in scorers}
        if not scorers:
            continue
        todo = [img for img in m.images]
        missing = [img for img in todo if (img.key, img.sample) not in m.image_paths]
        if missing:
            raise GenEvalError(f"method {m.name!r}: cannot find the image {missing[0].filename} to score "
                               f"({m.results}:{missing[0].line}); pass {m.name}=RESULTS.jsonl@IMAGES_DIR")
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            try:
                x = torch.stack([load_image(m.image_paths[(img.key, img.sample)]) for img in chunk])
            except (ValueError, RuntimeError) as e:
                raise GenEvalError(f"method {m.name!r}: {e}") from None
            prompts = [img.prompt for img in chunk]
            for name, fn in scorers.items():
                for img, v in zip(chunk, fn(x, prompts)):
                    out[m.name][name][(img.key, img.sample)] = float(v)
    return out
