"""Train the DomainEval judge (``judge``) on rendered domain scenes and their annotations.

    python scripts/train_judge.py                                   # renders on the fly
    python scripts/render_pool.py --n 60000 --seed 7 --out pool_a.npz    # the shipped weights' data:
    python scripts/render_pool.py --n 60000 --seed 8 --out pool_b.npz    # 120k renders in two pools
    python scripts/train_judge.py --pool pool_a.npz --extra-pool pool_b.npz --threads 1 --time-budget-s 1500

The shipped weights: the last command, 3,981 steps of batch 64 in 1,500 s on a 2-core CPU shared with
four other jobs (load average ~10). ``--degrade 0.5`` (blurred / softened / noised copies, still
renders) is an option for a more blur-tolerant judge; it was tried as a fine-tune but not finished.

Only ``domain`` renders are used (the scene is recovered from each caption with ``parse_caption``),
never a generated image. Writes weights/judge.safetensors (float16; its config, step count and
validation accuracy in the header) and prints the per-attribute accuracy of the written file on
validation renders (a seed no other script uses; the CLI's held-out renders use yet another seed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain import parse_caption, sample_batch  # noqa: E402
from embedded.training import (ImagePool, add_training_args, checkpoint_and_check_time, cosine_lr,  # noqa: E402
                               domain_loader, elapsed_fraction, init_or_resume, pick_device)
from generator.weights_io import save_module  # noqa: E402
from judge import (ATTRIBUTES, JUDGE_WEIGHTS, DomainJudge, JudgeConfig, JudgeNet, attribute_checks,  # noqa: E402
                   images_to_input, judge_loss, scene_targets, score_scene)

TRAIN_SEED = 40_000        # on-the-fly batches: sample_batch(TRAIN_SEED + seed + ..., batch)
VALIDATION_SEED = 612_345_001


def render_accuracy(judge: DomainJudge, images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Pooled fraction of correct checks per attribute, and the mean scene accuracy, of renders vs their captions."""
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    scene = []
    for seen, cap in zip(judge.predict(images), captions):
        want = parse_caption(cap)
        for a, v in attribute_checks(seen, want).items():
            correct[a] += sum(v)
            total[a] += len(v)
        scene.append(score_scene(seen, want).scene_accuracy)
    out = {a: correct[a] / total[a] for a in ATTRIBUTES}
    out["scene"] = float(np.mean(scene))
    return out


