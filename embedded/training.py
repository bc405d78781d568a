"""Shared pieces of the scripts that train the embedded models: data, device, resumable checkpoints."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class DomainBatches(IterableDataset):
    """Endless batches of (images uint8 (n, H, W, 3), captions) from the procedural domain.

    Batch i of worker w is ``sample_batch(seed=base_seed + 1_000_003 * w + i)``; with a resumed
    ``start_index`` the stream continues where it stopped (per worker).
    """

    def __init__(self, batch_size: int, base_seed: int, start_index: int = 0, size: int = 64) -> None:
        self.batch_size, self.base_seed, self.start_index, self.size = batch_size, base_seed, start_index, size

    def __iter__(self):
        from domain import sample_batch

        info = get_worker_info()
        wid = 0 if info is None else info.id
        i = self.start_index
        while True:
            imgs, caps = sample_batch(self.base_seed + 1_000_003 * wid + i, self.batch_size, self.size)
            yield torch.from_numpy(np.ascontiguousarray(imgs)), list(caps)
            i += 1


def domain_loader(batch_size: int, base_seed: int, workers: int, start_index: int = 0) -> DataLoader:
    return DataLoader(DomainBatches(batch_size, base_seed, start_index), batch_size=None, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def to_float_images(imgs_BHW3: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] on ``device``."""
    return imgs_BHW3.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def elapsed_fraction(t0: float, budget_s: float | None) -> float:
    import time

    return 0.0 if not budget_s else (time.time() - t0) / budget_s


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def cosine_lr(step: int, total: int, base: float, warmup: int, time_fraction: float = 0.0) -> float:
    """Warm-up then cosine decay to 10%; progress is the larger of the step and time fractions, so
    a run stopped by its time budget still ends with a decayed learning rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = max((step - warmup) / max(1, total - warmup), time_fraction)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temp file then rename: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"--resume: no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def append_curve(ckpt_dir: Path, step: int, seconds: float, **values: float) -> None:
    """One learning-curve row (step, seconds since this sitting began, the values) appended to
    CKPT_DIR/curve.tsv: what a projection of later sittings reads (a resumed sitting appends)."""
    path = Path(ckpt_dir) / "curve.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a") as f:
        if new:
            f.write("\t".join(["step", "seconds", *values]) + "\n")
        f.write("\t".join([str(step), f"{seconds:.1f}", *(f"{v:.5g}" for v in values.values())]) + "\n")


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def render_pool(n: int, seed: int, workers: int, chunk: int = 500) -> tuple[np.ndarray, list[str]]:
    """Pre-render n domain samples with a process pool (training then samples from memory)."""
    from concurrent.futures import ProcessPoolExecutor

    from domain import sample_batch

    seeds = [seed * 1_000_003 + i for i in range((n + chunk - 1) // chunk)]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        parts = list(ex.map(sample_batch, seeds, [chunk] * len(seeds)))
    imgs = np.concatenate([p[0] for p in parts])[:n]
    caps = [c for p in parts for c in p[1]][:n]
    return imgs, caps


class ImagePool:
    """A pre-rendered pool (``scripts/render_pool.py``) held on the training device; random batches."""

    def __init__(self, path: str | Path, device: torch.device, seed: int) -> None:
        data = np.load(path, allow_pickle=False)
        self.images = torch.from_numpy(data["images"]).to(device)
        self.captions = [str(c) for c in data["captions"]]
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (n, H, W, 3) on the device, pool indices (n,) on the CPU)."""
        idx = torch.randint(len(self.captions), (n,), generator=self.gen)
        return self.images[idx.to(self.images.device)], idx


def add_training_args(ap, *, steps: int, batch_size: int, lr: float, workers: int, out: Path, ckpt_dir: Path) -> None:
    """The options every weight-training script shares (defaults differ per model)."""
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--device", default="auto", help="auto = CUDA if available, else CPU")
    ap.add_argument("--workers", type=int, default=workers, help="data-rendering processes (0 = in the main process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out, help="where the final float16 safetensors go")
    ap.add_argument("--ckpt-dir", type=Path, default=ckpt_dir)
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--resume", action="store_true", help="continue from CKPT_DIR/last.pt")
    ap.add_argument("--pool", type=Path, default=None, help="sample batches from a pre-rendered pool (scripts/render_pool.py)")
    ap.add_argument("--init", type=Path, default=None, help="start from these safetensors weights (fine-tuning)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="stop (and save) after this many seconds; the LR schedule decays by then")


def checkpoint_and_check_time(step: int, args, t0: float, payload) -> bool:
    """Save CKPT_DIR/last.pt when due (every --ckpt-every steps, at the last step, or out of time);
    True when the time budget is spent and training should stop. ``payload()`` builds the checkpoint."""
    out_of_time = elapsed_fraction(t0, args.time_budget_s) >= 1.0
    if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps or out_of_time:
        save_checkpoint(args.ckpt_dir / "last.pt", {**payload(), "step": step + 1})
    if out_of_time:
        print(f"time budget reached at step {step + 1}")
    return out_of_time


def init_or_resume(model: torch.nn.Module, opt: torch.optim.Optimizer, args, config: dict | None = None) -> int:
    """Apply ``--init`` (fine-tune from safetensors weights) and ``--resume`` (CKPT_DIR/last.pt, model and
    optimiser); returns the step to start from. ``config`` (the model's config as a dict, also saved in
    the checkpoint payload) must equal the checkpoint's: a tokenizer resumed with other ``--scales`` has
    the same parameter shapes and would otherwise silently continue on another schedule."""
    from generator.weights_io import load_module

    if args.init is not None:
        load_module(model, args.init)
    if not args.resume:
        return 0
    path = args.ckpt_dir / "last.pt"
    ck = load_checkpoint(path)
    saved = ck.get("config")
    if config is not None and saved is not None and saved != config:
        diff = {k: (saved.get(k), config.get(k)) for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)}
        raise SystemExit(f"--resume: checkpoint {path} was trained with another model config "
                         f"(field: (checkpoint, now)) {diff}; pass the same options or another --ckpt-dir")
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise SystemExit(f"--resume: checkpoint {path} does not fit this model ({str(e).splitlines()[0]}); "
                         "pass the options it was trained with or another --ckpt-dir") from None
    opt.load_state_dict(ck["opt"])
    return int(ck["step"])
