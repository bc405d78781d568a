"""``python -m infinity_backend flops|check``: the FLOPs table and the options check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infinity_backend.arch import MODEL_TYPES, PN_NUM_SCALES, flops_table, format_flops_table, square_scale_schedule
from infinity_backend.options import InfinityOptions, InfinityOptionsError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infinity_backend", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flops", help="analytic per-scale FLOPs table (no checkout or checkpoint needed)")
    f.add_argument("--model", default="infinity_2b", choices=sorted(MODEL_TYPES))
    f.add_argument("--pn", default="1M", choices=sorted(PN_NUM_SCALES))
    f.add_argument("--no-cfg", action="store_true", help="one branch (no classifier-free guidance)")
    f.add_argument("--text-tokens", type=int, default=64, help="prompt length in T5 tokens")
    f.add_argument("--schedule", default=None, help='original | fastvar | tail | "width:ratio,..." (default original)')
    f.add_argument("--json", action="store_true")
    c = sub.add_parser("check", help="validate an options JSON file (paths, checkout, CUDA) without loading")
    c.add_argument("options", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "flops":
        ratios = None
        if args.schedule:
            from generator.schedules import parse_schedule, schedule_ratios

            widths = tuple(w for _, _, w in square_scale_schedule(args.pn))
            ratios = schedule_ratios(parse_schedule(args.schedule, widths), len(widths))
        t = flops_table(args.model, args.pn, cfg=not args.no_cfg, text_tokens=args.text_tokens, ratios=ratios)
        print(json.dumps(t, indent=1) if args.json else format_flops_table(t))
        return 0
    try:
        InfinityOptions.from_dict(json.loads(args.options.read_text())).validate()
    except InfinityOptionsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("options OK")
    return 0
