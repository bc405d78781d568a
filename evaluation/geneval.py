"""GenEval (djghosh13/geneval) as a first-class output and table: its prompt metadata, its image layout,
its results file, and the side-by-side table with FLOPs, latency, prompt-clustered CIs and paired tests.

Nothing of GenEval is copied here; the user points at their own checkout and runs its evaluator. The
formats, as GenEval defines them:

- ``evaluation_metadata.jsonl``: one JSON object a line, at least ``prompt`` (str) and ``tag`` (one of
  ``single_object two_object counting colors position color_attr``) plus the detector's ``include`` /
  ``exclude`` clauses. Line i (0-based) is prompt i.
- Image layout, read by GenEval's ``evaluation/evaluate_images.py OUT``: ``OUT/<i, 5 digits>/metadata.jsonl``
  (line i of the metadata file, one JSON object) and ``OUT/<i>/samples/<k, 4 digits>.png``. Its evaluator
  takes every all-digit folder and every ``<digits>.png`` in ``samples/`` and reads nothing else, so our
  ``config.json`` (ratios, FLOPs, latency) sits beside ``metadata.jsonl`` unnoticed. ``grid.png`` is
  optional there and not written.
- Results: one JSON object a line (pandas ``records``): ``filename`` (the image path as the evaluator
  joined it), ``tag``, ``prompt``, ``correct`` (bool), ``reason``, ``metadata`` (the prompt's metadata as a
  JSON string), ``details``. GenEval's score of a tag is the fraction of that tag's *images* judged correct,
  and its overall score the unweighted mean over the tags present (``summary_scores.py``).

Images of one prompt are not independent (same prompt, one detector verdict pattern), so every CI here is
a bootstrap over prompts (stratified by tag, as the tag sizes are fixed by design) and every paired test
a sign-flip randomisation test over prompts.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from generator.images import to_uint8
from generator.weights_io import atomic_write_bytes, atomic_write_json

GENEVAL_PREFIX = "geneval:"
#: GenEval's six tasks in its README's column order, with its column names.
GENEVAL_TAGS = {"single_object": "single object", "two_object": "two object", "counting": "counting",
                "colors": "colors", "position": "position", "color_attr": "color attribution"}
N_BOOTSTRAP = 2000
N_SIGNFLIP = 20000
EXACT_SIGNFLIP_MAX = 16  # up to this many prompts that differ, the sign-flip p-value is enumerated exactly


class GenEvalError(ValueError):
    """Bad GenEval input (metadata, output folder, results file, method spec): the message names it."""


# ---- prompts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenEvalPrompt:
    """Line ``index`` (0-based) of ``evaluation_metadata.jsonl``; ``line`` is its text as read."""

    index: int
    metadata: dict
    line: str

    @property
    def prompt(self) -> str:
        return self.metadata["prompt"]

    @property
    def tag(self) -> str:
        return self.metadata["tag"]

    @property
    def folder(self) -> str:
        return f"{self.index:05d}"


@dataclass(frozen=True)
class GenEvalPromptSet:
    path: Path
    prompts: list[GenEvalPrompt]  # every line of the file
    selected: list[GenEvalPrompt]  # the ones to generate (the first --num-prompts)


def read_geneval_metadata(path: str | Path) -> list[GenEvalPrompt]:
    """Every line of a GenEval ``evaluation_metadata.jsonl``; a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise GenEvalError(f"GenEval metadata file {path} does not exist (expected <geneval>/prompts/evaluation_metadata.jsonl)")
    out = []
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for i, line in enumerate(lines):
        where = f"{path}:{i + 1}"
        if not line.strip():
            raise GenEvalError(f"{where}: empty line (GenEval numbers its prompt folders by line, so blank lines are not allowed)")
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenEvalError(f"{where}: not a JSON object ({e})") from None
        if not isinstance(meta, dict):
            raise GenEvalError(f"{where}: expected a JSON object with 'prompt' and 'tag', got {type(meta).__name__}")
        for key in ("prompt", "tag"):
            if not isinstance(meta.get(key), str) or not meta[key].strip():
                raise GenEvalError(f"{where}: '{key}' must be a non-empty string, got {meta.get(key)!r}")
        out.append(GenEvalPrompt(i, meta, line.strip()))
    if not out:
        raise GenEvalError(f"{path} contains no prompts")
    return out


