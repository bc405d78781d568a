"""Train the text-conditional next-scale transformer on the procedural domain (teacher forcing).

Needs weights/tokenizer.safetensors (scripts/train_tokenizer.py). Captions are replaced by the
empty prompt with probability --cfg-dropout so the model also learns the unconditional branch
used by classifier-free guidance.

    python scripts/train_generator.py             # GPU if available
    python scripts/train_generator.py --resume    # continue from checkpoints/generator/last.pt
    python scripts/train_generator.py --pool pool.npz --write-codes codes.npz   # tokenise a pool once
    python scripts/train_generator.py --codes codes.npz                         # ...and train from it

With ``--codes`` the frozen tokenizer's encoder never runs during training: the code indices were
computed once (``write_codes_file``) from the same pool with the same tokenizer file (its SHA-256 is
in the codes file and checked), so the targets are the ones re-encoding each batch would give.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedded.config import TransformerConfig  # noqa: E402
from embedded.loaders import GENERATOR_WEIGHTS, TOKENIZER_WEIGHTS, load_tokenizer  # noqa: E402
from embedded.text import tokenize  # noqa: E402
from embedded.tokenizer import MultiScaleVQTokenizer  # noqa: E402
from embedded.training import (add_training_args, append_curve, checkpoint_and_check_time, init_or_resume, ImagePool, cosine_lr, elapsed_fraction, domain_loader, pick_device,  # noqa: E402
                                to_float_images)
from embedded.transformer import NextScaleTransformer  # noqa: E402
from generator.weights_io import atomic_write_bytes, npz_bytes, save_module  # noqa: E402

#: a batch for teacher forcing: (BPE ids (B, T), valid mask (B, T), per-scale code maps [(B, p_k, p_k)])
Batch = tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]


def flat_codes(idx_list: list[torch.Tensor]) -> torch.Tensor:
    """Per-scale code maps [(B, p_k, p_k)] -> (B, sum p_k^2), coarse scale first (the target order)."""
    return torch.cat([i.flatten(1) for i in idx_list], dim=1)


def split_codes(codes_BT: torch.Tensor, scales: tuple[int, ...]) -> list[torch.Tensor]:
    """The inverse of ``flat_codes``: (B, sum p_k^2) -> [(B, p_k, p_k)] as int64."""
    parts = torch.split(codes_BT.long(), [p * p for p in scales], dim=1)
    return [part.reshape(-1, p, p) for part, p in zip(parts, scales)]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def write_codes_file(tokenizer_path: str | Path, pool_path: str | Path, out_path: str | Path,
                     device: torch.device, chunk: int = 512) -> int:
    """Encode every image of a pool (scripts/render_pool.py) once with the frozen tokenizer and write
    ``codes`` (N, tokens) int16, the pool's ``captions``, ``scales`` and ``tokenizer_sha256`` to an .npz,
    atomically; returns N. ``chunk``: images per encoder call (float32, as the per-batch path)."""
    tok = load_tokenizer(tokenizer_path).to(device).eval()
    if tok.cfg.codebook_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook_size {tok.cfg.codebook_size} does not fit the codes file's int16")
    data = np.load(pool_path, allow_pickle=False)
    images, captions = data["images"], data["captions"]
    codes = np.empty((len(images), sum(p * p for p in tok.cfg.scales)), dtype=np.int16)
    for i in range(0, len(images), chunk):
        x = to_float_images(torch.from_numpy(images[i:i + chunk]), device)
        codes[i:i + chunk] = flat_codes(tok.encode_indices(x)).cpu().numpy()
    atomic_write_bytes(out_path, npz_bytes(codes=codes, captions=captions, scales=np.asarray(tok.cfg.scales),
                                           tokenizer_sha256=np.asarray(file_sha256(tokenizer_path))))
    return len(images)


class CodesPool:
    """A codes file (``write_codes_file``) held on the training device; random batches drawn exactly as
    ``ImagePool.batch`` draws them for the same seed. Refuses a file made by another tokenizer."""

    def __init__(self, path: str | Path, device: torch.device, seed: int, tokenizer_path: str | Path,
                 scales: tuple[int, ...]) -> None:
        data = np.load(path, allow_pickle=False)
        made_by, now = str(data["tokenizer_sha256"]), file_sha256(tokenizer_path)
        if made_by != now:
            raise SystemExit(f"--codes {path} was made by another tokenizer (SHA-256 {made_by[:12]}...) than "
                             f"--tokenizer {tokenizer_path} ({now[:12]}...); remake it with --write-codes")
        if tuple(int(s) for s in data["scales"]) != tuple(scales):
            raise SystemExit(f"--codes {path} has scales {tuple(data['scales'])}, the tokenizer {tuple(scales)}")
        self.codes = torch.from_numpy(data["codes"]).to(device)
        self.captions = [str(c) for c in data["captions"]]
        self.scales = tuple(scales)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per-scale code maps [(n, p_k, p_k)] int64 on the device, pool indices (n,) on the CPU)."""
        idx = torch.randint(len(self.captions), (n,), generator=self.gen)
        return split_codes(self.codes[idx.to(self.codes.device)], self.scales), idx


