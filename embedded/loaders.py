"""The embedded default generator: our tokenizer + next-scale transformer, weights in ``weights/``.

Nothing here touches the network. Missing or corrupt weights raise ``WeightsError`` naming the file
and the script that reproduces it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from embedded.config import GeneratorConfig, SamplingConfig
from embedded.generator import NextScaleGenerator
from embedded.tokenizer import MultiScaleVQTokenizer
from embedded.transformer import NextScaleTransformer
from generator.backends import BACKENDS
from generator.guidance import GuidanceFn, ScalarGuidance
from generator.weights_io import WeightsError, load_module, read_metadata

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO_ROOT / "weights"
TOKENIZER_WEIGHTS = WEIGHTS_DIR / "tokenizer.safetensors"
GENERATOR_WEIGHTS = WEIGHTS_DIR / "generator.safetensors"
DEFAULT_CFG_SCALE = BACKENDS["tiny"].default_cfg

_HOW_TOKENIZER = "Reproduce it with `python scripts/train_tokenizer.py`."
_HOW_GENERATOR = "Reproduce it with `python scripts/train_generator.py`."


def build_modules(cfg: GeneratorConfig | None = None) -> tuple[MultiScaleVQTokenizer, NextScaleTransformer]:
    cfg = cfg or GeneratorConfig()
    return MultiScaleVQTokenizer(cfg.tokenizer), NextScaleTransformer(cfg.transformer)


def _require(meta: dict, key: str, path, how: str) -> dict:
    if key not in meta:
        raise WeightsError(f"weights file {path} has no {key!r} config in its metadata: it is not a {key} weights file. {how}")
    return meta


def load_tokenizer(path: str | Path = TOKENIZER_WEIGHTS) -> MultiScaleVQTokenizer:
    meta = _require(read_metadata(path, _HOW_TOKENIZER), "tokenizer", path, _HOW_TOKENIZER)
    cfg = GeneratorConfig.from_dict({"tokenizer": meta["tokenizer"], "transformer": GeneratorConfig().transformer.to_dict()})
    return load_module(MultiScaleVQTokenizer(cfg.tokenizer), path, _HOW_TOKENIZER).eval()


def load_transformer(path: str | Path = GENERATOR_WEIGHTS) -> NextScaleTransformer:
    meta = _require(read_metadata(path, _HOW_GENERATOR), "transformer", path, _HOW_GENERATOR)
    cfg = GeneratorConfig.from_dict({"tokenizer": GeneratorConfig().tokenizer.to_dict(), "transformer": meta["transformer"]})
    return load_module(NextScaleTransformer(cfg.transformer), path, _HOW_GENERATOR).eval()


def load_embedded_generator(guidance: GuidanceFn | None = None, sampling: SamplingConfig | dict | None = None,
                            device: str = "cpu", tokenizer_path: str | Path = TOKENIZER_WEIGHTS,
                            generator_path: str | Path = GENERATOR_WEIGHTS) -> NextScaleGenerator:
    """The shipped, trained generator (default guidance: CFG 3.0). ``sampling`` may be a dict of
    ``SamplingConfig`` fields (what the backend registry passes)."""
    if isinstance(sampling, dict):
        sampling = SamplingConfig(**sampling)
    return NextScaleGenerator(load_tokenizer(tokenizer_path), load_transformer(generator_path),
                              guidance=guidance or ScalarGuidance(DEFAULT_CFG_SCALE), sampling=sampling, device=device)


def random_generator(seed: int = 0, cfg: GeneratorConfig | None = None, guidance: GuidanceFn | None = None,
                     sampling: SamplingConfig | None = None, weight_std: float = 0.05) -> NextScaleGenerator:
    """Randomly initialised generator for tests of the machinery (not of image quality).

    Every linear layer gets N(0, weight_std) weights so that the adaLN-Zero gates are open and
    pruning really changes the output (with the training init they start closed).
    """
    torch.manual_seed(seed)
    tok, tr = build_modules(cfg)
    for m in tr.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=weight_std)
            torch.nn.init.normal_(m.bias, std=weight_std)
    with torch.no_grad():
        tok.codebook.weight.normal_(0, 1.0)
    return NextScaleGenerator(tok, tr, guidance=guidance or ScalarGuidance(DEFAULT_CFG_SCALE), sampling=sampling)
