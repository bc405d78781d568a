"""Self-attention over the KV cache held in the state (upstream SelfAttention's maths, non-flash layout),
with padded keys masked for rows of different histories, and 2-D RoPE at the kept tokens' positions."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from infinity_backend.rows import ScaleRows
from infinity_backend.state import InfinityState

#: ``gen`` below is the calling ``infinity_backend.generator.InfinityGenerator`` (its model, schedule and
#: options); typed Any so that this module does not import the generator that imports it.


def self_attention(gen: Any, sa, x: torch.Tensor, state: InfinityState, layer: int, k: int,
                   idx: torch.Tensor | None, rows: ScaleRows, new_valid: torch.Tensor | None):
    """Upstream SelfAttention.forward (non-flash layout) with the KV cache in ``state``: returns the
    projected output and this scale's (k, v, both, mask) chunk for the forward's rows. ``idx``:
    kept token positions (RoPE); ``new_valid``: which of this scale's tokens are real per row."""
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
    q, k_ = apply_rope(gen, q, k_, k, idx)
    B = state.batch
    chunks = state.kv[layer]
    both = bool(rows.uncond)
    if rows.legacy and new_valid is None and all(ch[3] is None for ch in chunks):
        if both:
            if all(ch[2] for ch in chunks):
                k_all = torch.cat([ch[0] for ch in chunks] + [k_], dim=2)
                v_all = torch.cat([ch[1] for ch in chunks] + [v], dim=2)
                oup = attend(sa, q, k_all, v_all)
            else:  # branches hold different scales: attend per branch
                oc = attend(sa, q[:B], torch.cat(gather_kv(state, layer, "cond", 0) + [k_[:B]], 2),
                            torch.cat(gather_kv(state, layer, "cond", 1) + [v[:B]], 2))
                ou = attend(sa, q[B:], torch.cat(gather_kv(state, layer, "uncond", 0) + [k_[B:]], 2),
                            torch.cat(gather_kv(state, layer, "uncond", 1) + [v[B:]], 2))
                oup = torch.cat((oc, ou), 0)
        else:
            k_all = torch.cat(gather_kv(state, layer, "cond", 0) + [k_], dim=2)
            v_all = torch.cat(gather_kv(state, layer, "cond", 1) + [v], dim=2)
            oup = attend(sa, q, k_all, v_all)
    else:  # rows with different histories or kept counts: padded keys masked out
        Rc = len(rows.cond)
        kc, vc, mc = past_rows(chunks, rows.cond, B, uncond=False)
        new_m = new_valid if new_valid is not None else torch.ones(Bn, l, dtype=torch.bool, device=q.device)
        if both:
            ku, vu, mu = past_rows(chunks, rows.uncond, B, uncond=True)
        if both and kc.shape[2] == ku.shape[2]:
            k_all = torch.cat([torch.cat([kc, ku], 0), k_], 2)
            v_all = torch.cat([torch.cat([vc, vu], 0), v], 2)
            oup = attend(sa, q, k_all, v_all, torch.cat([torch.cat([mc, mu], 0), new_m], 1))
        else:
            oup = attend(sa, q[:Rc], torch.cat([kc, k_[:Rc]], 2), torch.cat([vc, v[:Rc]], 2),
                         torch.cat([mc, new_m[:Rc]], 1))
            if both:
                ou = attend(sa, q[Rc:], torch.cat([ku, k_[Rc:]], 2), torch.cat([vu, v[Rc:]], 2),
                            torch.cat([mu, new_m[Rc:]], 1))
                oup = torch.cat((oup, ou), 0)
    out = sa.proj_drop(sa.proj(oup.transpose(1, 2).reshape(Bn, l, C)))
    return out, (k_, v, both, new_valid)


def past_rows(chunks: list[tuple], images: list[int], B: int, uncond: bool):
    """Past keys, values and validity (n, H, L_past, c), (n, L_past) of one branch for the listed images."""
    ks, vs, ms = [], [], []
    for ck, cv, ch_both, cm in chunks:
        if uncond and not ch_both:
            continue
        index = torch.tensor([B + b if uncond else b for b in images], device=ck.device)
        ks.append(ck.index_select(0, index))
        vs.append(cv.index_select(0, index))
        ms.append(torch.ones(len(images), ck.shape[2], dtype=torch.bool, device=ck.device) if cm is None
                  else cm.index_select(0, index))
    if not ks:
        raise ValueError("no past keys for this branch (scale 0 always runs first)")
    return torch.cat(ks, 2), torch.cat(vs, 2), torch.cat(ms, 1)


def gather_kv(state: InfinityState, layer: int, branch: str, which: int) -> list[torch.Tensor]:
    """One branch's past keys (which=0) or values (1) of a layer, chunk by chunk (uniform batches)."""
    B = state.batch
    if branch == "cond":
        return [ch[which][:B] for ch in state.kv[layer]]
    return [ch[which][B:] for ch in state.kv[layer] if ch[2]]


def attend(sa, q, k, v, mask: torch.Tensor | None = None):
    """SDPA with the layer's scale; ``mask`` (rows, keys) bool marks real keys (None = all real)."""
    if q.device.type == "cuda":
        q, k = q.to(v.dtype), k.to(v.dtype)
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=attn_mask, scale=sa.scale, dropout_p=0)


def apply_rope(gen: Any, q: torch.Tensor, k: torch.Tensor, scale_index: int,
               idx: torch.Tensor | None):
    """upstream basic.apply_rotary_emb, with the kept tokens' positions gathered when pruned."""
    grid = gen.model.rope2d_freqs_grid
    key = str(tuple(gen.scale_schedule))
    qk = torch.stack((q, k), dim=0)
    with torch.autocast(qk.device.type if qk.device.type != "mps" else "cpu", enabled=False):
        start = sum(t * h * w for t, h, w in gen.scale_schedule[:scale_index])
        h, w = gen.scale_hw[scale_index]
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
    # k goes into the KV cache: as a view it would keep the stacked (q, k) storage alive, twice its own size,
    # for the whole image (measured on the tiny model: 4.8 MB of cache against 3.2 MB of keys and values)
    return q, k.clone()
