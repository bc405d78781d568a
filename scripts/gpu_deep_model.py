"""Train the 16x16-latent, 10-scale embedded model on a lent GPU machine, in resumable sittings.

``--stages`` (run in this order): render (a pool of domain samples, every CPU core), tokenizer
(scripts/train_tokenizer.py), codes (the pool encoded once by the frozen tokenizer), generator
(scripts/train_generator.py --codes), card (the model card's figures for these weights). The pool and the
codes file live in --work, are rebuilt by the stages that need them and reused while they fit. A model that
already reached its ``--*-steps`` in ``--resume-from`` is not trained again.

What comes back (``--out``; the end checks the return limits, 8 files of 16 MiB): tokenizer.safetensors and
generator.safetensors (float16 weights, config and steps in the header: embedded.loaders files), their
AdamW state in bfloat16 as <name>.opt.safetensors (second moments, steps, param groups: needed to resume)
and, when both moments do not fit 15 MiB, <name>.opt-m.safetensors (first moments: optional, they restart
at zero without it), state.json (steps, seconds, steps/s per sitting; the card) and samples.png. The weights
file is also the checkpoint's model: resuming upcasts it (fp16 rounding, ~5e-4 relative, is below one late
AdamW step). No torch pickle leaves the machine. Keep the folder under the ignored checkpoints/: the
repository must never hold optimizer state.

The scripts need open_clip's BPE tokenizer, which the GPU image lacks: copy it here once (pure Python:
open_clip, ftfy, wcwidth, 2.3 MB) with ``--vendor-to checkpoints/vendor`` and carry that folder.

    # sitting 1, fresh machine, carry checkpoints/vendor (budgets + ~2 min of overheads < 10 min)
    PYTHONUNBUFFERED=1 python scripts/gpu_deep_model.py --out $OUT --tokenizer-budget-s 200 --generator-budget-s 220
    # sitting 2: carry checkpoints/vendor and checkpoints/gpu_deep_1/ holding the returned tokenizer.safetensors,
    # generator.safetensors, generator.opt.safetensors and state.json (the whole folder, ~42 MiB, plus the
    # tracked tree would exceed the 64 MiB a call may carry)
    PYTHONUNBUFFERED=1 python scripts/gpu_deep_model.py --out $OUT --resume-from checkpoints/gpu_deep_1 \
        --stages generator,card --generator-budget-s 300

A resumed sitting restarts the time part of the LR schedule (progress = max(step/steps, elapsed/budget)),
so the LR rises back to the step schedule's value: set ``--generator-steps`` to the total planned over all
sittings (state.json has steps/s) for a schedule that carries over.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedded.cli import int_tuple, model_shape_config  # noqa: E402
from embedded.config import GeneratorConfig, TokenizerConfig, TransformerConfig  # noqa: E402
from embedded.training import pick_device, render_pool, save_checkpoint  # noqa: E402
from generator.weights_io import atomic_write_bytes, atomic_write_json, jsonable, npz_bytes, read_metadata  # noqa: E402

STAGES = ("render", "tokenizer", "codes", "generator", "card")
STAGES_NEEDING_OPEN_CLIP = {"tokenizer", "codes", "generator", "card"}  # all import embedded.loaders
FRESHABLE = ("tokenizer", "generator")
DEEP_SCALES, DEEP_CHANNEL_MULT = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), (1, 4, 8)
VENDOR_PACKAGES = ("open_clip", "ftfy", "wcwidth")  # what open_clip needs beyond the GPU image's packages
RETURN_MAX_FILES, RETURN_MAX_FILE, RETURN_MAX_TOTAL = 8, 16 * 2**20, 64 * 2**20
RETURN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
SHARD_BYTES = 15 * 2**20  # optimizer shards stay under the 16 MiB a returned file may have, header included


def _stages(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {bad or [text]}; allowed: {','.join(STAGES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for what comes back (weights, optimizer shards, state.json)")
    ap.add_argument("--resume-from", type=Path, default=None, help="a previous --out folder (carried)")
    ap.add_argument("--stages", type=_stages, default=STAGES, help=f"comma-separated, of {','.join(STAGES)}")
    ap.add_argument("--work", type=Path, default=REPO / "checkpoints" / "gpu_deep_work",
                    help="scratch: pool, codes file, torch checkpoints (never returned)")
    ap.add_argument("--fresh", default="", help=f"train these from scratch despite --resume-from: {','.join(FRESHABLE)}")
    ap.add_argument("--pool-n", type=int, default=120_000, help="images in the pool")
    ap.add_argument("--pool-seed", type=int, default=1)
    ap.add_argument("--render-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--scales", type=int_tuple, default=DEEP_SCALES)
    ap.add_argument("--channel-mult", type=int_tuple, default=DEEP_CHANNEL_MULT)
    for name, steps, batch in (("tokenizer", 6000, 128), ("generator", 8000, 256)):
        ap.add_argument(f"--{name}-steps", type=int, default=steps, help="total steps over all sittings")
        ap.add_argument(f"--{name}-batch", type=int, default=batch)
        ap.add_argument(f"--{name}-budget-s", type=float, default=None, help="stop this sitting's training after this many seconds")
    ap.add_argument("--generator-arch", type=int_tuple, default=None, metavar="WIDTH,DEPTH,HEADS",
                    help="a smaller generator than the default 192,6,6 (the CPU attempt: 128,4,4)")
    ap.add_argument("--ckpt-every", type=int, default=500, help="steps between torch checkpoints in --work")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--card-prompts", type=int, default=100)
    ap.add_argument("--card-real", type=int, default=512, help="held-out real images for PSNR and CLIP R@1")
    ap.add_argument("--card-latency-repeats", type=int, default=20, help="0 skips the latency figures")
    ap.add_argument("--card-device", default="cpu", help="where the card generates (its latency is this device's)")
    ap.add_argument("--vendor-to", type=Path, default=None, help="only copy open_clip, ftfy, wcwidth into this folder")
    ap.add_argument("--vendor-dir", type=Path, default=REPO / "checkpoints" / "vendor", help="where to find them when not installed")
    args = ap.parse_args(argv)
    if args.vendor_to is not None:
        return args
    if args.out is None:
        ap.error("--out DIR is required (the folder that comes back)")
    for dest in ("pool_n", "render_workers", "ckpt_every", "tokenizer_steps", "generator_steps", "tokenizer_batch",
                 "generator_batch", "card_prompts", "card_real"):
        if getattr(args, dest) < 1:
            ap.error(f"--{dest.replace('_', '-')} must be >= 1, got {getattr(args, dest)}")
    for dest in ("tokenizer_budget_s", "generator_budget_s"):
        if getattr(args, dest) is not None and not getattr(args, dest) > 0:
            ap.error(f"--{dest.replace('_', '-')} must be > 0 seconds, got {getattr(args, dest)}")
    if args.card_latency_repeats < 0:
        ap.error(f"--card-latency-repeats must be >= 0 (0 skips latency), got {args.card_latency_repeats}")
    if args.generator_arch is not None and len(args.generator_arch) != 3:
        ap.error(f"--generator-arch takes WIDTH,DEPTH,HEADS, got {','.join(map(str, args.generator_arch))}")
    args.fresh = tuple(s for s in args.fresh.split(",") if s)
    if bad := [s for s in args.fresh if s not in FRESHABLE]:
        ap.error(f"--fresh {','.join(bad)}: allowed {','.join(FRESHABLE)}")
    model_shape_config(ap, args)  # an inconsistent --scales / --channel-mult is an ap.error naming both
    if args.resume_from is not None:
        if not (args.resume_from / "state.json").is_file():
            ap.error(f"--resume-from {args.resume_from}: no state.json there (give a folder a previous --out wrote)")
        shape = read_state(args.resume_from).get("shape", {})
        if shape and (tuple(shape["scales"]), tuple(shape["channel_mult"])) != (args.scales, args.channel_mult):
            ap.error(f"--resume-from {args.resume_from} holds scales {shape['scales']} / channel-mult "
                     f"{shape['channel_mult']}, not {list(args.scales)} / {list(args.channel_mult)}")
    return args


# ---- open_clip on a machine without it ---------------------------------------------------------
def vendor_open_clip(dest: Path) -> list[Path]:
    """Copy the installed pure-Python packages open_clip needs beyond the GPU image into ``dest``."""
    copied = []
    for name in VENDOR_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"--vendor-to: {name} is not installed here (pip install open_clip_torch)")
        src = Path(spec.origin).parent
        shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        copied.append(dest / name)
    return copied


def ensure_open_clip(vendor_dir: Path) -> None:
    """Make ``import open_clip`` work: installed, or from ``vendor_dir`` (appended to sys.path, so an
    installed copy wins). Exits naming the fix when neither works."""
    try:
        importlib.import_module("open_clip")
        return
    except ImportError as e:
        first = e
    if vendor_dir.is_dir():
        sys.path.append(str(vendor_dir))
        importlib.invalidate_caches()
        try:
            mod = importlib.import_module("open_clip")
            print(f"open_clip {mod.__version__} from {vendor_dir}", flush=True)
            return
        except ImportError as e:
            raise SystemExit(f"open_clip is not importable even from --vendor-dir {vendor_dir}: {e}") from None
    raise SystemExit(f"open_clip is not installed ({first}) and --vendor-dir {vendor_dir} does not exist: run "
                     f"`python scripts/gpu_deep_model.py --vendor-to {vendor_dir}` where it is installed, and carry it")


# ---- pool and codes (rebuilt on the machine unless --work still holds them) -------------------
def ensure_pool(args) -> Path:
    """The pool .npz (images uint8 (N, 64, 64, 3), captions) in --work, rendered with every worker."""
    pool, meta = args.work / "pool.npz", args.work / "pool.json"
    want = {"n": args.pool_n, "seed": args.pool_seed}
    if pool.is_file() and meta.is_file() and json.loads(meta.read_text()) == want:
        print(f"[render] reusing {pool} ({args.pool_n} images)", flush=True)
        return pool
    t0 = time.time()
    # chunks of 500 seeds, as scripts/render_pool.py; a smaller pool renders one smaller chunk
    imgs, caps = render_pool(args.pool_n, args.pool_seed, args.render_workers, chunk=min(500, args.pool_n))
    atomic_write_bytes(pool, npz_bytes(images=imgs, captions=np.asarray(caps)))
    atomic_write_json(meta, want)
    print(f"[render] {len(caps)} images in {time.time() - t0:.1f}s with {args.render_workers} workers -> {pool}", flush=True)
    return pool


def ensure_codes(args, tokenizer: Path, device: str) -> Path:
    """The codes file for the pool and this tokenizer file (by SHA-256), made once in --work."""
    from scripts.train_generator import file_sha256, write_codes_file

    pool = ensure_pool(args)
    codes, meta = args.work / "codes.npz", args.work / "codes.json"
    want = {"tokenizer_sha256": file_sha256(tokenizer), "pool": json.loads((args.work / "pool.json").read_text())}
    if codes.is_file() and meta.is_file() and json.loads(meta.read_text()) == want:
        print(f"[codes] reusing {codes}", flush=True)
        return codes
    t0 = time.time()
    n = write_codes_file(tokenizer, pool, codes, pick_device(device))
    atomic_write_json(meta, want)
    print(f"[codes] encoded {n} images in {time.time() - t0:.1f}s -> {codes}", flush=True)
    return codes


# ---- the returned folder: weights + optimizer shards <-> the training scripts' CKPT_DIR/last.pt -----
def read_state(folder: Path) -> dict:
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(out: Path, state: dict) -> None:
    atomic_write_json(out / "state.json", jsonable(state))


def copy_returned(src: Path, out: Path) -> dict:
    """Copy a previous --out folder's files into ``out`` (each atomically; nothing when the same folder)
    and return its state."""
    if src.resolve() != out.resolve():
        for p in sorted(src.iterdir()):
            if p.is_file() and RETURN_NAME.match(p.name) and not p.name.startswith("."):
                atomic_write_bytes(out / p.name, p.read_bytes())  # returned files: <= 16 MiB each
    return read_state(src)


def weights_steps(path: Path) -> int:
    return int(read_metadata(path)["steps"])


def _opt_files(out: Path, name: str) -> tuple[Path, Path]:
    """(``<name>.opt.safetensors``: exp_avg_sq, steps and metadata, needed to resume; ``<name>.opt-m.safetensors``:
    exp_avg, written only when both moments do not fit one file, and optional on resume)."""
    return out / f"{name}.opt.safetensors", out / f"{name}.opt-m.safetensors"


def export_optimizer(ckpt: Path, out: Path, name: str) -> list[Path]:
    """Write the AdamW state of CKPT_DIR/last.pt next to ``out/<name>.safetensors`` in bfloat16 (files under
    SHARD_BYTES); the weights file must hold the checkpoint's model, which resuming reads from it."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = out / f"{name}.safetensors"
    saved = load_file(str(weights))
    if weights_steps(weights) != ck["step"] or any(not torch.equal(saved[k], v.to(saved[k].dtype)) for k, v in ck["model"].items()):
        raise SystemExit(f"{weights} is not the model of {ckpt} (step {ck['step']}): resuming would continue another model")
    tensors = {f"{i}.{key}": (t.float().reshape(1) if key == "step" else t.to(torch.bfloat16)).contiguous()
               for i, s in ck["opt"]["state"].items() for key, t in s.items()}
    first = {k: t for k, t in tensors.items() if k.endswith(".exp_avg")}
    main = {k: t for k, t in tensors.items() if k not in first}
    if sum(t.nbytes for t in tensors.values()) <= SHARD_BYTES:
        main, first = tensors, {}
    if sum(t.nbytes for t in main.values()) > SHARD_BYTES:
        raise SystemExit(f"{name}'s optimizer second moments alone exceed {SHARD_BYTES / 2**20:.0f} MiB: too big to come back")
    meta = {"step": json.dumps(ck["step"]), "config": json.dumps(ck["config"]),
            "param_groups": json.dumps(ck["opt"]["param_groups"])}
    main_path, first_path = _opt_files(out, name)
    written = []
    for path, part in ((first_path, first), (main_path, main)):  # the file resuming checks last
        if not part:
            path.unlink(missing_ok=True)
            continue
        atomic_write_bytes(path, safetensors_bytes(part, metadata=meta))
        written.append(path)
    return written