def gaussian_blur(x_B3HW: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel (sigma in pixels; 0 = unchanged), reflect padding."""
    if sigma <= 0:
        return x_B3HW
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x_B3HW.dtype, device=x_B3HW.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    B, C, H, W = x_B3HW.shape
    y = torch.nn.functional.pad(x_B3HW.reshape(B * C, 1, H, W), (radius, radius, radius, radius), mode="reflect")
    y = torch.nn.functional.conv2d(torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(B, C, H, W)


BLUR_SIGMAS = (0.0, 0.3, 0.6, 0.9)


def degrade(x_B3HW: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Degrade a random ``fraction`` of the images (in [0, 1]) the way a generator's decoder does, so that
    the judge reads a softer image of a scene as that scene: Gaussian blur with sigma drawn from
    BLUR_SIGMAS px, then the detail above a 2 px blur scaled by U(0.5, 1) (fainter textures and
    background noise), then pixel noise with std ~ U(0, 6) / 255, quantised to 8 bits. Labels stay the
    scene's: these are still renders, never generated images."""
    B = x_B3HW.shape[0]
    u = torch.rand(B, 4, generator=gen)
    idx = torch.nonzero(u[:, 0] < fraction).flatten()
    if idx.numel() == 0:
        return x_B3HW
    y = x_B3HW[idx.to(x_B3HW.device)]
    level = (u[idx, 1] * len(BLUR_SIGMAS)).long().clamp_max(len(BLUR_SIGMAS) - 1)
    for i, sigma in enumerate(BLUR_SIGMAS):
        m = (level == i).to(y.device)
        if sigma > 0 and bool(m.any()):
            y[m] = gaussian_blur(y[m], sigma)
    low = gaussian_blur(y, 2.0)
    y = low + (0.5 + 0.5 * u[idx, 2]).to(y.device)[:, None, None, None] * (y - low)
    noise = torch.randn(y.shape, generator=gen).to(y.device)
    y = (y + noise * (6.0 / 255) * u[idx, 3].to(y.device)[:, None, None, None]).clamp(0, 1).mul(255).round().div(255)
    out = x_B3HW.clone()
    out[idx.to(x_B3HW.device)] = y
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(ap, steps=3000, batch_size=64, lr=3e-3, workers=1, out=JUDGE_WEIGHTS,
                      ckpt_dir=Path("checkpoints/judge"))
    ap.add_argument("--widths", default=",".join(map(str, JudgeConfig().widths)),
                    help="channels of the four conv layers, comma-separated")
    ap.add_argument("--hidden", type=int, default=JudgeConfig().hidden, help="width of the per-cell and background MLPs")
    ap.add_argument("--extra-pool", type=Path, action="append", default=[],
                    help="more pre-rendered pools appended to --pool (repeatable)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 is faster when other jobs share the cores)")
    ap.add_argument("--degrade", type=float, default=0.0,
                    help="fraction of each batch blurred / softened / noised (see degrade(); 0 = clean renders only, "
                         "as the shipped weights were trained)")
    ap.add_argument("--eval-every", type=int, default=100, help="print validation accuracy every N steps (0 = never)")
    ap.add_argument("--eval-n", type=int, default=1000, help="validation renders for the final accuracy")
    args = ap.parse_args(argv)
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
        cfg = JudgeConfig(widths=widths, hidden=args.hidden)
        JudgeNet(cfg)
    except ValueError as e:
        ap.error(f"--widths {args.widths!r}: {e}")
    if not 0.0 <= args.degrade <= 1.0:
        ap.error(f"--degrade must be in [0, 1], got {args.degrade}")
    for name in ("steps", "batch_size", "eval_n", "hidden"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    model = JudgeNet(cfg).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    start = init_or_resume(model, opt, args, cfg.to_dict())
    if args.extra_pool and not args.pool:
        ap.error("--extra-pool needs --pool")
    pool = ImagePool(args.pool, device, args.seed + start) if args.pool else None
    for extra in args.extra_pool:
        more = ImagePool(extra, device, 0)
        pool.images, pool.captions = torch.cat([pool.images, more.images]), pool.captions + more.captions
    pool_scenes = [parse_caption(c) for c in pool.captions] if pool else None
    loader = None if pool else iter(domain_loader(args.batch_size, TRAIN_SEED + args.seed, args.workers, start_index=start))
    val_imgs, val_caps = sample_batch(VALIDATION_SEED, 256) if args.eval_every else (None, None)
    if args.eval_every:  # the same images, every one degraded (fixed draws): how robust the judge is becoming
        val_soft = degrade(images_to_input(val_imgs), 1.0, torch.Generator().manual_seed(0))
        val_soft = val_soft.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    aug_gen = torch.Generator().manual_seed(args.seed * 1_000_003 + start)
    t0 = time.time()
    step = start
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="judge", mininterval=5)
    for step in bar:
        if pool:
            imgs, idx = pool.batch(args.batch_size)
            scenes = [pool_scenes[i] for i in idx.tolist()]
        else:
            imgs, caps = next(loader)
            scenes = [parse_caption(c) for c in caps]
        targets = {k: v.to(device) for k, v in scene_targets(scenes).items()}
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, 50, elapsed_fraction(t0, args.time_budget_s))
        x = images_to_input(imgs, device)
        if args.degrade > 0:
            x = degrade(x, args.degrade, aug_gen)
        loss, parts = judge_loss(model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if args.eval_every and (step + 1) % args.eval_every == 0:
            acc = render_accuracy(DomainJudge(model, device), val_imgs, val_caps)
            soft = render_accuracy(DomainJudge(model, device), val_soft, val_caps)
            model.train()
            tqdm.write(f"step {step + 1}: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
                       + " | degraded: " + " ".join(f"{k} {v:.3f}" for k, v in soft.items()))
        if checkpoint_and_check_time(step, args, t0, lambda: {"model": model.state_dict(), "opt": opt.state_dict(),
                                                              "config": cfg.to_dict()}):
            break
    train_s = time.time() - t0
    model.eval()
    meta = {"judge_config": cfg.to_dict(), "steps": step + 1, "batch_size": args.batch_size,
            "train_seconds_this_run": round(train_s, 1), "data": "pool" if pool else "on the fly",
            "degrade_fraction": args.degrade, "init": str(args.init) if args.init else None}
    save_module(model, args.out, meta)
    judge = DomainJudge.load(args.out, str(device))  # measure the float16 file that ships, not the float32 model
    acc = render_accuracy(judge, *sample_batch(VALIDATION_SEED, args.eval_n))
    save_module(judge.net, args.out, {**meta, "validation_accuracy": acc, "validation_renders": args.eval_n})
    print(f"validation accuracy on {args.eval_n} renders: " + " ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    print(f"wrote {args.out} ({step + 1} steps, {train_s:.0f}s)")


if __name__ == "__main__":
    main()