def make_batches(tok: MultiScaleVQTokenizer, source: CodesPool | ImagePool | None, loader, batch_size: int,
                 device: torch.device, text_context: int) -> Callable[[], Batch]:
    """A function giving the next training batch from a codes file, a pool (re-encoded every batch) or
    the on-the-fly ``loader``; captions of a codes file or pool are tokenised once, here."""
    if source is not None:
        ids_NT, mask_NT = (t.to(device) for t in tokenize(source.captions, text_context))

    def next_batch() -> Batch:
        if isinstance(source, CodesPool):
            idx_list, idx = source.batch(batch_size)
            return ids_NT[idx.to(device)], mask_NT[idx.to(device)], idx_list
        if source is not None:
            imgs, idx = source.batch(batch_size)
            ids, mask = ids_NT[idx.to(device)], mask_NT[idx.to(device)]
        else:
            imgs, caps = next(loader)
            ids, mask = (t.to(device) for t in tokenize(caps, text_context))
        return ids, mask, tok.encode_indices(to_float_images(imgs, device))

    return next_batch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(ap, steps=8000, batch_size=256, lr=1e-3, workers=6, out=GENERATOR_WEIGHTS,
                      ckpt_dir=Path("checkpoints/generator"))
    ap.add_argument("--cfg-dropout", type=float, default=0.1)
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER_WEIGHTS)
    ap.add_argument("--codes", type=Path, default=None,
                    help="train from this codes file (--write-codes) instead of encoding every batch")
    ap.add_argument("--write-codes", type=Path, default=None, metavar="FILE",
                    help="encode --pool once with --tokenizer into FILE, then exit (no training)")
    default = TransformerConfig()
    ap.add_argument("--width", type=int, default=default.width, help="transformer width (a smaller model: 128)")
    ap.add_argument("--depth", type=int, default=default.depth, help="transformer blocks")
    ap.add_argument("--heads", type=int, default=default.num_heads, help="attention heads (must divide --width)")
    args = ap.parse_args(argv)
    for flag in ("width", "depth", "heads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.width % args.heads:
        ap.error(f"--width {args.width} is not divisible by --heads {args.heads}")
    if args.codes is not None and args.pool is not None:
        ap.error(f"--codes {args.codes} and --pool {args.pool}: give one (the codes file holds its pool's captions)")
    if args.codes is not None and not args.codes.is_file():
        ap.error(f"--codes {args.codes}: no such file (make one with --pool FILE --write-codes {args.codes})")
    if args.write_codes is not None and args.pool is None:
        ap.error(f"--write-codes {args.write_codes} needs --pool FILE: the images to encode")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    if args.write_codes is not None:
        t0 = time.time()
        n = write_codes_file(args.tokenizer, args.pool, args.write_codes, device)
        print(f"encoded {n} images in {time.time() - t0:.1f}s -> {args.write_codes}")
        return
    tok = load_tokenizer(args.tokenizer).to(device).eval()
    for p in tok.parameters():
        p.requires_grad_(False)
    cfg = TransformerConfig(width=args.width, depth=args.depth, num_heads=args.heads, scales=tok.cfg.scales,
                            codebook_size=tok.cfg.codebook_size, latent_channels=tok.cfg.latent_channels)
    model = NextScaleTransformer(cfg).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    config = cfg.to_dict()  # checked on --resume against the one saved in every checkpoint
    start = init_or_resume(model, opt, args, config=config)
    gen = torch.Generator().manual_seed(args.seed + start)
    if args.codes is not None:
        source = CodesPool(args.codes, device, args.seed + start, args.tokenizer, tok.cfg.scales)
    else:
        source = ImagePool(args.pool, device, args.seed + start) if args.pool else None
    loader = None if source else iter(domain_loader(args.batch_size, 20_000 + args.seed, args.workers, start_index=start))
    next_batch = make_batches(tok, source, loader, args.batch_size, device, cfg.text_context)
    empty_ids, empty_mask = (t.to(device) for t in tokenize([""], cfg.text_context))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="generator", mininterval=5)
    for step in bar:
        with torch.no_grad():
            ids, mask, idx_list = next_batch()
            inputs = tok.teacher_forcing_inputs(idx_list)
        # classifier-free guidance: some rows see the empty prompt
        drop = (torch.rand(len(ids), generator=gen) < args.cfg_dropout).to(device)[:, None]
        ids = torch.where(drop, empty_ids, ids)
        mask = torch.where(drop, empty_mask, mask)
        target = flat_codes(idx_list)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, 300, elapsed_fraction(t0, args.time_budget_s))
        with amp:
            logits = model(ids, mask, inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                last = cfg.scales[-1] ** 2
                acc_last = (logits[:, -last:].argmax(-1) == target[:, -last:]).float().mean()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc_last=f"{acc_last.item():.3f}")
            append_curve(args.ckpt_dir, step, time.time() - t0, loss=loss.item(), acc_last=acc_last.item())
        if checkpoint_and_check_time(step, args, t0, lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "config": config}):
            break
    save_module(model, args.out, {"transformer": cfg.to_dict(), "steps": step + 1, "final_loss": loss.item()})
    print(f"final loss {loss.item():.3f}; wrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