def _config_dict(name: str, d: dict) -> dict:
    """A config from JSON as the training script's ``cfg.to_dict()`` gives it (tuples, not lists), so
    the scripts' --resume check compares equal."""
    if name == "tokenizer":
        return GeneratorConfig.from_dict({"tokenizer": d, "transformer": TransformerConfig().to_dict()}).tokenizer.to_dict()
    return GeneratorConfig.from_dict({"tokenizer": TokenizerConfig().to_dict(), "transformer": d}).transformer.to_dict()


def restore_checkpoint(out: Path, name: str, ckpt: Path) -> int:
    """Rebuild CKPT_DIR/last.pt from ``out/<name>.safetensors`` and its optimizer files (float32 again);
    returns the step it continues from. Without the .opt-m file the first moment restarts at zero: with
    beta1 = 0.9 the updates then ramp back to full size within ~10 steps."""
    weights = out / f"{name}.safetensors"
    files = [p for p in _opt_files(out, name) if p.is_file()]
    if _opt_files(out, name)[0] not in files:
        raise SystemExit(f"{weights} has no {name}.opt.safetensors beside it (its optimizer state): "
                         f"pass --fresh {name} to train it from scratch")
    step, state, meta = weights_steps(weights), {}, {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
            for key in f.keys():
                i, what = key.split(".", 1)
                t = f.get_tensor(key)
                state.setdefault(int(i), {})[what] = t.reshape(()) if what == "step" else t.float()
        if meta["step"] != step:
            raise SystemExit(f"{path} (step {meta['step']}) does not belong to {weights} (step {step}): "
                             "the folder mixes two sittings")
    if any("exp_avg" not in s for s in state.values()):
        print(f"[{name}] no first moments (.opt-m): AdamW's exp_avg restarts at zero", flush=True)
        for s in state.values():
            s.setdefault("exp_avg", torch.zeros_like(s["exp_avg_sq"]))
    model = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    save_checkpoint(ckpt, {"model": model, "opt": {"state": state, "param_groups": meta["param_groups"]},
                           "config": _config_dict(name, meta["config"]), "step": step})
    return step


# ---- the model card's figures for these weights -------------------------------------------------
def measure_card(tokenizer: Path, generator: Path, num_prompts: int, num_real: int, latency_repeats: int,
                 device: str, grid: Path) -> dict:
    """``embedded.model_card.measure``'s figures (same held-out data, prompts, seeds, CFG, schedules) for these
    files, on ``device``; also writes the sample grid PNG."""
    from embedded.model_card import measure, save_grid

    card, images = measure(num_prompts, num_real, latency_repeats, tokenizer_path=tokenizer, generator_path=generator,
                           device=device)
    save_grid(images, grid)
    return card


# ---- training stages ----------------------------------------------------------------------------
def _resume_point(args, name: str) -> int | None:
    """The step a returned model stopped at (None: train from scratch)."""
    weights = args.out / f"{name}.safetensors"
    if name in args.fresh or not weights.is_file():
        return None
    return weights_steps(weights)


def _train(args, state: dict, name: str, script_main, extra: list[str]) -> None:
    """Run one training script from scratch or from the returned checkpoint, then export its optimizer."""
    steps, budget = getattr(args, f"{name}_steps"), getattr(args, f"{name}_budget_s")
    weights, ckpt_dir = args.out / f"{name}.safetensors", args.work / f"ck_{name}"
    done = _resume_point(args, name)
    if done is not None and done >= steps:
        print(f"[{name}] already at {done} >= --{name}-steps {steps} steps: skipped", flush=True)
        return
    argv = ["--device", args.device, "--workers", "0", "--steps", str(steps), "--seed", str(args.seed),
            "--batch-size", str(getattr(args, f"{name}_batch")), "--out", str(weights), "--ckpt-dir", str(ckpt_dir),
            "--ckpt-every", str(args.ckpt_every)] + extra
    if budget is not None:
        argv += ["--time-budget-s", str(budget)]
    start = 0
    if done is not None:
        start = restore_checkpoint(args.out, name, ckpt_dir / "last.pt")
        argv.append("--resume")
    print(f"[{name}] steps {start} -> {steps}" + (f", budget {budget:.0f}s" if budget else ""), flush=True)
    t0 = time.time()
    script_main(argv)
    wall = time.time() - t0
    export_optimizer(ckpt_dir / "last.pt", args.out, name)
    end = weights_steps(weights)
    entry = state.setdefault(name, {"sittings": []})
    if done is None:
        entry["sittings"] = []
    entry["steps"] = end
    entry["sittings"].append({"from_step": start, "to_step": end, "wall_s": round(wall, 1), "budget_s": budget,
                              "steps_per_s": round((end - start) / max(wall, 1e-9), 3)})
    print(f"[{name}] {start} -> {end} steps in {wall:.0f}s", flush=True)


def stage_tokenizer(args, state: dict) -> None:
    from scripts import train_tokenizer
    from scripts.train_generator import file_sha256

    pool = ensure_pool(args)
    shape = ["--scales", ",".join(map(str, args.scales)), "--channel-mult", ",".join(map(str, args.channel_mult))]
    _train(args, state, "tokenizer", train_tokenizer.main, ["--pool", str(pool)] + shape)
    weights = args.out / "tokenizer.safetensors"
    state.setdefault("tokenizer", {}).update(sha256=file_sha256(weights), psnr_db=read_metadata(weights).get("psnr_db"))


def stage_generator(args, state: dict) -> None:
    from scripts import train_generator

    tokenizer = args.out / "tokenizer.safetensors"
    sha = train_generator.file_sha256(tokenizer)
    trained_on = state.get("generator", {}).get("tokenizer_sha256")
    if _resume_point(args, "generator") is not None and trained_on not in (None, sha):
        raise SystemExit(f"the returned generator was trained on tokenizer {trained_on[:12]}..., the tokenizer is "
                         f"now {sha[:12]}... (retrained?): pass --fresh generator to train it from scratch")
    codes = ensure_codes(args, tokenizer, args.device)
    arch = []
    if args.generator_arch is not None:
        arch = [x for flag, v in zip(("--width", "--depth", "--heads"), args.generator_arch) for x in (flag, str(v))]
    _train(args, state, "generator", train_generator.main,
           ["--codes", str(codes), "--tokenizer", str(tokenizer)] + arch)
    state.setdefault("generator", {}).update(tokenizer_sha256=sha, final_loss=read_metadata(args.out / "generator.safetensors").get("final_loss"))


def stage_card(args, state: dict) -> None:
    card = measure_card(args.out / "tokenizer.safetensors", args.out / "generator.safetensors",
                        num_prompts=args.card_prompts, num_real=args.card_real,
                        latency_repeats=args.card_latency_repeats, device=args.card_device,
                        grid=args.out / "samples.png")
    state["card"] = card
    width = max(map(len, card))
    for k, v in card.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}", flush=True)


