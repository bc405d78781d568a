"""Infinity's architectures and scale schedules (as upstream tools/run_infinity.py builds them), and
the analytic per-image FLOPs model (multiply-add = 2 FLOPs). Needs no checkout and no checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from generator.protocol import validate_ratio
from generator.pruning import tokens_kept

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
