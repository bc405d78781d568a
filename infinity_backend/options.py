"""The Infinity backend's options (one JSON file), with validation that names the bad option or path."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from infinity_backend.arch import MODEL_TYPES, PN_NUM_SCALES, REQUIRED_MODULES, VAE_TYPES


class InfinityOptionsError(ValueError):
    """A bad option, path or environment, found before anything is loaded."""


@dataclass
class InfinityOptions:
    """Everything ``make_infinity_generator`` needs (the options of upstream tools/run_infinity.py).

    src: upstream checkout (FoundationVision/Infinity, or FastVAR's repo / its ``Infinity/`` folder);
        default: ``$INFINITY_SRC``. model_path: transformer weights (e.g. infinity_2b_reg.pth).
    vae_path: BSQ VAE weights (infinity_vae_d32_reg.pth). text_encoder_ckpt: flan-t5-xl folder.
    model_type: key of MODEL_TYPES. pn: '0.06M' | '0.25M' | '0.60M' | '1M' pixels. vae_type: codebook
        bits (32 for Infinity-2B). cfg: guidance scale, or one per scale (1 = no guidance).
    tau: logit temperature (or one per scale). cfg_insertion_layer: 0 = CFG on logits, -k = on the
        output of block depth-k. top_k / top_p: upstream's bit filter (gen_one_img defaults).
    h_div_w: aspect ratio height/width, mapped to the nearest template of upstream's table.
    prune_layers: [first, last) blocks that FastVAR pruning applies to; None = 3..27 of 32 scaled.
    rng: 'per_scale' (seed per (image, scale)) or 'upstream' (one stream per image, as g_seed).
    bf16: bf16 blocks and autocast, as run_infinity.py --bf16 1 (GPU only).
    flops_text_tokens: nominal prompt length (T5 tokens) used by the analytic FLOPs model.
    """

    src: str | None = None
    model_path: str | None = None
    vae_path: str | None = None
    text_encoder_ckpt: str | None = None
    model_type: str = "infinity_2b"
    pn: str = "1M"
    vae_type: int = 32
    cfg: float | list[float] = 4.0
    tau: float | list[float] = 0.5
    cfg_insertion_layer: int = 0
    top_k: int = 900
    top_p: float = 0.97
    h_div_w: float = 1.0
    device: str = "cuda"
    prune_layers: tuple[int, int] | None = None
    rng: str = "per_scale"
    bf16: bool = True
    text_channels: int = 2048
    add_lvl_embeding_only_first_block: int = 1
    rope2d_each_sa_layer: int = 1
    rope2d_normalized_by_hw: int = 2
    use_bit_label: int = 1
    apply_spatial_patchify: int = 0
    checkpoint_type: str = "torch"
    flops_text_tokens: int = 64

    @classmethod
    def from_dict(cls, d: dict) -> "InfinityOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InfinityOptionsError(f"unknown Infinity option(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if d.get("prune_layers") is not None:
            d["prune_layers"] = tuple(d["prune_layers"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def depth(self) -> int:
        return MODEL_TYPES[self.model_type][0]

    def resolved_src(self) -> Path:
        """The folder that holds ``infinity/models/infinity.py`` (FastVAR's repo root -> its Infinity/)."""
        src = self.src or os.environ.get("INFINITY_SRC")
        if not src:
            raise InfinityOptionsError("no Infinity source checkout: set the 'src' option or INFINITY_SRC to a "
                                       "clone of https://github.com/FoundationVision/Infinity (or FastVAR's "
                                       "repo / its Infinity/ folder)")
        p = Path(src).expanduser()
        if not p.is_dir():
            raise InfinityOptionsError(f"Infinity source checkout {str(p)!r} does not exist or is not a folder")
        if not (p / REQUIRED_MODULES[0]).is_file() and (p / "Infinity" / REQUIRED_MODULES[0]).is_file():
            p = p / "Infinity"
        missing = [m for m in REQUIRED_MODULES if not (p / m).is_file()]
        if missing:
            raise InfinityOptionsError(f"{str(p)!r} is not an Infinity checkout: missing {', '.join(missing)} "
                                       "(expected a clone of FoundationVision/Infinity or FastVAR's Infinity/)")
        return p

    def validate(self, require_checkpoints: bool = True) -> "InfinityOptions":
        """Cheap checks only (no import of upstream, no load): raises InfinityOptionsError."""
        E = InfinityOptionsError
        if self.model_type not in MODEL_TYPES:
            raise E(f"unknown model_type {self.model_type!r}; choose one of {sorted(MODEL_TYPES)}")
        if self.pn not in PN_NUM_SCALES:
            raise E(f"unknown pn {self.pn!r}; choose one of {sorted(PN_NUM_SCALES)}")
        if self.vae_type not in VAE_TYPES:
            raise E(f"vae_type must be one of {VAE_TYPES} (codebook bits), got {self.vae_type!r}")
        n = PN_NUM_SCALES[self.pn]
        for name in ("cfg", "tau"):
            v = getattr(self, name)
            vals = list(v) if isinstance(v, (list, tuple)) else [v]
            if isinstance(v, (list, tuple)) and len(vals) != n:
                raise E(f"{name} list must have one value per scale ({n} at pn {self.pn}), got {len(vals)}")
            for x in vals:
                if not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise E(f"{name} must be finite numbers, got {v!r}")
            if name == "tau" and any(x <= 0 for x in vals):
                raise E(f"tau must be > 0, got {v!r}")
        if self.cfg_insertion_layer > 0 or self.cfg_insertion_layer <= -self.depth:
            raise E(f"cfg_insertion_layer must be 0 (CFG on logits) or in -{self.depth - 1}..-1 (a block's "
                    f"output), got {self.cfg_insertion_layer}")
        if not (self.h_div_w > 0 and math.isfinite(self.h_div_w)):
            raise E(f"h_div_w must be a positive aspect ratio (height / width), got {self.h_div_w!r}")
        if self.rng not in ("per_scale", "upstream"):
            raise E(f"rng must be 'per_scale' or 'upstream', got {self.rng!r}")
        if not (0 <= self.top_p <= 1) or self.top_k < 0:
            raise E(f"top_k must be >= 0 and top_p in [0, 1], got top_k={self.top_k}, top_p={self.top_p}")
        if self.prune_layers is not None:
            a, b = self.prune_layers
            if not (0 <= a <= b <= self.depth):
                raise E(f"prune_layers must be [first, last) with 0 <= first <= last <= depth {self.depth}, "
                        f"got {self.prune_layers}")
        if self.use_bit_label != 1 or self.apply_spatial_patchify != 0:
            raise E("only use_bit_label=1 and apply_spatial_patchify=0 (the Infinity-2B setting) are supported")
        if self.checkpoint_type not in ("torch", "torch_shard"):
            raise E(f"checkpoint_type must be 'torch' or 'torch_shard', got {self.checkpoint_type!r}")
        dev = str(self.device)
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise E(f"device {dev!r} requested but CUDA is not available on this machine (Infinity-2B needs a "
                    "GPU; device='cpu' runs only tiny test configurations in reasonable time)")
        self.resolved_src()
        if require_checkpoints:
            for name in ("model_path", "vae_path"):
                v = getattr(self, name)
                if not v:
                    raise E(f"option {name!r} is required (path to the checkpoint file)")
                p = Path(v).expanduser()
                if not (p.is_file() or (name == "model_path" and self.checkpoint_type == "torch_shard" and p.is_dir())):
                    raise E(f"{name} {str(p)!r} does not exist")
            if not self.text_encoder_ckpt:
                raise E("option 'text_encoder_ckpt' is required (the flan-t5-xl folder with config.json)")
            t5 = Path(self.text_encoder_ckpt).expanduser()
            if not (t5 / "config.json").is_file():
                raise E(f"text_encoder_ckpt {str(t5)!r} is not a T5 folder (no config.json there)")
        return self

    def cfg_list(self, n: int) -> list[float]:
        return [float(x) for x in self.cfg] if isinstance(self.cfg, (list, tuple)) else [float(self.cfg)] * n

    def tau_list(self, n: int) -> list[float]:
        return [float(x) for x in self.tau] if isinstance(self.tau, (list, tuple)) else [float(self.tau)] * n
