"""The Infinity backend's options (one JSON file), with validation that names the bad option or path."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from infinity_backend.arch import MODEL_TYPES, PN_NUM_SCALES, REQUIRED_MODULES, VAE_TYPES


LOADERS = ("run_infinity", "direct")
#: the transformer shape keys the direct loader passes to upstream's ``Infinity`` (as run_infinity.py's kwargs_model)
MODEL_KWARGS = ("depth", "embed_dim", "num_heads", "mlp_ratio", "block_chunks")
#: the BSQ VAE shape keys the direct loader overrides in upstream's ``vae_model`` arguments
VAE_KWARGS = ("base_ch", "num_res_blocks", "ch_mult")


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
    loader: 'run_infinity' (upstream tools/run_infinity.py's loaders: CUDA only, the shapes of
        MODEL_TYPES) or 'direct' (ours, ``infinity_backend.direct``: upstream's classes built with
        ``model_kwargs`` / ``vae_kwargs`` on any device, state dicts loaded from the same files).
    model_kwargs: the transformer's shape for the direct loader, keys of MODEL_KWARGS (default: the
        shape of ``model_type``). vae_kwargs: the BSQ VAE's ``base_ch`` / ``num_res_blocks`` /
        ``ch_mult`` (5 multipliers, encoder and decoder) for the direct loader (default: upstream's
        128 / 2 / [1, 2, 4, 4, 4]). Both only with loader 'direct'.
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
    loader: str = "run_infinity"
    model_kwargs: dict | None = None
    vae_kwargs: dict | None = None

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
        if self.model_kwargs is not None and "depth" in self.model_kwargs:
            return int(self.model_kwargs["depth"])
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
        self._validate_loader()
        if self.model_type not in MODEL_TYPES and self.model_kwargs is None:
            raise E(f"unknown model_type {self.model_type!r}; choose one of {sorted(MODEL_TYPES)} (or give "
                    "model_kwargs with loader 'direct')")
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
        if self.loader == "run_infinity" and not dev.startswith("cuda"):
            raise E(f"loader 'run_infinity' (upstream's tools/run_infinity.py loaders) moves every model to CUDA; "
                    f"on device {dev!r} use loader 'direct' (see python -m infinity_backend make-tiny)")
        return self

    def _validate_loader(self) -> None:
        E = InfinityOptionsError
        if self.loader not in LOADERS:
            raise E(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.loader != "direct" and (self.model_kwargs is not None or self.vae_kwargs is not None):
            raise E("model_kwargs / vae_kwargs are read only by loader 'direct' (upstream's loaders have fixed shapes)")
        for name, allowed in (("model_kwargs", MODEL_KWARGS), ("vae_kwargs", VAE_KWARGS)):
            kw = getattr(self, name)
            if kw is None:
                continue
            if not isinstance(kw, dict) or sorted(set(kw) - set(allowed)):
                raise E(f"{name} must be an object with keys from {list(allowed)}, got {kw!r}")
            for key, v in kw.items():
                if key == "ch_mult":
                    if not (isinstance(v, list) and len(v) == 5 and all(isinstance(m, int) and m > 0 for m in v)):
                        raise E(f"vae_kwargs['ch_mult'] must be 5 positive integers (16x down-sampling), got {v!r}")
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (key != "mlp_ratio" and v != int(v)):
                    raise E(f"{name}[{key!r}] must be a positive {'number' if key == 'mlp_ratio' else 'integer'}, got {v!r}")
        mk = self.model_kwargs or {}
        if "embed_dim" in mk and mk["embed_dim"] % mk.get("num_heads", 1):
            raise E(f"model_kwargs embed_dim {mk['embed_dim']} must be a multiple of num_heads {mk.get('num_heads')}")
        if "depth" in mk and mk["depth"] % mk.get("block_chunks", 1):
            raise E(f"model_kwargs depth {mk['depth']} must be a multiple of block_chunks {mk.get('block_chunks')}")
        vk = self.vae_kwargs or {}
        base = vk.get("base_ch", 128)
        bad = [base * m for m in vk.get("ch_mult", [1, 2, 4, 4, 4]) if (base * m) % 24 and (base * m) % 32]
        if bad:
            raise E(f"vae_kwargs: every level's channels (base_ch x ch_mult) must be a multiple of 24 or 32 "
                    f"(upstream's GroupNorm), got {bad}")

    def cfg_list(self, n: int) -> list[float]:
        return [float(x) for x in self.cfg] if isinstance(self.cfg, (list, tuple)) else [float(self.cfg)] * n

    def tau_list(self, n: int) -> list[float]:
        return [float(x) for x in self.tau] if isinstance(self.tau, (list, tuple)) else [float(self.tau)] * n