# ---- what comes back ----------------------------------------------------------------------------
def return_problems(out: Path) -> list[str]:
    """Why some of ``out`` would not come back from the machine (empty: all of it will)."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    problems = [f"{len(files)} files, at most {RETURN_MAX_FILES} come back"] if len(files) > RETURN_MAX_FILES else []
    total = sum(p.stat().st_size for p in files)
    if total > RETURN_MAX_TOTAL:
        problems.append(f"{total / 2**20:.1f} MiB in all, at most {RETURN_MAX_TOTAL // 2**20} MiB come back")
    for p in files:
        rel = p.relative_to(out)
        if p.stat().st_size > RETURN_MAX_FILE:
            problems.append(f"{rel}: {p.stat().st_size / 2**20:.1f} MiB, over {RETURN_MAX_FILE // 2**20} MiB")
        if len(rel.parts) > 3 or not all(RETURN_NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: too deep or a name outside letters, digits, '.', '_' and '-'")
    return problems


def check_inputs(args) -> None:
    """Refuse, before any training, a sitting that would stop half-way for want of an input file."""
    stages = set(args.stages)
    if stages & {"codes", "generator", "card"} and "tokenizer" not in stages and not (args.out / "tokenizer.safetensors").is_file():
        raise SystemExit(f"stage(s) {','.join(sorted(stages & {'codes', 'generator', 'card'}))} need a tokenizer: add "
                         "'tokenizer' to --stages or --resume-from a folder holding tokenizer.safetensors")
    if "card" in stages and "generator" not in stages and not (args.out / "generator.safetensors").is_file():
        raise SystemExit("stage card needs a generator: add 'generator' to --stages or --resume-from a folder holding one")
    tokenizer_trains = "tokenizer" in stages and (_resume_point(args, "tokenizer") or 0) < args.tokenizer_steps
    if tokenizer_trains and "generator" in stages and _resume_point(args, "generator") is not None:
        raise SystemExit("--stages trains the tokenizer further, but the returned generator was trained on the old one: "
                         "pass --fresh generator, or leave tokenizer out of --stages")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.vendor_to is not None:
        for path in vendor_open_clip(args.vendor_to):
            print(f"copied {path}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if STAGES_NEEDING_OPEN_CLIP & set(args.stages):
        ensure_open_clip(args.vendor_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    state = copy_returned(args.resume_from, args.out) if args.resume_from is not None else {}
    state["shape"] = {"scales": list(args.scales), "channel_mult": list(args.channel_mult)}
    state["pool"] = {"n": args.pool_n, "seed": args.pool_seed}
    check_inputs(args)
    t0 = time.time()
    run = {"render": lambda: ensure_pool(args), "tokenizer": lambda: stage_tokenizer(args, state),
           "codes": lambda: ensure_codes(args, args.out / "tokenizer.safetensors", args.device),
           "generator": lambda: stage_generator(args, state), "card": lambda: stage_card(args, state)}
    for stage in STAGES:
        if stage in args.stages:
            run[stage]()
            write_state(args.out, state)  # after every stage: a sitting cut short still returns its progress
            print(f"[{stage}] done at {time.time() - t0:.0f}s", flush=True)
    for p in sorted(args.out.iterdir()):
        print(f"  {p.name:<34} {p.stat().st_size / 2**20:8.2f} MiB")
    problems = return_problems(args.out)
    for p in problems:
        print(f"WILL NOT COME BACK: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
