"""Render a pool of domain samples and pass every image through the shipped VQ tokenizer (encode, quantise
at every scale, decode): the judge's training data for images that went through a tokenizer.

    python scripts/reconstruct_pool.py --n 12000 --seed 9 --out recon_a.npz      # resumable: rerun to continue

Writes an .npz in ``scripts/render_pool.py``'s layout (``images`` uint8 (N, 64, 64, 3), ``captions``)
plus ``renders`` (the clean images the reconstructions came from), so ``train_judge.py --pool`` reads
it. Labels stay the renders' captions: a *full* reconstruction is the render's scene as well as the
tokenizer can express it. Never pass pruned or truncated code maps here: with the render's labels the
judge would learn to guess from priors and shrink the measured cost of pruning.

Progress is saved atomically every ``--chunk`` images to ``OUT.partial.npz``, so a kill loses at most one
chunk. The tokenizer costs ~50 ms per image on one core of a 2-core CPU (2026-12-01, torch 2.14.1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedded.loaders import load_tokenizer  # noqa: E402
from embedded.training import render_pool  # noqa: E402
from generator.images import to_uint8  # noqa: E402


def reconstruct(tokenizer, images_uint8_NHW3: np.ndarray, batch: int = 100) -> np.ndarray:
    """Full multi-scale VQ reconstructions (uint8, same shape) of uint8 images."""
    x = torch.from_numpy(images_uint8_NHW3).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = [to_uint8(tokenizer.decode(tokenizer.indices_to_f_hat(tokenizer.encode_indices(c)))) for c in x.split(batch)]
    return np.concatenate(out)


def _save(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12_000, help="images to render and reconstruct")
    ap.add_argument("--seed", type=int, default=9, help="render_pool seed (pools use seed * 1_000_003 + i)")
    ap.add_argument("--chunk", type=int, default=500, help="images between saves")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    for name in ("n", "chunk"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    t0 = time.time()
    renders, captions = render_pool(args.n, args.seed, 1)
    partial = args.out.with_name(args.out.stem + ".partial.npz")
    done = np.load(partial)["images"] if partial.exists() else np.zeros((0, *renders.shape[1:]), np.uint8)
    if len(done) > args.n:
        ap.error(f"{partial} holds {len(done)} images, more than --n {args.n}: remove it or raise --n")
    tokenizer = load_tokenizer()
    while len(done) < args.n:
        chunk = renders[len(done):len(done) + args.chunk]
        done = np.concatenate([done, reconstruct(tokenizer, chunk)])
        _save(partial, images=done)
        rate = (time.time() - t0) / len(done)
        print(f"{len(done):,}/{args.n:,} reconstructed, ETA {rate * (args.n - len(done)) / 60:.1f} min", flush=True)
    _save(args.out, images=done, captions=np.asarray(captions), renders=renders)
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out}: {args.n} reconstructions in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
