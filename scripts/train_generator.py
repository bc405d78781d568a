"""Train the text-conditional next-scale transformer on the procedural domain (teacher forcing).

Needs weights/tokenizer.safetensors (scripts/train_tokenizer.py). Captions are replaced by the
empty prompt with probability --cfg-dropout so the model also learns the unconditional branch
used by classifier-free guidance.

    python scripts/train_generator.py             # GPU if available
    python scripts/train_generator.py --resume    # continue from checkpoints/generator/last.pt
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

from embedded.config import TransformerConfig  # noqa: E402
from embedded.loaders import GENERATOR_WEIGHTS, TOKENIZER_WEIGHTS, load_tokenizer  # noqa: E402
from embedded.text import tokenize  # noqa: E402
from embedded.training import (add_training_args, checkpoint_and_check_time, init_or_resume, ImagePool, cosine_lr, elapsed_fraction, domain_loader, pick_device,  # noqa: E402
                                to_float_images)
from embedded.transformer import NextScaleTransformer  # noqa: E402
from generator.weights_io import save_module  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(ap, steps=8000, batch_size=256, lr=1e-3, workers=6, out=GENERATOR_WEIGHTS,
                      ckpt_dir=Path("checkpoints/generator"))
    ap.add_argument("--cfg-dropout", type=float, default=0.1)
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER_WEIGHTS)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    tok = load_tokenizer(args.tokenizer).to(device).eval()
    for p in tok.parameters():
        p.requires_grad_(False)
    cfg = TransformerConfig(codebook_size=tok.cfg.codebook_size, latent_channels=tok.cfg.latent_channels,
                            scales=tok.cfg.scales)
    model = NextScaleTransformer(cfg).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    config = cfg.to_dict()  # checked on --resume against the one saved in every checkpoint
    start = init_or_resume(model, opt, args, config=config)
    gen = torch.Generator().manual_seed(args.seed + start)
    pool = ImagePool(args.pool, device, args.seed + start) if args.pool else None
    loader = None if pool else iter(domain_loader(args.batch_size, 20_000 + args.seed, args.workers, start_index=start))
    if pool:  # tokenise every caption once
        pool_ids, pool_mask = (t.to(device) for t in tokenize(pool.captions, cfg.text_context))
    empty_ids, empty_mask = (t.to(device) for t in tokenize([""], cfg.text_context))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="generator", mininterval=5)
    for step in bar:
        if pool:
            imgs, idx = pool.batch(args.batch_size)
            ids, mask = pool_ids[idx.to(device)], pool_mask[idx.to(device)]
        else:
            imgs, caps = next(loader)
            ids, mask = (t.to(device) for t in tokenize(caps, cfg.text_context))
        # classifier-free guidance: some rows see the empty prompt
        drop = (torch.rand(len(ids), generator=gen) < args.cfg_dropout).to(device)[:, None]
        ids = torch.where(drop, empty_ids, ids)
        mask = torch.where(drop, empty_mask, mask)
        x = to_float_images(imgs, device)
        with torch.no_grad():
            idx_list = tok.encode_indices(x)
            inputs = tok.teacher_forcing_inputs(idx_list)
        target = torch.cat([i.flatten(1) for i in idx_list], dim=1)
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
        if checkpoint_and_check_time(step, args, t0, lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "config": config}):
            break
    save_module(model, args.out, {"transformer": cfg.to_dict(), "steps": step + 1, "final_loss": loss.item()})
    print(f"final loss {loss.item():.3f}; wrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
