"""Generate images with a pruning schedule or a trained agent (the seed's inference.py).

    python generate.py --prompt "a large red solid circle in the centre on a plain gray background"
    python generate.py --prompts prompts.tsv --schedule fastvar --out results
    python generate.py --prompts test --schedule "5:0.5,6:1,8:1" --save-intermediate --dft
    python generate.py --prompts test --agent runs/selector_s0   # the default train.py run, at FastVAR's FLOPs
    python generate.py --prompts geneval:GENEVAL/prompts/evaluation_metadata.jsonl --images-per-prompt 4 --out geneval_fastvar --schedule fastvar

Prompts: ``--prompt TEXT`` (repeatable; named by ``--name`` or a slug of the text), or ``--prompts``
with a file of ``name<TAB>prompt`` lines, a tab-separated table whose header names a ``prompt`` (and
optionally a ``name``) column, a JSON dict ``{name: prompt}``, plain one-prompt-per-line text, or a
split name (train/val/test). Schedules: original | fastvar | tail | "width:ratio,..."
(width = token-map side; ratio >= 1 skips that scale) or ``--agent RUN_DIR``.

Writes, per prompt, ``OUT/gen_images_<name>/1.jpg`` (2.jpg, ... with --images-per-prompt) and
``config.json`` (prompt, seed, schedule, ratios, per-scale tokens and FLOPs, latency), merges all
into ``OUT/config_all.json``; ``--save-intermediate`` adds ``summed_codes/`` and ``rescale_codes/``
PNGs per non-skipped scale, ``--dft`` adds ``fourier_{pixel,latent}_*/scale_<si>.npy`` spectra
(see scripts/analyze_fourier.py).

``--prompts geneval:PATH/evaluation_metadata.jsonl`` writes GenEval's layout instead, for its
``evaluation/evaluate_images.py OUT``: ``OUT/<i, 5 digits>/metadata.jsonl``, ``samples/<k, 4 digits>.png``
and our ``config.json`` beside them (evaluation/geneval.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from generator.backends import add_generator_args, build_generator, resolved_cfg
from generator.images import to_uint8
from generator.schedules import run_schedule
from generator.weights_io import WeightsError, atomic_write_bytes, atomic_write_json


class PromptError(ValueError):
    pass


def slug(text: str, max_len: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "_", text.strip().lower()).strip("_")
    return s[:max_len].rstrip("_") or "prompt"


def unique_slug(text: str, taken) -> str:
    """``slug(text)``, suffixed ``_2``, ``_3``, ... until it is not in ``taken``."""
    base = name = slug(text)
    i = 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def read_prompts_file(spec: str) -> dict[str, str]:
    """name -> prompt from a TSV / JSON / plain file, or a split name of prompts/."""
    path = Path(spec)
    if path.is_dir():
        raise PromptError(f"--prompts {spec!r} is a directory; give a prompts file (name<TAB>prompt lines, a JSON "
                          f"{{name: prompt}} or one prompt per line) or a split name (train, val, test)")
    if not path.exists():
        from domain import load_prompts

        try:
            lines = load_prompts(spec)
        except (FileNotFoundError, ValueError) as e:
            raise PromptError(f"--prompts {spec!r}: not a file and not a prompt split ({e})") from None
        return {f"{spec}_{i:03d}": p for i, p in enumerate(lines)}
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise PromptError(f"{path}: JSON prompts must be an object {{name: prompt}}")
        out = {str(k): v for k, v in data.items()}
    else:
        from domain.splits import prompt_table

        out = {}
        try:
            rows = prompt_table(text.splitlines(), str(path))  # plain lines, name<TAB>prompt, or a table with a header
        except ValueError as e:
            raise PromptError(str(e)) from None
        for name, prompt, n in rows:
            if name is None:  # a plain line: named by its slug, suffixed _2, _3, ... where slugs of different prompts collide
                if prompt in out.values():
                    raise PromptError(f"{path}:{n}: prompt {prompt!r} appears twice")
                name = unique_slug(prompt, out)
            if name in out:
                raise PromptError(f"{path}:{n}: duplicate prompt name {name!r}")
            out[name] = prompt
    from generator.checks import check_folder_name

    for name, prompt in out.items():
        if not prompt.strip():
            raise PromptError(f"{path}: prompt {name!r} is empty")
        try:
            check_folder_name(name, f"{path}: prompt name")
        except ValueError as e:
            raise PromptError(str(e)) from None
    if not out:
        raise PromptError(f"{path} contains no prompts")
    return out


def collect_prompts(args) -> dict[str, str]:
    if args.prompts is not None and args.prompt:
        raise PromptError("give --prompt or --prompts, not both")
    if args.num_prompts is not None and args.num_prompts < 1:
        raise PromptError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.name and args.prompt is not None and not args.prompt:
        raise PromptError("--name names --prompt values; with --prompts FILE the names come from the file")
    if args.prompts is not None:
        prompts = read_prompts_file(args.prompts)
    elif args.prompt:
        prompts = prompts_from_flags(args.prompt, args.name)
    else:
        raise PromptError("no prompts: give --prompt TEXT or --prompts FILE|train|val|test")
    if args.num_prompts is not None:
        prompts = dict(list(prompts.items())[: args.num_prompts])
    return prompts


def prompts_from_flags(texts: list[str], names: list[str]) -> dict[str, str]:
    """name -> prompt for repeated ``--prompt`` (and ``--name``) flags. A prompt given twice is an error
    (``--images-per-prompt`` makes more images of one prompt); different prompts whose slugs collide
    (slugs are cut at 48 characters) get ``_2``, ``_3``, ... so that no output folder is overwritten."""
    from generator.checks import check_folder_name

    if names and len(names) != len(texts):
        raise PromptError(f"{len(names)} --name for {len(texts)} --prompt (give one --name per --prompt, or none)")
    for t in texts:
        if not t.strip():
            raise PromptError("--prompt must not be empty")
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise PromptError(f"--prompt {repeated[0]!r} is given {texts.count(repeated[0])} times; give each prompt once "
                          f"(--images-per-prompt N makes N images of it)")
    if names:
        for n in names:
            try:
                check_folder_name(n, "--name")
            except ValueError as e:
                raise PromptError(str(e)) from None
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PromptError(f"--name {twice[0]!r} is given {names.count(twice[0])} times: each prompt needs its own folder")
        return dict(zip(names, texts))
    out: dict[str, str] = {}
    for t in texts:
        out[unique_slug(t, out)] = t
    return out


def save_image(img_3HW: torch.Tensor, path: Path, quality: int = 95) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(to_uint8(img_3HW)).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    atomic_write_bytes(path, buf.getvalue())


def save_npy(arr: np.ndarray, path: Path) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())


class IntermediateWriter:
    """Per-scale PNGs (``summed_codes`` / ``rescale_codes``) and DFT spectra of one generation."""

    def __init__(self, generator, out_dir: Path, images: bool, dft: bool, image_number: int) -> None:
        self.g, self.out, self.images, self.dft = generator, out_dir, images, dft
        self.suffix = "" if image_number == 1 else f"_{image_number}"

    def after_step(self, state, scale_index: int) -> None:
        from generator.spectral import log_magnitude_spectrum

        if state.codes[scale_index] is None:  # skipped: no new codes, nothing to write (as in the seed)
            return
        summed = self.g.decode(state)
        residual = self.g.decode_scale(state, scale_index)
        name = f"intermediate_scale_img_{scale_index}{self.suffix}.png"
        if self.images:
            save_image(summed[0], self.out / "summed_codes" / name)
            save_image(residual[0], self.out / "rescale_codes" / name)
        if self.dft:
            latent_residual, unscaled = self.g.scale_latents(state, scale_index)
            spectra = {"fourier_pixel_summed": summed[:1], "fourier_pixel_residual": residual[:1],
                       "fourier_latent_summed": self.g.accumulated_codes(state)[:1], "fourier_latent_residual": latent_residual[:1],
                       "fourier_latent_unscaled": unscaled[:1]}
            for folder, x in spectra.items():
                save_npy(log_magnitude_spectrum(x)[0].cpu().numpy(), self.out / folder / f"scale_{scale_index}{self.suffix}.npy")


def run_one(generator, schedule, prompt: str, seed: int, writer: IntermediateWriter | None):
    """Generate one image, scale by scale; returns (image (3, H, W), state, latency_s)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        state = run_schedule(generator, generator.start([prompt], [seed]), schedule,
                             after_step=writer.after_step if writer is not None else None)
        image = generator.decode(state)[0]
    return image, state, time.perf_counter() - t0


