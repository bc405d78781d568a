"""Train the multi-scale residual VQ tokenizer on the procedural domain.

    python scripts/train_tokenizer.py                    # GPU if available, else CPU (slow)
    python scripts/train_tokenizer.py --resume           # continue from checkpoints/tokenizer/last.pt
    python scripts/train_tokenizer.py --scales 1,2,3,4,5,6,8,10,13,16 --channel-mult 1,4,8 \
        --out weights_deep/tokenizer.safetensors      # a 16x16 latent with 10 scales (GPU advised)

The scale schedule and latent size live in the weights' header: train_generator.py and every loader
pick them up from there, so a differently shaped tokenizer needs no code change.

Writes weights/tokenizer.safetensors (float16, config + PSNR in the header).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedded.cli import add_model_shape_args, model_shape_config  # noqa: E402
from embedded.config import TokenizerConfig  # noqa: E402
from domain import sample_batch  # noqa: E402
from embedded.loaders import TOKENIZER_WEIGHTS  # noqa: E402
from embedded.tokenizer import MultiScaleVQTokenizer  # noqa: E402
from embedded.training import (add_training_args, append_curve, checkpoint_and_check_time, init_or_resume, ImagePool, cosine_lr, elapsed_fraction, domain_loader, pick_device, psnr_db,  # noqa: E402
                                to_float_images)
from generator.weights_io import save_module  # noqa: E402


@torch.no_grad()
def restart_dead_codes(tok: MultiScaleVQTokenizer, f_BChw: torch.Tensor, usage_V: torch.Tensor) -> int:
    """Re-seed codebook entries unused since the last restart with residuals the batch produced."""
    dead = (usage_V == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    residuals = []
    f_rest = f_BChw.float()
    for p in tok.cfg.scales:
        z = F.interpolate(f_rest, size=(p, p), mode="area") if p != tok.cfg.latent_size else f_rest
        residuals.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        f_rest = f_rest - tok.embedding_contribution(tok.codebook(tok.nearest_codes(z)).permute(0, 3, 1, 2))
    pool = torch.cat(residuals)
    pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device)
    tok.codebook.weight.data[dead] = pool[pick] + 1e-3 * torch.randn_like(pool[pick])
    return int(dead.numel())


@torch.no_grad()
def evaluate(tok: MultiScaleVQTokenizer, device: torch.device, n: int = 512) -> float:
    tok.eval()
    imgs, _ = sample_batch(987_654_321, n)
    x = to_float_images(torch.from_numpy(imgs), device)
    rec = tok.decode(tok.indices_to_f_hat(tok.encode_indices(x)))
    tok.train()
    return float(psnr_db(rec, x).mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(ap, steps=6000, batch_size=128, lr=4e-4, workers=4, out=TOKENIZER_WEIGHTS,
                      ckpt_dir=Path("checkpoints/tokenizer"))
    ap.add_argument("--restart-every", type=int, default=200)
    add_model_shape_args(ap)
    args = ap.parse_args(argv)
    shape = model_shape_config(ap, args)
    cfg = shape.tokenizer if shape is not None else TokenizerConfig()

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    tok = MultiScaleVQTokenizer(cfg).to(device).train()
    opt = torch.optim.AdamW(tok.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    config = cfg.to_dict()  # checked on --resume against the one saved in every checkpoint
    start = init_or_resume(tok, opt, args, config=config)
    usage = torch.zeros(cfg.codebook_size, device=device)
    pool = ImagePool(args.pool, device, args.seed + start) if args.pool else None
    loader = None if pool else iter(domain_loader(args.batch_size, 10_000 + args.seed, args.workers, start_index=start))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="tokenizer", mininterval=5)
    for step in bar:
        imgs = pool.batch(args.batch_size)[0] if pool else next(loader)[0]
        x = to_float_images(imgs, device)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, 200, elapsed_fraction(t0, args.time_budget_s))
        with amp:
            f = tok.encode_latent(x)
        f = f.float()
        f_hat, idx_list, vq_loss = tok.quantize(f)
        with amp:
            rec = tok.decoder(f_hat)
        rec = rec.float()
        target = x * 2 - 1
        loss = F.mse_loss(rec, target) + 0.2 * (rec - target).abs().mean() + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        for idx in idx_list:
            usage += torch.bincount(idx.flatten(), minlength=cfg.codebook_size)
        if (step + 1) % args.restart_every == 0 and step < 0.8 * args.steps:
            restart_dead_codes(tok, f.detach(), usage)
            usage.zero_()
        if step % 50 == 0:
            psnr = float(psnr_db((rec.detach() * 0.5 + 0.5).clamp(0, 1), x).mean())
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.2f}")
            append_curve(args.ckpt_dir, step, time.time() - t0, loss=loss.item(), psnr=psnr)
        if checkpoint_and_check_time(step, args, t0, lambda: {"model": tok.state_dict(), "opt": opt.state_dict(), "config": config}):
            break
    psnr = evaluate(tok, device)
    save_module(tok, args.out, {"tokenizer": cfg.to_dict(), "psnr_db": psnr, "steps": step + 1})
    print(f"held-out PSNR {psnr:.2f} dB; wrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