def geneval_prompt_set(spec: str | None, num_prompts: int | None, other_prompts_given: bool,
                       per_scale_outputs: bool) -> GenEvalPromptSet | None:
    """The prompt set of ``--prompts geneval:PATH`` (None for any other ``--prompts``)."""
    if spec is None or not spec.startswith(GENEVAL_PREFIX):
        return None
    if other_prompts_given:
        raise GenEvalError("give --prompt or --prompts, not both")
    if per_scale_outputs:
        raise GenEvalError("--save-intermediate / --dft are not written in GenEval's layout; generate those prompts "
                           "without geneval: to get per-scale outputs")
    if num_prompts is not None and num_prompts < 1:
        raise GenEvalError(f"--num-prompts must be >= 1, got {num_prompts}")
    prompts = read_geneval_metadata(spec[len(GENEVAL_PREFIX):])
    return GenEvalPromptSet(Path(spec[len(GENEVAL_PREFIX):]), prompts, prompts[:num_prompts])


# ---- writing GenEval's layout --------------------------------------------------------------------
def image_record(file: str, seed: int, state, latency_s: float, widths: list[int], flops_full: float) -> dict:
    """What generate.py records per image (ratios, per-scale tokens and FLOPs, latency in seconds)."""
    ratios = [r.ratio for r in state.reports]
    return {"file": file, "seed": seed, "ratios": ratios,
            "pruning_scales": ",".join(f"{w}:{r:g}" for w, r in zip(widths, ratios) if r > 0),
            "scales": [{"scale": r.scale_index, **r.to_dict()} for r in state.reports], "flops_total": state.flops_used,
            "flops_fraction": state.flops_used / flops_full, "latency_s": latency_s}


def _png_bytes(img_3HW: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(img_3HW)).save(buf, format="PNG")
    return buf.getvalue()


#: config.json keys that must agree between a run and the prompt folders already in its output folder
_RUN_KEYS = ("generator", "generator_fingerprint", "schedule", "cfg", "cfg_scales", "temperature", "top_k",
             "scale_widths", "seed", "images_per_prompt")


def _check_existing(out: Path, prompts: list[GenEvalPrompt], settings: dict) -> None:
    """Refuse an output folder that holds another metadata file's or another run's prompt folders."""
    by_index = {p.index: p for p in prompts}
    for d in sorted(out.iterdir()):
        if not (d.is_dir() and d.name.isdigit()):
            continue
        i = int(d.name)
        hint = "; write to a fresh --out (one folder per method)"
        if i not in by_index:
            raise GenEvalError(f"{d} is prompt {i}, but the metadata file has {len(prompts)} prompts{hint}")
        try:
            meta = json.loads((d / "metadata.jsonl").read_text(encoding="utf-8"))
            cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise GenEvalError(f"{d} is not a prompt folder this tool wrote ({type(e).__name__}: {e}){hint}") from None
        if meta != by_index[i].metadata:
            raise GenEvalError(f"{d}/metadata.jsonl is {meta.get('prompt')!r}, not line {i + 1} of the metadata file "
                               f"({by_index[i].prompt!r}){hint}")
        diff = {k: (cfg.get(k), settings.get(k)) for k in _RUN_KEYS if cfg.get(k) != settings.get(k)}
        if diff:
            shown = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
            raise GenEvalError(f"{d} was generated with other settings ({shown}){hint}")


