"""``python -m infinity_backend flops|check|make-tiny|cost``: the FLOPs table, the options check (with a
memory estimate per batch), the tiny random checkpoint for trying the whole path on a CPU, and the GPU
time to budget."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infinity_backend.arch import (MODEL_TYPES, PN_NUM_SCALES, InfinityArch, default_prune_layers, flops_table,
                                   format_flops_table, square_scale_schedule)
from infinity_backend.options import InfinityOptions, InfinityOptionsError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m infinity_backend", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flops", help="analytic per-scale FLOPs table (no checkout or checkpoint needed)")
    f.add_argument("--model", default="infinity_2b", choices=sorted(MODEL_TYPES))
    f.add_argument("--pn", default="1M", choices=sorted(PN_NUM_SCALES))
    f.add_argument("--no-cfg", action="store_true", help="one branch (no classifier-free guidance)")
    f.add_argument("--text-tokens", type=int, default=64, help="prompt length in T5 tokens")
    f.add_argument("--schedule", default=None, help='original | fastvar | tail | "width:ratio,..." (default original)')
    f.add_argument("--json", action="store_true")
    c = sub.add_parser("check", help="validate an options JSON file (paths, checkout, CUDA) without loading, and "
                                     "print the memory estimate per batch")
    c.add_argument("options", type=Path)
    t = sub.add_parser("make-tiny", help="write a tiny random Infinity (transformer, BSQ VAE, T5) and opts.json "
                                         "into OUT_DIR, in upstream's file formats (needs a checkout)")
    t.add_argument("out_dir", type=Path)
    t.add_argument("--src", default=None, help="upstream checkout (default: $INFINITY_SRC)")
    t.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("cost", help="GPU-hours to budget: per image, per training run, per static search (analytic "
                                    "FLOPs at an assumed sustained throughput; takes about a minute)")
    g.add_argument("--tflops", type=float, default=200.0, help="ASSUMED sustained TFLOP/s of your GPU (default 200)")
    g.add_argument("--timesteps", type=int, default=24_000)
    g.add_argument("--num-controllable", type=int, default=4)
    g.add_argument("--train-prompts", type=int, default=1000)
    g.add_argument("--image-seeds", type=int, default=2)
    g.add_argument("--val-prompts", type=int, default=100)
    g.add_argument("--eval-freq", type=int, default=2000)
    g.add_argument("--mean-fraction", type=float, default=0.6, help="mean transformer FLOPs fraction of training images")
    g.add_argument("--search-items", type=int, default=100, help="search prompts x search seeds")
    g.add_argument("--grid-ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    g.add_argument("--target", type=float, default=0.45, help="total FLOPs fraction the static search must fit")
    return ap


def options_arch(opts: InfinityOptions) -> InfinityArch:
    """The FLOPs / memory architecture the options describe (``model_kwargs`` over the preset)."""
    from infinity_backend.direct import transformer_kwargs

    kw = transformer_kwargs(opts)
    return InfinityArch(kw["depth"], kw["embed_dim"], kw["num_heads"], float(kw.get("mlp_ratio", 4)), opts.vae_type,
                        opts.text_channels, opts.flops_text_tokens)


def check(path: Path) -> int:
    from infinity_backend.memory import format_memory, memory_estimate

    if not path.is_file():
        print(f"error: options file {path} does not exist", file=sys.stderr)
        return 2
    try:
        opts = InfinityOptions.from_dict(json.loads(path.read_text())).validate()
    except (InfinityOptionsError, json.JSONDecodeError, TypeError) as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    arch = options_arch(opts)
    hws = [(h, w) for _, h, w in square_scale_schedule(opts.pn)]
    cfg = any(c != 1 for c in opts.cfg_list(len(hws)))
    prune = tuple(opts.prune_layers) if opts.prune_layers is not None else default_prune_layers(arch.depth)
    bf16 = bool(opts.bf16) and str(opts.device).startswith("cuda")
    mem = memory_estimate(arch, hws, cfg, prune, bf16, opts.text_encoder_ckpt, opts.vae_path)
    device_bytes = None
    if str(opts.device).startswith("cuda"):
        import torch

        device_bytes = torch.cuda.get_device_properties(torch.device(opts.device)).total_memory
    print(f"options OK: {opts.model_type} (depth {arch.depth}, width {arch.width}), pn {opts.pn} "
          f"({len(hws)} scales, {hws[-1][0]}x{hws[-1][1]} last), loader {opts.loader}, device {opts.device}")
    print(format_memory(mem, device_bytes=device_bytes))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "flops":
        ratios = None
        if args.schedule:
            from generator.schedules import parse_schedule, schedule_ratios

            widths = tuple(w for _, _, w in square_scale_schedule(args.pn))
            ratios = schedule_ratios(parse_schedule(args.schedule, widths), len(widths))
        t = flops_table(args.model, args.pn, cfg=not args.no_cfg, text_tokens=args.text_tokens, ratios=ratios)
        print(json.dumps(t, indent=1) if args.json else format_flops_table(t))
        return 0
    if args.cmd == "cost":
        from infinity_backend.cost import cost_report

        print(cost_report(args.tflops, timesteps=args.timesteps, num_controllable=args.num_controllable,
                          train_prompts=args.train_prompts, image_seeds=args.image_seeds, val_prompts=args.val_prompts,
                          eval_freq=args.eval_freq, mean_fraction=args.mean_fraction, search_items=args.search_items,
                          grid_ratios=tuple(args.grid_ratios), target=args.target))
        return 0
    if args.cmd == "make-tiny":
        from infinity_backend.tiny import make_tiny

        try:
            path = make_tiny(args.out_dir, args.src, args.seed)
        except (InfinityOptionsError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {path} (and the tiny checkpoint files beside it); next: python -m infinity_backend check {path}")
        return 0
    return check(args.options)