def run_batch(generator, schedule, prompts: list[str], seeds: list[int]):
    """Generate a batch together (a trained agent decides per image, one policy call per scale);
    returns (images (B, 3, H, W), state, latency_s of the whole batch)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        state = run_schedule(generator, generator.start(prompts, seeds), schedule)
        images = generator.decode(state)
    return images, state, time.perf_counter() - t0


class GenEvalImages:
    """``generate_image(prompt, seed)`` for ``write_geneval_layout``, which asks image by image: the images
    of one prompt (seeds up to ``last_seed``) are made ``batch_size`` at a time and handed out one by one,
    each with its own reports and FLOPs and the batch's time divided by its size."""

    def __init__(self, generator, schedule, batch_size: int, last_seed: int) -> None:
        self.generator, self.schedule, self.batch_size, self.last_seed = generator, schedule, batch_size, last_seed
        self.made: dict = {}

    def __call__(self, prompt: str, seed: int):
        if (prompt, seed) not in self.made:
            self.made.clear()
            seeds = list(range(seed, max(seed, min(seed + self.batch_size, self.last_seed + 1))))
            if len(seeds) == 1:
                if hasattr(self.schedule, "bind"):
                    self.schedule.bind(None)
                return run_one(self.generator, self.schedule, prompt, seed, None)
            images, state, latency = run_batch(self.generator, self.schedule, [prompt] * len(seeds), seeds)
            flops = state.flops_used_per_image
            for b, s in enumerate(seeds):  # what image_record reads of a state: this image's reports and FLOPs
                view = SimpleNamespace(reports=state.image_reports(b), flops_used=flops[b])
                self.made[(prompt, s)] = (images[b], view, latency / len(seeds))
        return self.made.pop((prompt, seed))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    ap.add_argument("--name", action="append", default=[], help="folder name for each --prompt (repeatable)")
    ap.add_argument("--prompts", default=None, help="prompts file (name<TAB>prompt / JSON / lines), train|val|test, "
                    "or geneval:PATH/evaluation_metadata.jsonl (GenEval's layout)")
    ap.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    s = ap.add_mutually_exclusive_group()
    s.add_argument("--schedule", default="original", help='original | fastvar | tail | "width:ratio,..."')
    s.add_argument("--agent", type=Path, default=None, metavar="RUN_DIR", help="a train.py run: its agent picks the ratios")
    ap.add_argument("--agent-model", default="best", choices=("best", "final"))
    ap.add_argument("--budget", type=float, default=None, metavar="B",
                    help="FLOPs budget for a budget-conditioned --agent (fraction of the unpruned transformer FLOPs, "
                         "inside the run's trained range); every image stays within it. Default: FastVAR's "
                         "transformer FLOPs on this generator (0.347 on the embedded model)")
    ap.add_argument("--tolerance", type=float, default=None, metavar="EPS",
                    help="a lossless --agent (train.py --algo selector --objective iso-quality): its operating point, "
                         "a mean QUALITY loss among the run's epsilons (default: the run's --epsilon, 0.1)")
    ap.add_argument("--seed", type=int, default=0, help="image seed of the first image of each prompt")
    ap.add_argument("--images-per-prompt", type=int, default=1, help="seeds seed, seed+1, ... -> 1.jpg, 2.jpg, ...")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="images generated together (an --agent decides per image, one policy call per scale for "
                         "the batch); latency_s is then the batch's time divided by its size. In GenEval's layout "
                         "the images of one prompt are batched")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--save-intermediate", action="store_true", help="per-scale summed_codes/ and rescale_codes/ PNGs")
    ap.add_argument("--dft", action="store_true", help="per-scale Fourier spectra (fourier_pixel_*/, fourier_latent_*/)")
    add_generator_args(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agents.schedule import RunError, default_agent_budget, load_agent_schedule, read_run_config
    from evaluation.geneval import GenEvalError, geneval_prompt_set, write_geneval_layout
    from generator.schedules import parse_schedule

    try:
        if args.images_per_prompt < 1:
            raise ValueError(f"--images-per-prompt must be >= 1, got {args.images_per_prompt}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.batch_size > 1 and (args.save_intermediate or args.dft):
            raise ValueError("--save-intermediate / --dft write each image's scales as it is made: use --batch-size 1")
        geneval = geneval_prompt_set(args.prompts, args.num_prompts, bool(args.prompt), args.save_intermediate or args.dft)
        prompts = collect_prompts(args) if geneval is None else {}
        cfg_default = None
        if args.agent is not None:
            cfg_default = read_run_config(args.agent)["env"].get("cfg_scale")
        from generator.backends import backend

        cfg_default = backend(args.generator).default_cfg if cfg_default is None else cfg_default
        effective_cfg = resolved_cfg(args, cfg_default)
        generator = build_generator(args, cfg_default=cfg_default)
        if args.tolerance is not None and args.agent is None:
            raise ValueError(f"--tolerance {args.tolerance} applies to a lossless --agent")
        if args.budget is not None and args.agent is None:
            raise ValueError(f"--budget {args.budget} applies to a budget-conditioned --agent; a fixed --schedule "
                             f"has fixed FLOPs")
        if args.agent is not None:
            if args.budget is None and (default := default_agent_budget(args.agent, generator)) is not None:
                args.budget = default
                print(f"--budget not given: the agent keeps every image within FastVAR's transformer FLOPs on this "
                      f"generator, {default:.4f} of the unpruned (the default)")
            schedule = load_agent_schedule(args.agent, generator, which=args.agent_model, budget=args.budget,
                                           tolerance=args.tolerance)
            schedule_spec = f"agent:{args.agent}" + ("" if args.budget is None else f"@budget={args.budget:g}") + (
                "" if args.tolerance is None else f"@tolerance={args.tolerance:g}")
        else:
            schedule = parse_schedule(args.schedule, generator.scale_widths)
            schedule_spec = args.schedule
    except (PromptError, ValueError, RunError, WeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.generator == "tiny":  # not an error: the model is only never trained on other text (README)
        from generator.checks import check_prompt_in_grammar

        for name, prompt in prompts.items():
            try:
                check_prompt_in_grammar(prompt)
            except ValueError as e:
                print(f"warning: {e}", file=sys.stderr)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    widths = list(generator.scale_widths)
    flops_full = float(generator.flops_full())
    all_path = out / "config_all.json"
    try:
        config_all = json.loads(all_path.read_text()) if all_path.is_file() else {}
    except json.JSONDecodeError as e:
        print(f"error: {all_path} exists but is not valid JSON ({e}); move it away first", file=sys.stderr)
        return 2
    run_info = {"generator": getattr(generator, "backend", "?"), "generator_fingerprint": generator.fingerprint(),
                "schedule": schedule_spec, "cfg": effective_cfg, "cfg_scales": args.cfg_scales, "temperature": args.temperature,
                "top_k": args.top_k, "scale_widths": widths, "flops_full": flops_full}
    if geneval is not None:
        generate_image = GenEvalImages(generator, schedule, args.batch_size, args.seed + args.images_per_prompt - 1)
        try:
            write_geneval_layout(geneval, out, run_info, generate_image, args.images_per_prompt, args.seed)
        except GenEvalError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    items = [(name, prompt, j) for name, prompt in prompts.items() for j in range(args.images_per_prompt)]
    records: dict[str, list] = {name: [None] * args.images_per_prompt for name in prompts}
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        if len(chunk) == 1:  # batch 1: the per-scale intermediates can be written as the image is made
            name, prompt, j = chunk[0]
            writer = IntermediateWriter(generator, out / f"gen_images_{name}", args.save_intermediate, args.dft, j + 1) \
                if (args.save_intermediate or args.dft) else None
            if hasattr(schedule, "bind"):
                schedule.bind(None)
            image, state, latency = run_one(generator, schedule, prompt, args.seed + j, writer)
            images, latencies = image[None], [latency]
        else:
            images, state, latency = run_batch(generator, schedule, [p for _, p, _ in chunk],
                                               [args.seed + j for _, _, j in chunk])
            latencies = [latency / len(chunk)] * len(chunk)
        flops = state.flops_used_per_image
        for b, (name, prompt, j) in enumerate(chunk):
            save_image(images[b], out / f"gen_images_{name}" / f"{j + 1}.jpg")
            reports = state.image_reports(b)
            ratios = [r.ratio for r in reports]
            records[name][j] = {
                "file": f"{j + 1}.jpg", "seed": args.seed + j, "ratios": ratios,
                "pruning_scales": ",".join(f"{w}:{r:g}" for w, r in zip(widths, ratios) if r > 0),
                "scales": [{"scale": r.scale_index, **r.to_dict()} for r in reports], "flops_total": flops[b],
                "flops_fraction": flops[b] / flops_full, "latency_s": latencies[b], "batch_size": len(chunk)}
            print(f"{name} #{j + 1}: {flops[b] / flops_full:.3f} of full FLOPs, {latencies[b] * 1000:.1f} ms"
                  f"{' (batch share)' if len(chunk) > 1 else ''}, ratios {[round(r, 3) for r in ratios]}")
            if all(r is not None for r in records[name]):  # the prompt's last image: write its config
                config = {"name": name, "prompt": prompt, **run_info, "images": records[name]}
                atomic_write_json(out / f"gen_images_{name}" / "config.json", config)
                config_all[name] = config
                atomic_write_json(all_path, config_all)  # after each prompt: an interrupted run keeps what it wrote
    print(f"wrote {len(prompts)} prompt folder(s) under {out}/ and {all_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