def write_geneval_layout(prompt_set: GenEvalPromptSet, out: Path, run_info: dict,
                         generate_image: Callable[[str, int], tuple[torch.Tensor, object, float]],
                         images_per_prompt: int, seed: int, log: Callable[[str], None] = print) -> list[Path]:
    """Generate ``images_per_prompt`` images (seeds seed, seed+1, ...) per selected prompt into GenEval's layout.

    ``generate_image(prompt, seed) -> (image (3, H, W) in [0, 1], final state, latency in s)``; ``run_info``
    is generate.py's run description (generator, fingerprint, schedule, cfg, scale_widths, flops_full).
    Each prompt folder is built under ``OUT/.<i>.partial`` and renamed into place, so GenEval's evaluator
    (which takes every all-digit folder) never sees a half-written one. Returns the prompt folders.
    """
    settings = {**run_info, "seed": seed, "images_per_prompt": images_per_prompt}
    out.mkdir(parents=True, exist_ok=True)
    _check_existing(out, prompt_set.prompts, settings)
    for stale in out.glob(".*.partial"):  # left by an interrupted run of ours
        shutil.rmtree(stale)
    widths, flops_full = list(run_info["scale_widths"]), float(run_info["flops_full"])
    folders = []
    for p in prompt_set.selected:
        tmp = out / f".{p.folder}.partial"
        records = []
        for k in range(images_per_prompt):
            image, state, latency = generate_image(p.prompt, seed + k)
            file = f"samples/{k:04d}.png"
            atomic_write_bytes(tmp / file, _png_bytes(image))
            records.append(image_record(file, seed + k, state, latency, widths, flops_full))
            log(f"{p.folder} #{k}: {records[-1]['flops_fraction']:.3f} of full FLOPs, {latency * 1000:.1f} ms ({p.tag})")
        atomic_write_bytes(tmp / "metadata.jsonl", (p.line + "\n").encode("utf-8"))
        atomic_write_json(tmp / "config.json", {"name": p.folder, "prompt": p.prompt, "tag": p.tag,
                                                "geneval_metadata": p.metadata, "metadata_file": str(prompt_set.path),
                                                **settings, "images": records})
        final = out / p.folder
        if final.exists():  # same prompt and settings (checked above): replace it
            old = out / f".{p.folder}.old.partial"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        folders.append(final)
    log(f"wrote {len(folders)} prompt folder(s) x {images_per_prompt} image(s) in GenEval's layout under {out}/; "
        f"score them with GenEval's `python evaluation/evaluate_images.py {out} --outfile RESULTS.jsonl --model-path DETECTOR_DIR`")
    return folders


# ---- reading GenEval's results --------------------------------------------------------------------
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
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenEvalError(f"{where}: not a JSON object ({e})") from None
        if not isinstance(rec, dict):
            raise GenEvalError(f"{where}: expected a JSON object, got {type(rec).__name__}")
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


