"""Train the small open_clip CLIP contrastively on the procedural domain.

    python scripts/train_clip.py                      # GPU if available
    python scripts/train_clip.py --pool /tmp/pool.npz # sample from a pre-rendered pool

Writes weights/clip_tiny.safetensors (float16) and prints R@1 on held-out real images (true
caption vs 31 random captions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewards.clip_model import (EMBEDDED_CLIP_WEIGHTS, clip_retrieval_r1, create_embedded_clip,  # noqa: E402
                                  images_to_clip_input)
from domain import sample_batch  # noqa: E402
from embedded.training import (add_training_args, checkpoint_and_check_time, init_or_resume, ImagePool, cosine_lr, domain_loader, elapsed_fraction,  # noqa: E402
                                pick_device, to_float_images)
from generator.weights_io import save_module  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(ap, steps=6000, batch_size=512, lr=1e-3, workers=4, out=EMBEDDED_CLIP_WEIGHTS,
                      ckpt_dir=Path("checkpoints/clip"))
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    model, _, tokenizer = create_embedded_clip(pretrained=None, device=str(device))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.1)
    start = init_or_resume(model, opt, args)
    pool = ImagePool(args.pool, device, args.seed + start) if args.pool else None
    loader = None if pool else iter(domain_loader(args.batch_size, 30_000 + args.seed, args.workers, start_index=start))
    if pool:
        pool_tokens = tokenizer(pool.captions).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0 = time.time()
    step = start
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="clip", mininterval=5)
    for step in bar:
        if pool:
            imgs, idx = pool.batch(args.batch_size)
            tokens = pool_tokens[idx.to(device)]
            caps = [pool.captions[i] for i in idx.tolist()]
        else:
            imgs, caps = next(loader)
            tokens = tokenizer(caps).to(device)
        x = images_to_clip_input(to_float_images(imgs, device), model)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, 200, elapsed_fraction(t0, args.time_budget_s))
        with amp:
            img_f, txt_f, logit_scale = model(x, tokens)[:3]
        logits = logit_scale.float() * img_f.float() @ txt_f.float().t()
        # identical captions in a batch are not negatives of each other
        cap_ids = {c: i for i, c in enumerate(dict.fromkeys(caps))}
        ids = torch.tensor([cap_ids[c] for c in caps], device=device)
        same = ids[:, None] == ids[None, :]
        target = same.float() / same.float().sum(1, keepdim=True)
        loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.t().log_softmax(1)).sum(1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if checkpoint_and_check_time(step, args, t0, lambda: {"model": model.state_dict(), "opt": opt.state_dict()}):
            break
    model.eval()
    imgs, caps = sample_batch(424_242, 1024)
    r1 = clip_retrieval_r1(model, tokenizer, imgs, caps, device=str(device))
    save_module(model, args.out, {"clip_model": "varprune-clip-tiny", "r1_real": r1, "steps": step + 1})
    print(f"held-out R@1 (vs 31 random captions) {r1:.3f}; wrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
