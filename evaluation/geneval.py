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
- Results (read by ``evaluation.geneval_results``): one JSON object a line (pandas ``records``): ``filename`` (the image path as the evaluator
  joined it), ``tag``, ``prompt``, ``correct`` (bool), ``reason``, ``metadata`` (the prompt's metadata as a
  JSON string), ``details``. GenEval's score of a tag is the fraction of that tag's *images* judged correct,
  and its overall score the unweighted mean over the tags present (``summary_scores.py``).

Modules: this one holds the formats' constants, the prompt metadata and the image layout that
``generate.py --prompts geneval:PATH`` writes; ``evaluation.geneval_results`` reads GenEval's results
file (and the costs beside the images); ``evaluation.geneval_table`` makes the side-by-side table and its
statistics, and runs ``evaluate_agent.py --geneval``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from generator.images import to_uint8
from generator.weights_io import atomic_write_bytes, atomic_write_json

GENEVAL_PREFIX = "geneval:"
#: GenEval's six tasks in its README's column order, with its column names.
GENEVAL_TAGS = {"single_object": "single object", "two_object": "two object", "counting": "counting",
                "colors": "colors", "position": "position", "color_attr": "color attribution"}


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


def json_object_line(line: str, where: str, expected: str = "a JSON object") -> dict:
    """One line of a JSON-lines file as a dict; anything else is a ``GenEvalError`` naming ``where``
    (file:line) and what was ``expected``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise GenEvalError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(obj, dict):
        raise GenEvalError(f"{where}: expected {expected}, got {type(obj).__name__}")
    return obj


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
        meta = json_object_line(line, where, "a JSON object with 'prompt' and 'tag'")
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
