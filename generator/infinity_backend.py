"""Infinity (FoundationVision/Infinity, or FastVAR's fork) behind our step-wise generator API.

    gen = make_infinity_generator(src="/path/to/Infinity", model_path=".../infinity_2b_reg.pth",
                                  vae_path=".../infinity_vae_d32_reg.pth", text_encoder_ckpt=".../flan-t5-xl")
    state = gen.start(["a photo of a cat"], seeds=[0])
    while not state.finished:
        gen.step(state, ratio=schedule.ratio(state.scale_index, state.num_scales, state))
    images = gen.decode(state)            # (B, 3, H, W) float in [0, 1]

The upstream code (transformer, BSQ VAE, T5 loading) is imported from the user's checkout
(``src`` option or ``INFINITY_SRC``); nothing of it lives in this repository. We do not call the
upstream blocks' ``forward``: every scale runs the blocks' submodules (adaLN modulation, our own
self-attention over a KV cache held in the state, the upstream cross-attention and FFN modules, the
head), so FastVAR-style cached token pruning (``0 <= r < 1``) and scale skipping (``r >= 1``) are ours
and work whichever fork is installed. With ratio 0 everywhere the computation is operation for
operation the one of upstream ``Infinity.autoregressive_infer_cfg`` (tested on CPU against both forks).

Sampling is bitwise (each token is ``d`` independent bits, ``d`` = VAE codebook dim), with upstream's
top-k / top-p filter and CFG on the logits (``cfg_insertion_layer=0``) or on a block's output (< 0).
``rng='per_scale'`` (default) draws scale k of image b from a generator seeded by (seed_b, k), so
pruning or skipping one scale never shifts the noise of another; ``rng='upstream'`` uses one generator
per image seeded with its seed and consumed scale after scale, as upstream's ``g_seed`` does.

``python -m generator.infinity_backend flops --model infinity_2b --pn 1M`` prints the analytic
per-scale FLOPs table; it needs no checkout and no checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from generator.pruning import tokens_kept
from generator.sampler import StateProgress, check_prompts_and_seeds, StepReport, scale_seed, validate_ratio

# ---------------------------------------------------------------------------------------------------
# Architecture table (tools/run_infinity.py, load_transformer) and scale schedules
# ---------------------------------------------------------------------------------------------------

#: model_type -> (depth, width, heads, block_chunks), as upstream ``tools/run_infinity.py`` builds them.
MODEL_TYPES: dict[str, tuple[int, int, int, int]] = {
    "infinity_2b": (32, 2048, 16, 8),
    "infinity_8b": (40, 3584, 28, 8),
    "infinity_layer12": (12, 768, 8, 4),
    "infinity_layer16": (16, 1152, 12, 4),
    "infinity_layer24": (24, 1536, 16, 4),
    "infinity_layer32": (32, 2080, 20, 4),
    "infinity_layer40": (40, 2688, 24, 4),
    "infinity_layer48": (48, 3360, 28, 4),
}
VAE_TYPES = (14, 16, 18, 20, 24, 32, 64)
#: pn -> number of scales (upstream infinity/utils/dynamic_resolution.py: lengths 7, 10, 12, 13)
PN_NUM_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
#: the 1:1 (h_div_w = 1.0) side list of upstream's dynamic_resolution table, used only where no checkout
#: is given (the FLOPs CLI); with a checkout the schedule always comes from the checkout's table.
SQUARE_SIDES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
#: FastVAR prunes blocks 3..27 of Infinity-2B's 32 (``layer_idx in range(3, 28)``): half-open [3, 28).
FASTVAR_PRUNE_LAYERS_2B = (3, 28)
REQUIRED_MODULES = ("infinity/models/infinity.py", "infinity/models/basic.py",
                    "infinity/models/bsq_vae/vae.py", "infinity/utils/dynamic_resolution.py")


def default_prune_layers(depth: int) -> tuple[int, int]:
    """FastVAR's block range 3..27 of 32 scaled to ``depth`` blocks: half-open [first, last)."""
    first = round(FASTVAR_PRUNE_LAYERS_2B[0] * depth / 32)
    last = round(FASTVAR_PRUNE_LAYERS_2B[1] * depth / 32)
    return max(0, min(first, depth)), max(0, min(last, depth))


def square_scale_schedule(pn: str) -> list[tuple[int, int, int]]:
    """(t, h, w) per scale for a square image at ``pn`` without a checkout (t is always 1 for images)."""
    if pn not in PN_NUM_SCALES:
        raise ValueError(f"unknown pn {pn!r}; choose one of {sorted(PN_NUM_SCALES)}")
    return [(1, s, s) for s in SQUARE_SIDES[:PN_NUM_SCALES[pn]]]


def upstream_scale_schedule(dynamic_resolution_module, h_div_w: float, pn: str) -> list[tuple[int, int, int]]:
    """Scale schedule from upstream's table: nearest aspect-ratio template, as tools/run_infinity.py."""
    import numpy as np

    templates = dynamic_resolution_module.h_div_w_templates
    template = float(templates[int(np.argmin(np.abs(templates - float(h_div_w))))])
    table = dynamic_resolution_module.dynamic_resolution_h_w[template]
    if pn not in table:
        raise ValueError(f"pn {pn!r} is not in upstream's dynamic_resolution table (has {sorted(table)})")
    return [(1, int(h), int(w)) for (_, h, w) in table[pn]["scales"]]


