"""Analytic memory estimate of one generation batch (what ``python -m infinity_backend check`` prints),
so a GPU user can pick ``--batch-size`` / ``--n-envs`` before loading anything. Not measured: an
estimate from the shapes, to within tens of percent.

Counted per image: the KV cache of every block over every scale and branch (keys stay float32 after
the cosine attention's normalisation and RoPE, as in upstream; values are in the blocks' dtype), our
pruning cache (the self-attention, cross-attention and FFN outputs of the pruned block range at the
last unpruned scale, float32 except the self-attention output; counted at the worst case, the last
scale), and the transient activations of the
last scale. Fixed: the transformer's weights (blocks in bf16 when ``bf16``), the T5 encoder (float16
on CUDA, from its config.json) and the VAE (its file size).
"""

from __future__ import annotations

import json
from pathlib import Path

from infinity_backend.arch import InfinityArch

GB = 1e9


def transformer_params(arch: InfinityArch) -> tuple[float, float]:
    """(parameters in the blocks, parameters outside them): self-attention 4C², cross-attention 4C²,
    FFN 2·C·hidden, adaLN gains per block; text pooling / projection, head and embeddings outside."""
    C, H = arch.width, arch.mlp_hidden
    blocks = arch.depth * (8 * C * C + 2 * C * H + 6 * C)
    outside = 3 * arch.text_channels * C + 6 * C * C + 2 * C * arch.codebook_dim * 2 + 512 * arch.text_channels
    return float(blocks), float(outside)


def t5_encoder_params(folder: str | Path | None) -> float | None:
    """Parameters of a T5 encoder from its config.json (embeddings, attention, gated or plain FFN)."""
    if not folder or not (Path(folder) / "config.json").is_file():
        return None
    c = json.loads((Path(folder) / "config.json").read_text())
    d, inner, ff, n = c["d_model"], c.get("num_heads", 1) * c.get("d_kv", 64), c["d_ff"], c["num_layers"]
    ffn = (3 if "gated" in str(c.get("feed_forward_proj", "")) else 2) * d * ff
    return float(c["vocab_size"] * d + n * (4 * d * inner + ffn))


def memory_estimate(arch: InfinityArch, hws: list[tuple[int, int]], cfg: bool, prune_layers: tuple[int, int],
                    bf16: bool, t5_folder: str | Path | None = None, vae_path: str | Path | None = None) -> dict:
    """Bytes: ``fixed`` (weights) and ``per_image`` (KV cache, pruning cache, activations), with the parts."""
    branches = 2 if cfg else 1
    act = 2 if bf16 else 4
    tokens = sum(h * w for h, w in hws)
    kv = arch.depth * tokens * arch.width * (4 + act) * branches
    last = hws[-1][0] * hws[-1][1]
    first, end = prune_layers
    prune = (end - first) * last * arch.width * (act + 4 + 4) * branches
    activations = last * (6 * 4 * arch.width + act * arch.mlp_hidden + 4 * 2 * arch.codebook_dim) * branches
    blocks, outside = transformer_params(arch)
    weights = blocks * act + outside * 4
    t5 = t5_encoder_params(t5_folder)
    t5_bytes = None if t5 is None else t5 * act
    vae = Path(vae_path).stat().st_size if vae_path and Path(vae_path).is_file() else None
    fixed = weights + (t5_bytes or 0) + (vae or 0)
    return {"fixed": fixed, "transformer": weights, "t5": t5_bytes, "vae": vae,
            "per_image": kv + prune + activations, "kv": kv, "prune_cache": prune, "activations": activations,
            "tokens": tokens, "branches": branches}


def format_memory(m: dict, batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32), device_bytes: float | None = None) -> str:
    def gb(x):
        if x is None:
            return "?"
        return f"{x / GB:.2f} GB" if x >= 0.1 * GB else f"{x / 1e6:.1f} MB"

    lines = [f"memory estimate (analytic, not measured): weights {gb(m['fixed'])} = transformer {gb(m['transformer'])}"
             f" + T5 encoder {gb(m['t5'])} + VAE {gb(m['vae'])}",
             f"per image in a batch: {gb(m['per_image'])} = KV cache {gb(m['kv'])} ({m['branches']} branch(es), "
             f"{m['tokens']:,} tokens) + pruning cache {gb(m['prune_cache'])} + activations {gb(m['activations'])}",
             "batch: " + ", ".join(f"{b} -> {gb(m['fixed'] + b * m['per_image'])}" for b in batch_sizes)]
    if device_bytes:
        fit = int(max(0, device_bytes * 0.9 - m["fixed"]) // m["per_image"])
        lines.append(f"this device: {gb(device_bytes)}; at 90% of it about {fit} image(s) per batch fit")
    return "\n".join(lines)