# ---- statistics -----------------------------------------------------------------------------------
def signflip_p(d_P: np.ndarray, w_P: np.ndarray, n_random: int = N_SIGNFLIP, seed: int = 0) -> float:
    """Two-sided p of ``sum(w * d)`` under independent sign flips of each prompt's difference ``d``.

    Exact (all 2^K sign patterns) when K <= EXACT_SIGNFLIP_MAX prompts differ, else ``n_random`` random
    patterns with the (1 + hits) / (1 + n) estimate. Prompts with d = 0 do not move the statistic.
    """
    nz = d_P != 0
    x = (d_P * w_P)[nz]
    if x.size == 0:
        return 1.0
    obs = abs(float(x.sum()))
    tol = 1e-12 * max(1.0, float(np.abs(x).sum()))
    if x.size <= EXACT_SIGNFLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=x.size)))
        return float(np.mean(np.abs(signs @ x) >= obs - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_random, 2000):  # in chunks: 553 GenEval prompts x 20,000 patterns would be 88 MB
        signs = rng.choice(np.array([1.0, -1.0]), size=(min(2000, n_random - start), x.size))
        hits += int(np.sum(np.abs(signs @ x) >= obs - tol))
    return float((1 + hits) / (1 + n_random))


def _interval(samples: np.ndarray, defined: bool = True) -> list[float] | None:
    """2.5th and 97.5th percentiles; None where resampling cannot vary (a tag with a single prompt)."""
    if not defined:
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass
class _Design:
    """Prompts (shared by every method) grouped by tag, and one set of stratified bootstrap resamples."""

    keys: list[str]
    tags: list[str]  # tags in table order
    groups: list[np.ndarray]  # prompt indices of each tag
    n_P: np.ndarray  # images per prompt
    resamples: list[np.ndarray]  # per tag: (B, P_t) prompt indices

    @property
    def all_resampled(self) -> np.ndarray:
        return np.concatenate(self.resamples, axis=1)


def _design(reference: GenEvalMethod, n_boot: int, seed: int) -> _Design:
    order: dict[str, str] = {}
    counts: dict[str, int] = {}
    for img in reference.images:
        order.setdefault(img.key, img.tag)
        counts[img.key] = counts.get(img.key, 0) + 1
    present = list(dict.fromkeys(order.values()))
    tags = [t for t in GENEVAL_TAGS if t in present] + [t for t in present if t not in GENEVAL_TAGS]
    first_seen = {k: i for i, k in enumerate(order)}
    keys = sorted(order, key=lambda k: (tags.index(order[k]), first_seen[k]))
    groups = [np.array([i for i, k in enumerate(keys) if order[k] == t]) for t in tags]
    rng = np.random.default_rng(seed)
    resamples = [g[rng.integers(0, len(g), size=(n_boot, len(g)))] for g in groups]
    return _Design(keys, tags, groups, np.array([counts[k] for k in keys], dtype=np.float64), resamples)


def _check_same_prompts(reference: GenEvalMethod, other: GenEvalMethod) -> None:
    def per_prompt(m: GenEvalMethod) -> dict[str, tuple[str, set[int]]]:
        out: dict[str, tuple[str, set[int]]] = {}
        for img in m.images:
            out.setdefault(img.key, (img.prompt, set()))[1].add(img.sample)
        return out

    a, b = per_prompt(reference), per_prompt(other)
    only_a, only_b = [a[k][0] for k in a if k not in b], [b[k][0] for k in b if k not in a]
    if only_a or only_b:
        raise GenEvalError(f"methods {reference.name!r} and {other.name!r} were scored on different prompts: "
                           f"{len(only_a)} only in {reference.name!r} (e.g. {only_a[:2]}), {len(only_b)} only in "
                           f"{other.name!r} (e.g. {only_b[:2]}); generate both from the same metadata file")
    for k, (prompt, samples) in a.items():
        if b[k][1] != samples:
            raise GenEvalError(f"prompt {prompt!r}: {reference.name!r} has images {sorted(samples)}, {other.name!r} "
                               f"has {sorted(b[k][1])}; generate both with the same --images-per-prompt")


def _per_prompt_sums(method: GenEvalMethod, design: _Design, value: Callable[[GenEvalImage], float | None]) -> np.ndarray | None:
    index = {k: i for i, k in enumerate(design.keys)}
    s_P = np.zeros(len(design.keys))
    for img in method.images:
        v = value(img)
        if v is None:
            return None
        s_P[index[img.key]] += v
    return s_P


def _tag_stats(c_P: np.ndarray, design: _Design) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    """Per-tag accuracy, overall (mean over tags), and their bootstrap samples (tags x B) and (B,)."""
    acc = {t: float(c_P[g].sum() / design.n_P[g].sum()) for t, g in zip(design.tags, design.groups)}
    boot_TB = np.stack([c_P[r].sum(-1) / design.n_P[r].sum(-1) for r in design.resamples])
    return acc, float(np.mean(list(acc.values()))), boot_TB, boot_TB.mean(0)


def _mean_stats(s_P: np.ndarray, design: _Design) -> tuple[float, np.ndarray]:
    """Mean over images of a per-image value (from per-prompt sums) and its bootstrap samples (B,)."""
    r = design.all_resampled
    return float(s_P.sum() / design.n_P.sum()), s_P[r].sum(-1) / design.n_P[r].sum(-1)


def tabulate(methods: list[GenEvalMethod], scores: dict[str, dict[str, dict[tuple[str, int], float]]] | None = None,
             n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """The GenEval table: per method overall + per tag with 95% CIs, costs, extra per-image scores, and
    paired comparisons against ``methods[0]``. ``scores[method][metric][(key, sample)]`` adds e.g. HPSv2."""
    if not methods:
        raise GenEvalError("no --geneval methods given")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise GenEvalError(f"--geneval names must differ, got {names}")
    ref = methods[0]
    for m in methods[1:]:
        _check_same_prompts(ref, m)
    scores = scores or {}
    design = _design(ref, n_boot, seed)
    summary: dict = {"reference": ref.name, "tags": design.tags, "num_prompts": len(design.keys),
                     "num_images": int(design.n_P.sum()),
                     "prompts_per_tag": {t: int(len(g)) for t, g in zip(design.tags, design.groups)},
                     "ci": f"95% percentile bootstrap over prompts, stratified by tag, {n_boot} resamples",
                     "test": "two-sided sign-flip randomisation test over prompts (exact up to "
                             f"{EXACT_SIGNFLIP_MAX} differing prompts, else {N_SIGNFLIP} random flips)",
                     "methods": {}, "paired": {}, "notes": [n for m in methods for n in m.notes]}
    tag_ok = {t: len(g) >= 2 for t, g in zip(design.tags, design.groups)}
    all_ok = all(tag_ok.values())
    if not all_ok:
        summary["notes"].append("no CI where a tag has a single prompt (resampling one prompt cannot vary): "
                                + ", ".join(t for t, ok in tag_ok.items() if not ok))
    fingerprints = {m.fingerprint for m in methods if m.fingerprint}
    if len(fingerprints) > 1:
        summary["notes"].append(f"the methods' images come from {len(fingerprints)} different generator weights "
                                f"(config.json generator_fingerprint): is that intended?")
    boots: dict[str, dict] = {}
    for m in methods:
        c_P = _per_prompt_sums(m, design, lambda img: float(img.correct))
        acc, overall, tag_boot, overall_boot = _tag_stats(c_P, design)
        entry = {"results": str(m.results), "schedule": m.schedule, "overall": overall, "overall_ci": _interval(overall_boot, all_ok),
                 "tags": {t: {"score": acc[t], "ci": _interval(b, tag_ok[t]), "correct": int(c_P[g].sum()), "images": int(design.n_P[g].sum())}
                          for t, b, g in zip(design.tags, tag_boot, design.groups)},
                 "images_correct": float(c_P.sum() / design.n_P.sum()),
                 "prompts_any_correct": float(np.mean(c_P > 0)), "costs": {}, "scores": {}}
        boots[m.name] = {"c_P": c_P, "tag": tag_boot, "overall": overall_boot, "means": {}}
        measures = [(k, lambda img, m=m, k=k: m.costs.get((img.key, img.sample), {}).get(k)) for k in ("flops_fraction", "flops", "latency_ms")]
        measures += [(k, lambda img, v=v: v.get((img.key, img.sample))) for k, v in scores.get(m.name, {}).items()]
        for k, fn in measures:
            s_P = _per_prompt_sums(m, design, fn)
            if s_P is None:
                continue
            mean, b = _mean_stats(s_P, design)
            (entry["costs"] if k in ("flops_fraction", "flops", "latency_ms") else entry["scores"])[k] = {"mean": mean, "ci": _interval(b, all_ok)}
            boots[m.name]["means"][k] = (s_P, b)
        summary["methods"][m.name] = entry
    ref_costs = summary["methods"][ref.name]["costs"]
    for m in methods:
        c = summary["methods"][m.name]["costs"]
        for k, speed in (("flops", "flops_speedup"), ("latency_ms", "latency_speedup")):
            if k in c and k in ref_costs:
                c[speed] = ref_costs[k]["mean"] / c[k]["mean"]
    rb = boots[ref.name]
    total_images = design.n_P.sum()
    for m in methods[1:]:
        mb = boots[m.name]
        d_P = mb["c_P"] - rb["c_P"]
        w_overall = np.zeros(len(design.keys))
        for g in design.groups:
            w_overall[g] = 1.0 / (len(design.groups) * design.n_P[g].sum())
        rows = {"overall": {"diff": summary["methods"][m.name]["overall"] - summary["methods"][ref.name]["overall"],
                            "ci": _interval(mb["overall"] - rb["overall"], all_ok), "p": signflip_p(d_P, w_overall),
                            "prompts_better": int((d_P > 0).sum()), "prompts_worse": int((d_P < 0).sum())}}
        for t, g, bm, br in zip(design.tags, design.groups, mb["tag"], rb["tag"]):
            w = np.zeros(len(design.keys))
            w[g] = 1.0 / design.n_P[g].sum()
            rows[t] = {"diff": summary["methods"][m.name]["tags"][t]["score"] - summary["methods"][ref.name]["tags"][t]["score"],
                       "ci": _interval(bm - br, tag_ok[t]), "p": signflip_p(d_P * (w > 0), w),
                       "prompts_better": int((d_P[g] > 0).sum()), "prompts_worse": int((d_P[g] < 0).sum())}
        for k in mb["means"]:
            if k not in rb["means"]:
                continue
            (s_m, b_m), (s_r, b_r) = mb["means"][k], rb["means"][k]
            rows[k] = {"diff": float((s_m - s_r).sum() / total_images), "ci": _interval(b_m - b_r, all_ok),
                       "p": signflip_p(s_m - s_r, np.full(len(design.keys), 1.0 / total_images))}
        summary["paired"][f"{m.name} vs {ref.name}"] = rows
    return summary


# ---- the table ------------------------------------------------------------------------------------
def _f(x: float | None, nd: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def _ci(ci: list[float] | None, nd: int = 3) -> str:
    if ci is None:
        return "[n/a]"
    return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


SCORE_LABELS = {"hpsv2": "HPSv2", "image_reward": "ImageReward"}
MEASURE_LABELS = {**GENEVAL_TAGS, **SCORE_LABELS, "flops_fraction": "FLOPs fraction", "latency_ms": "latency ms"}


def geneval_markdown(summary: dict) -> str:
    """The side-by-side table and the paired comparisons, as Markdown."""
    tags = summary["tags"]
    score_names = list(dict.fromkeys(k for m in summary["methods"].values() for k in m["scores"]))
    head = (["method", "schedule", "overall"] + [GENEVAL_TAGS.get(t, t) for t in tags]
            + ["FLOPs frac", "FLOPs ×", "latency ms", "latency ×"] + [SCORE_LABELS.get(s, s) for s in score_names])
    lines = [f"GenEval: {summary['num_prompts']} prompts, {summary['num_images']} images per method; "
             f"{summary['ci']}; reference for × and Δ: {summary['reference']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        c = m["costs"]
        cells = [name, m["schedule"] or "?", f"**{_f(m['overall'])}** {_ci(m['overall_ci'], 2)}"]
        cells += [f"{_f(m['tags'][t]['score'])} {_ci(m['tags'][t]['ci'], 2)}" for t in tags]
        cells += [f"{_f(c['flops_fraction']['mean'])} {_ci(c['flops_fraction']['ci'])}" if "flops_fraction" in c else "n/a",
                  _f(c.get("flops_speedup"), 2), f"{_f(c['latency_ms']['mean'], 1)} {_ci(c['latency_ms']['ci'], 1)}"
                  if "latency_ms" in c else "n/a", _f(c.get("latency_speedup"), 2)]
        cells += [f"{_f(m['scores'][s]['mean'], 4)} {_ci(m['scores'][s]['ci'], 4)}" if s in m["scores"] else "n/a"
                  for s in score_names]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["paired"]:
        lines += ["", f"Paired against {summary['reference']} (same prompts and seeds): difference, 95% CI "
                      f"(bootstrap over prompts), p ({summary['test']}), prompts where it scores more / fewer images correct:", "",
                  "| comparison | measure | Δ | 95% CI | p | prompts better / worse |", "|---|---|---|---|---|---|"]
        for comp, rows in summary["paired"].items():
            for measure, r in rows.items():
                nd = 1 if measure == "latency_ms" else 4 if measure in SCORE_LABELS else 3
                label = MEASURE_LABELS.get(measure, measure)
                bw = f"{r['prompts_better']} / {r['prompts_worse']}" if "prompts_better" in r else ""
                if measure == "flops":
                    continue  # the fraction says the same, in readable units
                lines.append(f"| {comp} | {label} | {_f(r['diff'], nd, True)} | {_ci(r['ci'], nd)} | {_p(r['p'])} | {bw} |")
    lines += [""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines).rstrip() + "\n"


# ---- evaluate_agent.py --geneval ------------------------------------------------------------------
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


def geneval_mode(specs: list[str], out: Path | None = None, json_path: Path | None = None,
                 scorers: dict[str, Callable] | None = None, notes: list[str] | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Read every ``NAME=RESULTS[@IMAGES_DIR]``, print the table, write it (``out``/geneval_table.md and
    geneval_summary.json, and/or ``json_path``) atomically; returns the summary."""
    methods = [load_method(s) for s in specs]
    summary = tabulate(methods, score_images(methods, scorers or {}))
    summary["notes"] += list(notes or [])
    table = geneval_markdown(summary)
    log(table)
    if out is not None:
        atomic_write_bytes(Path(out) / "geneval_table.md", table.encode("utf-8"))
        atomic_write_json(Path(out) / "geneval_summary.json", summary)
        log(f"wrote {out}/geneval_table.md and {out}/geneval_summary.json")
    if json_path is not None:
        atomic_write_json(json_path, summary)
        log(f"wrote {json_path}")
    return summary


def run_geneval_mode(args, other_modes: bool) -> int:
    """``evaluate_agent.py --geneval ...``: reads ``args.geneval``, ``out``, ``json``, ``hpsv2_checkpoint``,
    ``image_reward``; errors are GenEvalError / HPSv2Unavailable (ValueError: the CLI exits 2)."""
    import sys

    if other_modes:
        raise GenEvalError("--geneval (GenEval mode) cannot be combined with --run or --orig/--fast/--rl/--method")
    scorers: dict[str, Callable] = {}
    notes = []
    if args.hpsv2_checkpoint is not None:
        from evaluation.preference import HPSv2Scorer

        scorers["hpsv2"] = HPSv2Scorer(args.hpsv2_checkpoint)
    if args.image_reward:
        from evaluation.metrics import load_image_reward

        ir, why = load_image_reward()
        if ir is None:
            notes.append(f"ImageReward {why}")
            print(f"note: ImageReward {why}; continuing without it", file=sys.stderr)
        else:
            scorers["image_reward"] = ir
    geneval_mode(args.geneval, args.out, args.json, scorers, notes=notes)
    return 0
