"""Command-line options shared by generate.py and evaluate_agent.py: which generator, how it samples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from generator.config import SamplingConfig
from generator.embedded import DEFAULT_CFG_SCALE
from generator.guidance import guidance_from_cfg


def add_generator_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("generator")
    g.add_argument("--generator", default="tiny", choices=("tiny", "infinity"),
                   help="tiny = the shipped embedded model (CPU); infinity = Infinity-2B (GPU, see README)")
    g.add_argument("--cfg", type=float, default=None, help=f"classifier-free guidance scale (default {DEFAULT_CFG_SCALE}; 1 = off)")
    g.add_argument("--cfg-scales", default=None, metavar="FIRST:LAST",
                   help="apply CFG only on scale indices FIRST..LAST (inclusive), e.g. 0:4")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = sample from all codes")
    g.add_argument("--infinity-options", type=Path, default=None, help="JSON file of Infinity backend options")
    g.add_argument("--device", default=None, help="torch device (default: cpu for tiny; the options file's for infinity)")


def parse_interval(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        a, b = text.split(":")
        first, last = int(a) if a else None, int(b) if b else None
    except ValueError:
        raise ValueError(f"--cfg-scales must be FIRST:LAST scale indices (e.g. 0:4), got {text!r}") from None
    if first is not None and last is not None and first > last:
        raise ValueError(f"--cfg-scales FIRST must be <= LAST, got {text!r}")
    return first, last


def build_generator(args, cfg_default: float = DEFAULT_CFG_SCALE):
    """The generator the options describe (raises ValueError / WeightsError with clear messages)."""
    if args.generator == "infinity":
        from generator.infinity_backend import make_infinity_generator

        if args.infinity_options is None:
            raise ValueError("--generator infinity needs --infinity-options FILE (JSON of InfinityOptions; see README)")
        if not Path(args.infinity_options).is_file():
            raise FileNotFoundError(f"--infinity-options file {args.infinity_options} does not exist")
        opts = json.loads(Path(args.infinity_options).read_text())
        # command-line values override the options file only where they were given
        if args.cfg is not None:
            opts["cfg"] = args.cfg
        if args.device is not None:
            opts["device"] = args.device
        return make_infinity_generator(**opts)
    cfg = cfg_default if args.cfg is None else args.cfg
    if not cfg >= 1.0:
        raise ValueError(f"--cfg must be >= 1 (1 = no guidance), got {cfg}")
    first, last = parse_interval(args.cfg_scales)
    guidance = guidance_from_cfg(cfg, first, last)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k)
    from generator.embedded import load_embedded_generator

    return load_embedded_generator(guidance=guidance, sampling=sampling, device=args.device or "cpu")


def int_tuple(text: str) -> tuple[int, ...]:
    """argparse type: "1,2,4" -> (1, 2, 4); the error names the bad value."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_shape_args(ap: argparse.ArgumentParser) -> None:
    """--scales / --channel-mult: the embedded model's shape (defaults: the shipped one)."""
    from generator.config import TokenizerConfig

    d = TokenizerConfig()
    ap.add_argument("--scales", type=int_tuple, default=None,
                    help=f"token-map sides, coarse to fine; the last must equal the latent size (default {','.join(map(str, d.scales))})")
    ap.add_argument("--channel-mult", type=int_tuple, default=None,
                    help="tokenizer encoder/decoder width multipliers; each entry after the first halves the resolution, so "
                         f"the latent size is image_size / 2**(entries - 1) (default {','.join(map(str, d.channel_mult))})")


def model_shape_config(ap: argparse.ArgumentParser, args):
    """The ``GeneratorConfig`` that --scales / --channel-mult ask for (None when neither is given);
    an inconsistent pair is an argparse error that names both values and the rule."""
    from generator.config import GeneratorConfig, TokenizerConfig, TransformerConfig

    if args.scales is None and args.channel_mult is None:
        return None
    d = TokenizerConfig()
    scales, mult = args.scales or d.scales, args.channel_mult or d.channel_mult
    try:
        return GeneratorConfig(TokenizerConfig(scales=scales, channel_mult=mult), TransformerConfig(scales=scales))
    except ValueError as e:
        ap.error(f"--scales {','.join(map(str, scales))} / --channel-mult {','.join(map(str, mult))}: {e}")
