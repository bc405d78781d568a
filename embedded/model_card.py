"""Measure the shipped embedded models on held-out data (issue "embedded default", README table).

    python -m embedded.model_card [--json FILE] [--grid PNG] [--num-prompts 100]

Held-out data: domain samples from a seed range no training script uses (``HELDOUT_SEED``) and the
test prompts (``prompts/test.txt``: attribute pairs never seen in train). Generated images use
image seed 0 per prompt and the default CFG. R@1: the true caption must out-score 31 random other
captions of the same set (chance = 1/32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from generator.images import to_uint8

HELDOUT_SEED = 987_654_321  # also the tokenizer script's evaluation batch; training seeds start at 0 / 10_000 / 30_000


def heavy_skip_ratios(num_scales: int) -> list[float]:
    """Everything after the middle scale skipped."""
    mid = num_scales // 2
    return [0.0] * (mid + 1) + [1.0] * (num_scales - mid - 1)


def _latency(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


@torch.no_grad()
def measure(num_prompts: int = 100, num_real: int = 512, latency_repeats: int = 20, tokenizer_path: Path | None = None,
            generator_path: Path | None = None, device: str = "cpu") -> tuple[dict, dict]:
    """(card, images) where images holds the generated test images per schedule for the grid. Default: the
    shipped weights; ``tokenizer_path`` / ``generator_path``: other files (scripts/gpu_deep_model.py's); generation
    and latency run on ``device``; ``latency_repeats`` 0 skips the latency."""
    from domain import load_prompts, sample_batch
    from embedded.loaders import DEFAULT_CFG_SCALE, GENERATOR_WEIGHTS, TOKENIZER_WEIGHTS, load_embedded_generator
    from embedded.training import psnr_db
    from generator.schedules import FastVARSchedule, RatioListSchedule, schedule_ratios
    from rewards.clip_model import EMBEDDED_CLIP_WEIGHTS, clip_retrieval_r1, create_embedded_clip
    from rewards.similarity import ssim

    tokenizer_path = Path(tokenizer_path or TOKENIZER_WEIGHTS)
    generator_path = Path(generator_path or GENERATOR_WEIGHTS)
    g = load_embedded_generator(device=device, tokenizer_path=tokenizer_path, generator_path=generator_path)
    tok = g.tokenizer
    imgs, captions = sample_batch(HELDOUT_SEED, num_real)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255).to(device)
    rec = torch.cat([tok.decode(tok.indices_to_f_hat(tok.encode_indices(c))) for c in x.split(64)])
    card: dict = {"tokenizer_psnr_db": float(psnr_db(rec, x).mean())}

    clip, _, clip_tok = create_embedded_clip()
    card["clip_r1_real"] = clip_retrieval_r1(clip, clip_tok, imgs, captions)

    prompts = load_prompts("test")[:num_prompts]
    n = g.num_scales
    schedules = {"generated": None, "fastvar": FastVARSchedule(), "heavy_skip": RatioListSchedule(tuple(heavy_skip_ratios(n)))}
    images: dict = {}
    for key, sched in schedules.items():
        images[key] = torch.cat([g.generate(prompts[i:i + 25], [0] * len(prompts[i:i + 25]), schedule=sched)[0].cpu()
                                 for i in range(0, len(prompts), 25)])
        card[f"clip_r1_{key}"] = clip_retrieval_r1(clip, clip_tok, to_uint8(images[key]), prompts)
        if sched is not None:
            s = ssim(images[key], images["generated"])
            card[f"ssim_{key}_mean"] = float(s.mean())
            card[f"ssim_{key}_std"] = float(s.std())
            card[f"ssim_{key}_p10_p90"] = [float(s.quantile(0.1)), float(s.quantile(0.9))]
            card[f"flops_fraction_{key}"] = g.flops_fraction(schedule_ratios(sched, n))
    card["weights_mb"] = sum(Path(f).stat().st_size for f in (tokenizer_path, generator_path, EMBEDDED_CLIP_WEIGHTS)) / 1e6
    if latency_repeats:
        card["latency_ms_b1"] = _latency(lambda: g.generate([prompts[0]], [0]), latency_repeats)
        card["latency_ms_b8"] = _latency(lambda: g.generate(prompts[:8], list(range(8))), max(5, latency_repeats // 4))
        card["latency_ms_per_image_b8"] = card["latency_ms_b8"] / 8
    else:
        card["skipped"] = "latency (latency_repeats 0)"
    card.update(num_test_prompts=len(prompts), num_real_images=num_real, torch_threads=torch.get_num_threads(),
                device=device, cfg_scale=DEFAULT_CFG_SCALE, scales=list(g.scale_widths))
    images["prompts"] = prompts
    return card, images


def save_grid(images: dict, path: Path, rows: int = 8) -> None:
    """Rows = test prompts (labelled), columns = unpruned / FastVAR / heavy skip."""
    from generator.images import image_grid

    cols = {"unpruned": "generated", "FastVAR": "fastvar", "skip after middle": "heavy_skip"}
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid({title: list(images[key][:rows]) for title, key in cols.items()}, images["prompts"][:rows], path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="also write the card as JSON here")
    ap.add_argument("--grid", type=Path, default=None, help="write a sample grid PNG here")
    ap.add_argument("--num-prompts", type=int, default=100)
    ap.add_argument("--latency-repeats", type=int, default=20)
    args = ap.parse_args(argv)
    card, images = measure(args.num_prompts, latency_repeats=args.latency_repeats)
    width = max(map(len, card))
    for k, v in card.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json is not None:
        from generator.weights_io import atomic_write_json

        atomic_write_json(args.json, card)
    if args.grid is not None:
        save_grid(images, args.grid)
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
