"""The backends by name, and the command-line options that pick and configure one.

A backend is a package that implements :class:`generator.protocol.PerScaleGenerator`. This table
names each by its loader's import path, so that nothing here imports a backend until it is asked for
(the protocol layer never depends on a backend; a backend's heavy or optional dependencies are
imported only when it is used).
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from generator.guidance import guidance_from_cfg


@dataclass(frozen=True)
class Backend:
    name: str
    loader: str          # "package.module:function" returning a PerScaleGenerator
    default_cfg: float   # classifier-free guidance scale when the user gives none
    what: str


BACKENDS: dict[str, Backend] = {
    "tiny": Backend("tiny", "embedded.loaders:load_embedded_generator", 3.0, "the shipped embedded model (CPU)"),
    "infinity": Backend("infinity", "infinity_backend.loading:make_infinity_generator", 4.0,
                        "Infinity-2B (GPU, your checkpoints; see README)"),
}
DEFAULT_CFG_SCALE = BACKENDS["tiny"].default_cfg


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def load_backend(name: str):
    """The loader function of backend ``name`` (imports the backend package)."""
    module, func = backend(name).loader.split(":")
    return getattr(importlib.import_module(module), func)


def add_generator_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("generator")
    g.add_argument("--generator", default="tiny", choices=tuple(BACKENDS),
                   help="; ".join(f"{b.name} = {b.what}" for b in BACKENDS.values()))
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


def resolved_cfg(args, cfg_default: float = DEFAULT_CFG_SCALE):
    """The guidance scale ``build_generator(args, cfg_default)`` gives the generator, for the record: for
    Infinity the options file's ``cfg`` unless ``--cfg`` overrides it (``cfg_default`` applies to tiny only)."""
    if args.cfg is not None:
        return args.cfg
    if args.generator == "infinity":
        path = args.infinity_options
        opts = json.loads(Path(path).read_text()) if path is not None and Path(path).is_file() else {}
        return opts.get("cfg", backend("infinity").default_cfg)
    return cfg_default


def build_generator(args, cfg_default: float = DEFAULT_CFG_SCALE):
    """The generator the options describe (raises ValueError / WeightsError with clear messages)."""
    if args.generator == "infinity":
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
        return load_backend("infinity")(**opts)
    cfg = cfg_default if args.cfg is None else args.cfg
    if not cfg >= 1.0:
        raise ValueError(f"--cfg must be >= 1 (1 = no guidance), got {cfg}")
    first, last = parse_interval(args.cfg_scales)
    guidance = guidance_from_cfg(cfg, first, last)
    return load_backend("tiny")(guidance=guidance, sampling={"temperature": args.temperature, "top_k": args.top_k},
                                device=args.device or "cpu")