# ---------------------------------------------------------------------------------------------------
# Analytic FLOPs (multiply-add = 2 FLOPs), per image
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InfinityArch:
    """What the FLOPs model needs. width C = embed dim, mlp_hidden = round(4C/256)*256 (upstream FFN),
    codebook_dim d (bits per token, head outputs 2d logits), text_channels (T5 width, 2048 for
    flan-t5-xl), text_tokens: nominal prompt length in T5 tokens (cross-attention keys)."""

    depth: int = 32
    width: int = 2048
    heads: int = 16
    mlp_ratio: float = 4.0
    codebook_dim: int = 32
    text_channels: int = 2048
    text_tokens: int = 64

    @property
    def mlp_hidden(self) -> int:
        return round(self.width * self.mlp_ratio / 256) * 256

    @classmethod
    def for_model(cls, model_type: str, vae_type: int = 32, text_channels: int = 2048,
                  text_tokens: int = 64) -> "InfinityArch":
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; choose one of {sorted(MODEL_TYPES)}")
        depth, width, heads, _ = MODEL_TYPES[model_type]
        return cls(depth, width, heads, 4.0, vae_type, text_channels, text_tokens)


def _lin(n: float, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def infinity_block_flops(arch: InfinityArch, n: int, kv_after: int) -> float:
    """One CrossAttnBlock on n query tokens of one branch; self-attention over kv_after keys.

    Self-attention: QKV, scores + AV over the KV cache, output projection. Cross-attention: Q, the
    text K/V projection (upstream recomputes it in every block at every scale), scores + AV over the
    text tokens, output projection. FFN: two linears. Norms, RoPE, softmax, adaLN adds: not counted.
    """
    C, T = arch.width, arch.text_tokens
    sa = _lin(n, C, 3 * C) + 4.0 * n * kv_after * C + _lin(n, C, C)
    ca = _lin(n, C, C) + _lin(T, C, 2 * C) + 4.0 * n * T * C + _lin(n, C, C)
    ffn = _lin(n, C, arch.mlp_hidden) + _lin(n, arch.mlp_hidden, C)
    return sa + ca + ffn


def infinity_prefill_flops(arch: InfinityArch, branches: int) -> float:
    """Per image, per branch: text attention pool (SOS / cond vector), text projection for
    cross-attention, shared adaLN projection. The T5 encoder itself is not counted."""
    C, Ct5, T = arch.width, arch.text_channels, arch.text_tokens
    pool = _lin(T, Ct5, 2 * C) + 4.0 * 1 * T * C + _lin(1, C, C)
    proj = _lin(T, Ct5, C) + _lin(T, C, C)
    ada = _lin(1, C, 6 * C) + _lin(1, C, 2 * C)
    return branches * (pool + proj + ada)


def infinity_step_flops(arch: InfinityArch, hw: tuple[int, int], scale_index: int, n_keep: int | None,
                        prune_layers: tuple[int, int], kv_before: list[list[int]]) -> float:
    """FLOPs of one image at one scale: ``kv_before`` holds, per branch that runs, the per-block KV
    length before this scale. Pruned blocks run ``n_keep`` tokens; the head runs on every token."""
    L = hw[0] * hw[1]
    first, last = prune_layers
    total = 0.0
    for lens in kv_before:
        for i, past in enumerate(lens):
            n = n_keep if (n_keep is not None and first <= i < last) else L
            total += infinity_block_flops(arch, n, past + n)
        total += _lin(L, arch.width, 2 * arch.codebook_dim)          # bitwise head: 2 logits per bit
    if scale_index > 0:
        total += _lin(L, arch.codebook_dim, arch.width)               # word embedding, shared by branches
    return total


def infinity_schedule_flops(arch: InfinityArch, hws: Sequence[tuple[int, int]], ratios: Sequence[float],
                            unconditional: Sequence[bool], prune_layers: tuple[int, int]) -> list[float]:
    """Per-scale FLOPs of one image for a whole ratio list (simulates per-branch KV growth)."""
    if len(ratios) != len(hws) or len(unconditional) != len(hws):
        raise ValueError(f"need one ratio and one unconditional flag per scale ({len(hws)}), "
                         f"got {len(ratios)} and {len(unconditional)}")
    first, last = prune_layers
    kv = {"cond": [0] * arch.depth, "uncond": [0] * arch.depth}
    out = []
    for k, (r, unc) in enumerate(zip(ratios, unconditional)):
        r = validate_ratio(r)
        if r >= 1.0:
            out.append(0.0)
            continue
        L = hws[k][0] * hws[k][1]
        n_keep = tokens_kept(L, r)
        n_keep = None if n_keep >= L else n_keep
        branches = ["cond", "uncond"] if unc else ["cond"]
        out.append(infinity_step_flops(arch, hws[k], k, n_keep, prune_layers, [kv[b] for b in branches]))
        for b in branches:
            kv[b] = [p + (n_keep if (n_keep is not None and first <= i < last) else L) for i, p in enumerate(kv[b])]
    return out


def flops_table(model_type: str = "infinity_2b", pn: str = "1M", cfg: bool = True, text_tokens: int = 64,
                ratios: Sequence[float] | None = None) -> dict:
    """The per-scale table of an unpruned (or ``ratios``) image: rows of scale, h, w, tokens, KV length
    after the scale, GFLOPs, share of the transformer's total (prefill included in the total)."""
    arch = InfinityArch.for_model(model_type, text_tokens=text_tokens)
    sched = square_scale_schedule(pn)
    hws = [(h, w) for _, h, w in sched]
    n = len(hws)
    ratios = [0.0] * n if ratios is None else list(ratios)
    per = infinity_schedule_flops(arch, hws, ratios, [cfg] * n, default_prune_layers(arch.depth))
    prefill = infinity_prefill_flops(arch, 2 if cfg else 1)
    total = prefill + sum(per)
    rows, kv = [], 0
    for k, ((h, w), f) in enumerate(zip(hws, per)):
        kv += h * w
        rows.append({"scale": k, "h": h, "w": w, "tokens": h * w, "kv_after": kv, "gflops": f / 1e9,
                     "share": f / total})
    return {"model": model_type, "pn": pn, "cfg": cfg, "depth": arch.depth, "width": arch.width,
            "heads": arch.heads, "mlp_hidden": arch.mlp_hidden, "text_tokens": text_tokens,
            "tokens": sum(h * w for h, w in hws), "prefill_gflops": prefill / 1e9, "total_gflops": total / 1e9,
            "last_two_share": sum(per[-2:]) / total, "rows": rows,
            "fraction_of_unpruned": None if not any(ratios) else
            total / flops_table(model_type, pn, cfg, text_tokens)["total_gflops"] / 1e9}


def format_flops_table(t: dict) -> str:
    lines = [f"{t['model']} @ {t['pn']}: depth {t['depth']}, width {t['width']}, {t['heads']} heads, "
             f"FFN {t['mlp_hidden']}, {len(t['rows'])} scales, {t['tokens']:,} tokens, "
             f"CFG {'on (2 branches)' if t['cfg'] else 'off'}, {t['text_tokens']} text tokens",
             f"{'scale':>5} {'h x w':>7} {'tokens':>7} {'KV after':>9} {'GFLOPs':>10} {'share':>7}"]
    for r in t["rows"]:
        lines.append(f"{r['scale']:>5} {str(r['h']) + 'x' + str(r['w']):>7} {r['tokens']:>7,} {r['kv_after']:>9,} "
                     f"{r['gflops']:>10.1f} {100 * r['share']:>6.2f}%")
    lines.append(f"prefill (text pool/projection, adaLN): {t['prefill_gflops']:.1f} GFLOPs; "
                 f"total {t['total_gflops']:,.1f} GFLOPs (T5 and VAE decoder not counted)")
    lines.append(f"last two scales: {100 * t['last_two_share']:.1f}% of transformer compute "
                 f"(published estimates: ~60-70%)")
    if t.get("fraction_of_unpruned") is not None:
        lines.append(f"this schedule: {100 * t['fraction_of_unpruned']:.1f}% of the unpruned image's FLOPs")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# Upstream import
# ---------------------------------------------------------------------------------------------------

def import_upstream(src: str | Path) -> SimpleNamespace:
    """Import the upstream ``infinity`` package from ``src`` (a checkout). Another checkout's
    ``infinity`` already in ``sys.modules`` is dropped first (objects built from it keep working)."""
    src = Path(src).resolve()
    if importlib.util.find_spec("flash_attn") is None:
        raise ImportError("upstream Infinity imports flash_attn unconditionally; install it "
                          "(pip install flash-attn --no-build-isolation) on the GPU machine")
    loaded = sys.modules.get("infinity")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent.parent != src:
        for name in [m for m in sys.modules if m == "infinity" or m.startswith("infinity.")]:
            del sys.modules[name]
    if str(src) in sys.path:
        sys.path.remove(str(src))
    sys.path.insert(0, str(src))
    try:
        ns = SimpleNamespace(
            infinity=importlib.import_module("infinity.models.infinity"),
            basic=importlib.import_module("infinity.models.basic"),
            dynamic_resolution=importlib.import_module("infinity.utils.dynamic_resolution"),
            src=src,
        )
    except ModuleNotFoundError as e:
        raise ImportError(f"importing upstream Infinity from {str(src)!r} failed: {e}. Install its "
                          f"requirements (pip install -r {src}/requirements.txt)") from e
    return ns


class T5PromptEncoder:
    """Prompts -> upstream's text condition tuple (kv_compact, lens, cu_seqlens_k, max_len), exactly as
    ``encode_prompt`` in tools/run_infinity.py (max_length 512, padding, last_hidden_state in float).

    tokenizer: a Hugging Face-style callable ``tokenizer(text=list, max_length=, padding=, truncation=,
    return_tensors='pt')`` -> input_ids, attention_mask; encoder: ``encoder(input_ids=, attention_mask=)``
    -> {'last_hidden_state': (B, L, Ct5)}.
    """

    def __init__(self, tokenizer, encoder, max_length: int = 512, device: str | torch.device = "cpu") -> None:
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder, max_length
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, prompts: list[str]):
        tok = self.tokenizer(text=list(prompts), max_length=self.max_length, padding="max_length",
                             truncation=True, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        feats = self.encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
        lens = mask.sum(dim=-1).tolist()
        cu = F.pad(mask.sum(dim=-1).to(dtype=torch.int32).cumsum_(0), (1, 0))
        kv = torch.cat([f[:n] for n, f in zip(lens, feats.unbind(0))], dim=0)
        return kv, lens, cu, max(lens)


# ---------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------

@dataclass
class InfinityState(StateProgress):
    """Everything one batch generation carries between scales. Owned by the caller.

    rows of the two-branch tensors: cond = [0, B), uncond = [B, 2B). kv[layer] is a list of
    per-scale chunks (k, v, both) with k, v (rows, heads, tokens, head_dim); both=False chunks hold
    the conditional rows only (scales run with drop_unconditional). prune_cache[branch] =
    ((h, w), {(layer, 'sa'|'ca'|'ffn'): (B, h*w, C)}) from the last scale that ran unpruned.
    summed_codes: (B, d, 1, H, W) accumulated BSQ codes at the final latent size (upstream's name).
    codes[k]: scale k's sampled bits (B, h, w, d) long, None if skipped / not yet run.
    """

    prompts: list[str]
    seeds: list[int]
    num_scales: int
    summed_codes: torch.Tensor
    text: dict
    kv: list[list[tuple]]
    rngs: list[torch.Generator] | None
    scale_index: int = 0
    codes: list[torch.Tensor | None] = field(default_factory=list)
    prune_cache: dict = field(default_factory=dict)
    last_entropy_B: torch.Tensor | None = None
    reports: list[StepReport] = field(default_factory=list)
    flops_prefill: float = 0.0

    @property
    def f_hat_BChw(self) -> torch.Tensor:
        """Accumulated codes as (B, d, H, W) (the embedded backend's name)."""
        return self.summed_codes.squeeze(-3)

    def copy(self) -> "InfinityState":
        """Independent continuation point (tensors are never modified in place; RNG states cloned)."""
        rngs = None
        if self.rngs is not None:
            rngs = []
            for g in self.rngs:
                g2 = torch.Generator(device=g.device)
                g2.set_state(g.get_state())
                rngs.append(g2)
        return InfinityState(list(self.prompts), list(self.seeds), self.num_scales, self.summed_codes, self.text,
                             [list(c) for c in self.kv], rngs, self.scale_index, list(self.codes),
                             dict(self.prune_cache), self.last_entropy_B, list(self.reports), self.flops_prefill)


# ---------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------

class InfinityGenerator:
    """An upstream Infinity transformer + BSQ VAE + text encoder behind the step-wise API.

    model: an upstream ``Infinity`` (either fork) built with ``inference_mode=True``, bitwise labels,
    shared adaLN and 2-D RoPE in every self-attention (the Infinity-2B setting). vae: its BSQ VAE.
    text_encoder: prompts -> (kv_compact, lens, cu_seqlens_k, max_len), e.g. ``T5PromptEncoder``.
    scale_schedule: [(1, h, w)] per scale; must be a key of ``model.rope2d_freqs_grid`` (a full
    schedule of upstream's dynamic_resolution table).
    """

    backend = "infinity"

    def __init__(self, model, vae, text_encoder: Callable, scale_schedule: Sequence[tuple[int, int, int]],
                 options: InfinityOptions | None = None, device: str | torch.device | None = None) -> None:
        self.opts = options if options is not None else InfinityOptions(device=str(device or "cpu"))
        self.model, self.vae, self.text_encoder = model, vae, text_encoder
        self.device = torch.device(device if device is not None else self.opts.device)
        self.scale_schedule = [tuple(int(v) for v in s) for s in scale_schedule]
        self.vae_scale_schedule = self.scale_schedule  # apply_spatial_patchify = 0
        if str(tuple(self.scale_schedule)) not in model.rope2d_freqs_grid:
            raise ValueError(f"scale schedule {self.scale_schedule} has no RoPE table in the model "
                             "(use a full schedule from upstream's dynamic_resolution table)")
        if not model.use_bit_label or model.apply_spatial_patchify:
            raise ValueError("only bitwise labels without spatial patchify (the Infinity-2B setting) are supported")
        self.chunks = ([list(c.module) for c in model.block_chunks] if hasattr(model, "block_chunks")
                       else [list(model.blocks)])
        self.blocks = [b for c in self.chunks for b in c]
        self.depth = len(self.blocks)
        pl = self.opts.prune_layers
        self.prune_layers = tuple(pl) if pl is not None else default_prune_layers(self.depth)
        n = len(self.scale_schedule)
        self.cfg_list = self.opts.cfg_list(n)
        self.tau_list = self.opts.tau_list(n)
        if len(self.cfg_list) != n or len(self.tau_list) != n:
            raise ValueError(f"cfg / tau lists must have {n} entries (one per scale)")
        self.guided = any(c != 1 for c in self.cfg_list)
        ins = self.opts.cfg_insertion_layer
        self.cfg_on_logits = ins == 0
        self.cfg_layer = None if ins == 0 else self.depth + ins
        self._sample_fn = sys.modules[type(model).__module__].sample_with_top_k_top_p_also_inplace_modifying_logits_
        blk = self.blocks[0]
        self.arch = InfinityArch(self.depth, model.C, model.num_heads, model.mlp_ratio, model.codebook_dim,
                                 model.Ct5, self.opts.flops_text_tokens)
        if blk.ffn.fc1.out_features != self.arch.mlp_hidden:
            self.arch = InfinityArch(self.depth, model.C, model.num_heads, blk.ffn.fc1.out_features / model.C,
                                     model.codebook_dim, model.Ct5, self.opts.flops_text_tokens)
        self._autocast = self.device.type == "cuda" and self.opts.bf16

    # ---- description --------------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.scale_schedule)

    @property
    def scale_hw(self) -> tuple[tuple[int, int], ...]:
        return tuple((h, w) for _, h, w in self.scale_schedule)

    @property
    def scale_sides(self) -> tuple:
        """Side per scale (int for square maps, (h, w) otherwise)."""
        return tuple(h if h == w else (h, w) for h, w in self.scale_hw)

    @property
    def scale_widths(self) -> tuple[int, ...]:
        """Token-map width per scale: the keys of FastVAR's / the seed's "width:ratio" strings."""
        return tuple(w for _, w in self.scale_hw)

    @property
    def max_entropy(self) -> float:
        """Entropy (nats) of a uniform token: d independent fair bits."""
        return self.model.codebook_dim * math.log(2.0)

    def accumulated_codes(self, state: InfinityState) -> torch.Tensor:
        return state.summed_codes.squeeze(-3)

    def fingerprint(self) -> str:
        o = self.opts

        def stamp(p):
            if not p:
                return None
            q = Path(p).expanduser()
            return f"{q.name}:{q.stat().st_size}" if q.is_file() else q.name

        return (f"infinity:{o.model_type}:{self.scale_schedule}:cfg={self.cfg_list}:tau={self.tau_list}:"
                f"ins={o.cfg_insertion_layer}:topk={o.top_k}:topp={o.top_p}:rng={o.rng}:bf16={self._autocast}:"
                f"prune={self.prune_layers}:model={stamp(o.model_path)}:vae={stamp(o.vae_path)}:t5={stamp(o.text_encoder_ckpt)}")

    def schedule_flops(self, ratios: list[float], unconditional: list[bool] | None = None) -> list[float]:
        n = self.num_scales
        if unconditional is None:
            unconditional = [self.guided] * n
        return infinity_schedule_flops(self.arch, self.scale_hw, ratios, unconditional, self.prune_layers)

    def _prefill_flops(self) -> float:
        return infinity_prefill_flops(self.arch, 2 if self.guided else 1)

    def flops_full(self) -> float:
        return self._prefill_flops() + sum(self.schedule_flops([0.0] * self.num_scales))

    def flops_fraction(self, ratios: list[float], unconditional: list[bool] | None = None) -> float:
        return (self._prefill_flops() + sum(self.schedule_flops(ratios, unconditional))) / self.flops_full()

    def _amp(self):
        if self._autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16, enabled=True)
        return torch.autocast(self.device.type, enabled=False)

    # ---- start ------------------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, prompts: list[str] | str, seeds: list[int] | int) -> InfinityState:
        prompts, seeds = check_prompts_and_seeds(prompts, seeds)
        m, B = self.model, len(prompts)
        with self._amp():
            kv_compact, lens, cu, max_len = self.text_encoder(list(prompts))
            kv_compact, cu = kv_compact.to(self.device), cu.to(self.device)
            if self.guided:  # upstream: the unconditional branch is cfg_uncond[:len] per prompt
                kv_un = kv_compact.clone()
                total = 0
                for le in lens:
                    kv_un[total:total + le] = m.cfg_uncond[:le]
                    total += le
                kv_compact = torch.cat((kv_compact, kv_un), dim=0)
                cu = torch.cat((cu, cu[1:] + cu[-1]), dim=0)
            kv_compact = m.text_norm(kv_compact)
            sos = cond_BD = m.text_proj_for_sos((kv_compact, cu, max_len))
            kv_compact = m.text_proj_for_ca(kv_compact)
            with torch.autocast(self.device.type, enabled=False):
                gss = m.shared_ada_lin(cond_BD.float()).float().contiguous()
        text = {"kv": kv_compact, "cu": cu, "max_len": max_len, "cond_BD": cond_BD, "gss": gss, "sos": sos}
        d = m.codebook_dim
        _, H, W = self.vae_scale_schedule[-1]
        rngs = None
        if self.opts.rng == "upstream":
            rngs = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        return InfinityState(
            prompts=list(prompts), seeds=[int(s) for s in seeds], num_scales=self.num_scales,
            summed_codes=torch.zeros(B, d, 1, H, W, device=self.device), text=text,
            kv=[[] for _ in range(self.depth)], rngs=rngs, codes=[None] * self.num_scales,
            flops_prefill=self._prefill_flops())

    # ---- one scale --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, state: InfinityState, ratio: float, drop_unconditional: bool = False) -> StepReport:
        """Run scale ``state.scale_index`` at pruning ratio ``ratio`` (r >= 1 skips); advances the state."""
        if state.finished:
            raise IndexError(f"all {state.num_scales} scales are already generated; start a new generation")
        r = validate_ratio(ratio)
        k = state.scale_index
        h, w = self.scale_hw[k]
        L = h * w
        if r >= 1.0:
            return state.record_skip(w, h, r)
        both = self.guided and not drop_unconditional
        n_keep = tokens_kept(L, r)
        n_keep = None if n_keep >= L else n_keep
        flops = infinity_step_flops(self.arch, (h, w), k, n_keep, self.prune_layers,
                                    [self._kv_lens(state, "cond")] + ([self._kv_lens(state, "uncond")] if both else []))
        with self._amp():
            logits_BlV, recorded = self._forward(state, k, n_keep, both)
            idx_Bhwd, entropy_B = self._sample(state, logits_BlV, k)
            self._add_codes(state, k, idx_Bhwd)
        if n_keep is None:
            B = state.batch
            state.prune_cache = dict(state.prune_cache)
            state.prune_cache["cond"] = ((h, w), {key: t[:B] for key, t in recorded.items()})
            if both:
                state.prune_cache["uncond"] = ((h, w), {key: t[B:] for key, t in recorded.items()})
        state.last_entropy_B = entropy_B
        rep = StepReport(k, w, h, L, r, L if n_keep is None else n_keep, False, both, flops)
        state.reports.append(rep)
        state.scale_index += 1
        return rep

    def _kv_lens(self, state: InfinityState, branch: str) -> list[int]:
        return [sum(c[0].shape[2] for c in chunks if branch == "cond" or c[2]) for chunks in state.kv]

    def _scale_input(self, state: InfinityState, k: int, rows: int) -> torch.Tensor:
        m, B = self.model, state.batch
        if k == 0:
            sos = state.text["sos"][:rows]
            return sos.unsqueeze(1).expand(rows, 1, -1) + m.pos_start.expand(rows, 1, -1)
        x = F.interpolate(state.summed_codes, size=self.vae_scale_schedule[k], mode=self.vae.quantizer.z_interplote_up)
        x = x.squeeze(-3)
        x = x.reshape(*x.shape[:2], -1).permute(0, 2, 1)                     # (B, L, d)
        x = m.word_embed(m.norm0_ve(x))
        return x.repeat(rows // B, 1, 1)

    def _forward(self, state: InfinityState, k: int, n_keep: int | None, both: bool):
        """Blocks + head for scale k. Returns guided logits (B, L, 2d) and this scale's sub-layer
        outputs of the pruned block range (for the prune cache; only when n_keep is None)."""
        m, B = self.model, state.batch
        rows = 2 * B if both else B
        t = state.text
        ncu = t["cu"].shape[0] - 1 if both else B
        ca_kv = (t["kv"][: int(t["cu"][ncu])], t["cu"][: ncu + 1], t["max_len"])
        gss, cond_BD = t["gss"][:rows], t["cond_BD"][:rows]
        h, w = self.scale_hw[k]
        x = self._scale_input(state, k, rows)
        restore = None
        if n_keep is not None:  # per branch: (cached (h, w), {key: (B, S, C)}), None = zeros
            restore = {br: state.prune_cache.get(br) for br in (["cond", "uncond"] if both else ["cond"])}
        first, last = self.prune_layers
        cfg = self.cfg_list[k]
        recorded: dict = {}
        new_chunks: list[tuple] = []
        layer = 0
        for ci, chunk in enumerate(self.chunks):
            if (m.add_lvl_embeding_only_first_block and ci == 0) or not m.add_lvl_embeding_only_first_block:
                x = x.clone()
                x[:, :h * w] += m.lvl_embed(k * torch.ones((rows, h * w), dtype=torch.int).to(x.device))
            for blk in chunk:
                pruned = n_keep is not None and first <= layer < last
                x, chunk_kv = self._block(blk, layer, x, k, gss, ca_kv, n_keep if pruned else None,
                                          restore, recorded if (n_keep is None and first <= layer < last) else None,
                                          state, both)
                new_chunks.append(chunk_kv)
                if both and cfg != 1 and self.cfg_layer is not None and layer == self.cfg_layer:
                    x = cfg * x[:B] + (1 - cfg) * x[B:]
                    x = torch.cat((x, x), 0)
                layer += 1
        for i, c in enumerate(new_chunks):
            state.kv[i] = state.kv[i] + [c]
        tau = self.tau_list[k]
        if both and cfg != 1 and self.cfg_on_logits:
            logits = m.get_logits(x, cond_BD).mul(1 / tau)
            logits = cfg * logits[:B] + (1 - cfg) * logits[B:]
        else:
            logits = m.get_logits(x[:B], cond_BD[:B]).mul(1 / tau)
        return logits, recorded

    def _ada_norm(self, blk, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if blk.fused_norm_func is not None:
            return blk.fused_norm_func(C=blk.C, eps=blk.norm_eps, x=x, scale=scale, shift=shift)
        return blk.ln_wo_grad(x.float()).mul(scale.add(1)).add_(shift)

    @staticmethod
    def _select(x_BLC: torch.Tensor, n_keep: int, hw: tuple[int, int]) -> torch.Tensor:
        """FastVAR's selection: (B, n_keep, 1) indices of the tokens farthest (squared L2) from the
        map's mean token, in descending order of that distance (fastvar_utils.masked_previous_scale_cache)."""
        B, L, c = x_BLC.shape
        mean = x_BLC.view(B, hw[0], hw[1], -1).permute(0, 3, 1, 2)
        mean = F.adaptive_avg_pool2d(mean, (1, 1)).permute(0, 2, 3, 1).view(B, 1, c)
        dev = torch.sum((x_BLC - mean) ** 2, dim=-1, keepdim=True)
        return torch.argsort(dev, dim=1, descending=True)[:, :n_keep, :]

    def _restore(self, out_BnC: torch.Tensor, idx_Bn1: torch.Tensor, key: tuple, restore: dict, hw: tuple[int, int],
                 B: int) -> torch.Tensor:
        """Full map: each branch's cached output area-resampled to hw, kept outputs scattered in."""
        parts = []
        for bi, br in enumerate(restore):
            src = restore[br]
            rows = slice(bi * B, (bi + 1) * B)
            c = out_BnC.shape[-1]
            if src is None:
                full = torch.zeros(B, hw[0] * hw[1], c, dtype=out_BnC.dtype, device=out_BnC.device)
            else:
                (ch, cw), cache = src
                t = cache[key]
                full = t.view(B, ch, cw, -1).permute(0, 3, 1, 2)
                full = F.interpolate(full, size=hw, mode="area").permute(0, 2, 3, 1).reshape(B, hw[0] * hw[1], c)
                full = full.to(out_BnC.dtype)
            parts.append(full.scatter(1, idx_Bn1[rows].repeat(1, 1, c), out_BnC[rows]))
        return torch.cat(parts, 0) if len(parts) > 1 else parts[0]

    def _block(self, blk, layer: int, x: torch.Tensor, k: int, gss: torch.Tensor, ca_kv, n_keep: int | None,
               restore: dict | None, record: dict | None, state: InfinityState, both: bool):
        """One upstream CrossAttnBlock through its submodules (upstream's fused-norm path)."""
        B = state.batch
        hw = self.scale_hw[k]
        with torch.autocast(x.device.type, enabled=False):
            if blk.shared_aln:
                g1, g2, s1, s2, b1, b2 = (blk.ada_gss + gss).unbind(2)
            else:
                g1, g2, s1, s2, b1, b2 = blk.ada_lin(gss).view(-1, 1, 6, blk.C).unbind(2)

        def gather(t, idx):
            return torch.gather(t, dim=1, index=idx.repeat(1, 1, t.shape[-1]))

        # self-attention
        idx = self._select(x, n_keep, hw) if n_keep is not None else None
        xs = gather(x, idx) if idx is not None else x
        h_sa, kv_chunk = self._self_attention(blk.sa, self._ada_norm(blk, xs, s1, b1), state, layer, k, idx, both)
        h_sa = h_sa.mul_(g1)
        if idx is not None:
            h_sa = self._restore(h_sa, idx, (layer, "sa"), restore, hw, B)
        if record is not None:
            record[(layer, "sa")] = h_sa
        x = x + blk.drop_path(h_sa)
        # cross-attention
        idx = self._select(x, n_keep, hw) if n_keep is not None else None
        xs = gather(x, idx) if idx is not None else x
        h_ca = blk.ca(blk.ca_norm(xs), ca_kv).float().mul_(blk.ca_gamma)
        if idx is not None:
            h_ca = self._restore(h_ca, idx, (layer, "ca"), restore, hw, B)
        if record is not None:
            record[(layer, "ca")] = h_ca
        x = x + h_ca
        # FFN
        idx = self._select(x, n_keep, hw) if n_keep is not None else None
        xs = gather(x, idx) if idx is not None else x
        h_ffn = blk.ffn(self._ada_norm(blk, xs, s2, b2)).mul(g2)
        if idx is not None:
            h_ffn = self._restore(h_ffn, idx, (layer, "ffn"), restore, hw, B)
        if record is not None:
            record[(layer, "ffn")] = h_ffn
        x = x + blk.drop_path(h_ffn)
        return x, kv_chunk

    def _self_attention(self, sa, x: torch.Tensor, state: InfinityState, layer: int, k: int,
                        idx: torch.Tensor | None, both: bool):
        """Upstream SelfAttention.forward (non-flash layout) with the KV cache in ``state``: returns the
        projected output and this scale's (k, v, both) chunk. ``idx``: kept token positions (RoPE)."""
        Bn, l, C = x.shape
        H, c = sa.num_heads, sa.head_dim
        qkv = F.linear(input=x, weight=sa.mat_qkv.weight,
                       bias=torch.cat((sa.q_bias, sa.zero_k_bias, sa.v_bias))).view(Bn, l, 3, H, c)
        q, k_, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)                  # (B, H, l, c)
        if sa.cos_attn:
            scale_mul = sa.scale_mul_1H11.clamp_max(sa.max_scale_mul).exp().view(1, H, 1, 1)
            q = F.normalize(q, dim=-1, eps=1e-12).mul(scale_mul).contiguous()
            k_ = F.normalize(k_, dim=-1, eps=1e-12).contiguous()
            v = v.contiguous()
        else:
            q, k_, v = q.contiguous(), k_.contiguous(), v.contiguous()
        q, k_ = self._rope(q, k_, k, idx)
        B = state.batch
        if both:
            if all(ch[2] for ch in state.kv[layer]):
                k_all = torch.cat([ch[0] for ch in state.kv[layer]] + [k_], dim=2)
                v_all = torch.cat([ch[1] for ch in state.kv[layer]] + [v], dim=2)
                oup = self._attend(sa, q, k_all, v_all)
            else:  # branches hold different scales: attend per branch
                oc = self._attend(sa, q[:B], torch.cat(self._gather_kv(state, layer, "cond", 0) + [k_[:B]], 2),
                                  torch.cat(self._gather_kv(state, layer, "cond", 1) + [v[:B]], 2))
                ou = self._attend(sa, q[B:], torch.cat(self._gather_kv(state, layer, "uncond", 0) + [k_[B:]], 2),
                                  torch.cat(self._gather_kv(state, layer, "uncond", 1) + [v[B:]], 2))
                oup = torch.cat((oc, ou), 0)
        else:
            k_all = torch.cat(self._gather_kv(state, layer, "cond", 0) + [k_], dim=2)
            v_all = torch.cat(self._gather_kv(state, layer, "cond", 1) + [v], dim=2)
            oup = self._attend(sa, q, k_all, v_all)
        out = sa.proj_drop(sa.proj(oup.transpose(1, 2).reshape(Bn, l, C)))
        return out, (k_, v, both)

    def _gather_kv(self, state: InfinityState, layer: int, branch: str, which: int) -> list[torch.Tensor]:
        B = state.batch
        if branch == "cond":
            return [ch[which][:B] for ch in state.kv[layer]]
        return [ch[which][B:] for ch in state.kv[layer] if ch[2]]

    @staticmethod
    def _attend(sa, q, k, v):
        if q.device.type == "cuda":
            q, k = q.to(v.dtype), k.to(v.dtype)
        return F.scaled_dot_product_attention(query=q, key=k, value=v, scale=sa.scale, dropout_p=0)

    def _rope(self, q: torch.Tensor, k: torch.Tensor, scale_index: int, idx: torch.Tensor | None):
        """upstream basic.apply_rotary_emb, with the kept tokens' positions gathered when pruned."""
        grid = self.model.rope2d_freqs_grid
        key = str(tuple(self.scale_schedule))
        qk = torch.stack((q, k), dim=0)
        with torch.autocast(qk.device.type if qk.device.type != "mps" else "cpu", enabled=False):
            start = sum(t * h * w for t, h, w in self.scale_schedule[:scale_index])
            h, w = self.scale_hw[scale_index]
            grid[key] = grid[key].to(qk.device)
            cache = grid[key][:, :, :, :, start:start + h * w]                 # (2, 1, 1, 1, L, half)
            if idx is not None:                                                 # (2, 1, Bn, 1, n, half)
                Bn, n = idx.shape[0], idx.shape[1]
                cache = cache.expand(2, 1, Bn, 1, h * w, cache.shape[-1])
                cache = torch.gather(cache, dim=4, index=idx.reshape(1, 1, Bn, 1, n, 1).expand(2, 1, Bn, 1, n, cache.shape[-1]))
            cache = cache[:, 0]
            qk = qk.reshape(*qk.shape[:-1], -1, 2)
            qk = torch.stack([cache[0] * qk[..., 0] - cache[1] * qk[..., 1],
                              cache[1] * qk[..., 0] + cache[0] * qk[..., 1]], dim=-1)
            qk = qk.reshape(*qk.shape[:-2], -1)
            q, k = qk.unbind(dim=0)
        return q, k

    def _sample(self, state: InfinityState, logits_BlV: torch.Tensor, k: int):
        """Bitwise sampling with upstream's filter; returns bits (B, h, w, d) and entropy (B,) in nats."""
        B, l, V = logits_BlV.shape
        bits = logits_BlV.float().reshape(B, -1, 2)
        p = bits.softmax(-1)
        entropy_B = -(p * torch.log_softmax(bits, -1)).sum(-1).reshape(B, l, -1).sum(-1).mean(-1)
        rows = []
        for b in range(B):
            if state.rngs is not None:
                g = state.rngs[b]
            else:
                g = torch.Generator(device=logits_BlV.device).manual_seed(scale_seed(state.seeds[b], k))
            lg = logits_BlV[b:b + 1].reshape(1, -1, 2).clone()
            rows.append(self._sample_fn(lg, rng=g, top_k=self.opts.top_k, top_p=self.opts.top_p, num_samples=1)[:, :, 0])
        h, w = self.scale_hw[k]
        idx = torch.cat(rows, 0).reshape(B, l, -1).reshape(B, h, w, -1)
        return idx, entropy_B

    def _add_codes(self, state: InfinityState, k: int, idx_Bhwd: torch.Tensor) -> None:
        q = self.vae.quantizer
        codes = q.lfq.indices_to_codes(idx_Bhwd.unsqueeze(1), label_type="bit_label")   # (B, d, 1, h, w)
        if k != self.num_scales - 1:
            codes = F.interpolate(codes, size=self.vae_scale_schedule[-1], mode=q.z_interplote_up)
        if all(c is None for c in state.codes):   # upstream: summed_codes = 0; summed_codes += codes
            state.summed_codes = codes + state.summed_codes      # keeps the codes' memory layout
        else:                                       # (the VAE's convolutions are layout-sensitive)
            summed = state.summed_codes.clone()
            summed += codes
            state.summed_codes = summed
        state.codes[k] = idx_Bhwd

    # ---- images ------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, state: InfinityState, clamp: bool = True) -> torch.Tensor:
        """Decode the codes accumulated so far: (B, 3, H, W) float, RGB, in [0, 1] (clamp=False: the
        VAE's raw output mapped by (x + 1) / 2, as upstream before its uint8 cast)."""
        with self._amp():
            img = self.vae.decode(state.summed_codes.squeeze(-3))
        img = (img.float() + 1) / 2
        return img.clamp(0, 1) if clamp else img

    @torch.no_grad()
    def decode_scale(self, state: InfinityState, scale_index: int) -> torch.Tensor | None:
        """Decode scale k's own contribution alone (the seed's "rescale_codes"); None if skipped."""
        idx = state.codes[scale_index]
        if idx is None:
            return None
        q = self.vae.quantizer
        codes = q.lfq.indices_to_codes(idx.unsqueeze(1), label_type="bit_label")
        codes = F.interpolate(codes, size=self.vae_scale_schedule[-1], mode=q.z_interplote_up)
        with self._amp():
            img = self.vae.decode(codes.squeeze(-3))
        return ((img.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def scale_latents(self, state: InfinityState, scale_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scale k's bit codes in latent space: (contribution upsampled to the final latent size
        (B, d, H, W), codes at the scale's own size (B, d, h, w)); None if the scale was skipped."""
        idx = state.codes[scale_index]
        if idx is None:
            return None
        q = self.vae.quantizer
        codes = q.lfq.indices_to_codes(idx.unsqueeze(1), label_type="bit_label")   # (B, d, 1, h, w)
        up = F.interpolate(codes, size=self.vae_scale_schedule[-1], mode=q.z_interplote_up)
        return up.squeeze(-3).float(), codes.squeeze(-3).float()

    @torch.no_grad()
    def generate(self, prompts: list[str] | str, seeds: list[int] | int, schedule=None):
        """Whole generation with a schedule (``generator.schedules``; None = unpruned)."""
        from generator.schedules import run_schedule

        state = run_schedule(self, self.start(prompts, seeds), schedule)
        return self.decode(state), state


# ---------------------------------------------------------------------------------------------------
# Loading from checkpoints
# ---------------------------------------------------------------------------------------------------

def _load_run_infinity(src: Path):
    """Upstream tools/run_infinity.py as a module (its loaders build the model exactly as upstream)."""
    path = src / "tools" / "run_infinity.py"
    if not path.is_file():
        raise InfinityOptionsError(f"{str(src)!r} has no tools/run_infinity.py (needed to build the model)")
    spec = importlib.util.spec_from_file_location("_upstream_run_infinity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_infinity_generator(**options: Any) -> InfinityGenerator:
    """Validate ``options`` (InfinityOptions fields), then load T5, the VAE and the transformer with
    upstream's own loaders from the checkout, and wrap them. Errors name the bad option or path."""
    opts = InfinityOptions.from_dict(options).validate(require_checkpoints=True)
    src = opts.resolved_src()
    up = import_upstream(src)
    schedule = upstream_scale_schedule(up.dynamic_resolution, opts.h_div_w, opts.pn)
    run_inf = _load_run_infinity(src)
    depth, width, heads, chunks = MODEL_TYPES[opts.model_type]
    args = SimpleNamespace(
        model_path=opts.model_path, vae_path=opts.vae_path, vae_type=opts.vae_type, pn=opts.pn,
        model_type=opts.model_type, text_channels=opts.text_channels, use_bit_label=opts.use_bit_label,
        add_lvl_embeding_only_first_block=opts.add_lvl_embeding_only_first_block,
        rope2d_each_sa_layer=opts.rope2d_each_sa_layer, rope2d_normalized_by_hw=opts.rope2d_normalized_by_hw,
        use_scale_schedule_embedding=0, apply_spatial_patchify=opts.apply_spatial_patchify, use_flex_attn=0,
        bf16=int(opts.bf16), checkpoint_type=opts.checkpoint_type, cache_dir="/nonexistent", enable_model_cache=0)
    text_tokenizer, text_encoder = run_inf.load_tokenizer(t5_path=opts.text_encoder_ckpt)
    vae = run_inf.load_visual_tokenizer(args)
    model = run_inf.load_transformer(vae, args)
    enc = T5PromptEncoder(text_tokenizer, text_encoder, device=opts.device)
    return InfinityGenerator(model, vae, enc, schedule, opts, device=opts.device)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generator.infinity_backend", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
