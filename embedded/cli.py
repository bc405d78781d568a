"""Command-line options for the embedded model's shape (training scripts, benchmarks)."""

from __future__ import annotations

import argparse


def int_tuple(text: str) -> tuple[int, ...]:
    """argparse type: "1,2,4" -> (1, 2, 4); the error names the bad value."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_shape_args(ap: argparse.ArgumentParser) -> None:
    """--scales / --channel-mult: the embedded model's shape (defaults: the shipped one)."""
    from embedded.config import TokenizerConfig

    d = TokenizerConfig()
    ap.add_argument("--scales", type=int_tuple, default=None,
                    help=f"token-map sides, coarse to fine; the last must equal the latent size (default {','.join(map(str, d.scales))})")
    ap.add_argument("--channel-mult", type=int_tuple, default=None,
                    help="tokenizer encoder/decoder width multipliers; each entry after the first halves the resolution, so "
                         f"the latent size is image_size / 2**(entries - 1) (default {','.join(map(str, d.channel_mult))})")


def model_shape_config(ap: argparse.ArgumentParser, args):
    """The ``GeneratorConfig`` that --scales / --channel-mult ask for (None when neither is given);
    an inconsistent pair is an argparse error that names both values and the rule."""
    from embedded.config import GeneratorConfig, TokenizerConfig, TransformerConfig

    if args.scales is None and args.channel_mult is None:
        return None
    d = TokenizerConfig()
    scales, mult = args.scales or d.scales, args.channel_mult or d.channel_mult
    try:
        return GeneratorConfig(TokenizerConfig(scales=scales, channel_mult=mult), TransformerConfig(scales=scales))
    except ValueError as e:
        ap.error(f"--scales {','.join(map(str, scales))} / --channel-mult {','.join(map(str, mult))}: {e}")
