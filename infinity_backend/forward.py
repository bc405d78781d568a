"""One scale's forward pass: the input tokens, every upstream block run through its submodules
(adaLN, our self-attention, upstream cross-attention and FFN) with FastVAR-style cached token pruning,
classifier-free guidance on a block's output or on the logits, and the head."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from generator.pruning import RowPruneCache, scatter_rows
from infinity_backend.attention import self_attention
from infinity_backend.rows import ScaleRows, resample_hw
from infinity_backend.state import InfinityState

#: ``gen`` below is the calling ``infinity_backend.generator.InfinityGenerator`` (its model, schedule and
#: options); typed Any so that this module does not import the generator that imports it.


def scale_input(gen: Any, state: InfinityState, k: int, rows: ScaleRows) -> torch.Tensor:
    """Scale k's input tokens for the forward's rows: SOS + start position at scale 0, else the
    accumulated codes upsampled to scale k's size and embedded (upstream's next-scale input)."""
    m, B = gen.model, state.batch
    R = rows.size
    if k == 0:
        sos = state.text["sos"][:R] if rows.legacy else state.text["sos"].index_select(0, rows.index(gen.device))
        return sos.unsqueeze(1).expand(R, 1, -1) + m.pos_start.expand(R, 1, -1)
    x = F.interpolate(state.summed_codes, size=gen.vae_scale_schedule[k], mode=gen.vae.quantizer.z_interplote_up)
    x = x.squeeze(-3)
    x = x.reshape(*x.shape[:2], -1).permute(0, 2, 1)                     # (B, L, d)
    x = m.word_embed(m.norm0_ve(x))
    if rows.legacy:
        return x.repeat(R // B, 1, 1)
    return x.index_select(0, torch.tensor(rows.images, device=x.device))


def text_rows(t: dict, rows: ScaleRows):
    """The compact text keys/values of the forward's rows (upstream's varlen layout)."""
    if rows.legacy:
        ncu = t["cu"].shape[0] - 1 if rows.uncond else rows.B
        return (t["kv"][: int(t["cu"][ncu])], t["cu"][: ncu + 1], t["max_len"])
    cu = t["cu_list"]
    parts, lens = [], []
    for r in rows.rows2:
        parts.append(t["kv"][cu[r]:cu[r + 1]])
        lens.append(cu[r + 1] - cu[r])
    cu_new = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=t["cu"].dtype, device=t["cu"].device)
    return (torch.cat(parts, 0), cu_new, max(lens))


def forward_scale(gen: Any, state: InfinityState, k: int, rows: ScaleRows):
    """Blocks + head for scale k on the forward's rows. Returns guided logits (one row per image
    that runs, (n, L, 2d)) and this scale's sub-layer outputs of the pruned block range (all rows;
    only when some row runs unpruned)."""
    m, B = gen.model, state.batch
    R, Rc = rows.size, len(rows.cond)
    both = bool(rows.uncond)
    t = state.text
    ca_kv = text_rows(t, rows)
    if rows.legacy:
        gss, cond_BD = t["gss"][:R], t["cond_BD"][:R]
    else:
        sel = rows.index(gen.device)
        gss, cond_BD = t["gss"].index_select(0, sel), t["cond_BD"].index_select(0, sel)
    h, w = gen.scale_hw[k]
    L = h * w
    x = scale_input(gen, state, k, rows)
    row_counts = rows.row_counts
    prunes = min(row_counts) < L
    record = max(row_counts) >= L
    source = None
    if prunes:  # per row: its branch's cached outputs of that image's last unpruned scale
        empty = RowPruneCache.empty(B)
        cache = state.prune_cache.get("cond") or empty
        cache = cache.rows(rows.cond)
        if rows.uncond:
            cache = RowPruneCache.cat(cache, (state.prune_cache.get("uncond") or empty).rows(rows.uncond))
        C = x.shape[-1]
        source = lambda key: cache.resampled(key, (h, w), C, x.dtype, x.device, resample_hw)  # noqa: E731
    first, last = gen.prune_layers
    cfg = gen.cfg_list[k]
    pairs = rows.cfg_pairs()
    recorded: dict = {}
    new_chunks: list[tuple] = []
    layer = 0
    for ci, chunk in enumerate(gen.chunks):
        if (m.add_lvl_embeding_only_first_block and ci == 0) or not m.add_lvl_embeding_only_first_block:
            x = x.clone()
            x[:, :h * w] += m.lvl_embed(k * torch.ones((R, h * w), dtype=torch.int).to(x.device))
        for blk in chunk:
            in_range = first <= layer < last
            x, chunk_kv = run_block(gen, blk, layer, x, k, gss, ca_kv, row_counts if (prunes and in_range) else None,
                                  source, recorded if (record and in_range) else None, state, rows)
            new_chunks.append(chunk_kv)
            if both and cfg != 1 and gen.cfg_layer is not None and layer == gen.cfg_layer:
                if rows.legacy:
                    x = cfg * x[:B] + (1 - cfg) * x[B:]
                    x = torch.cat((x, x), 0)
                else:
                    c_pos, u_pos = pairs
                    mixed = cfg * x.index_select(0, c_pos) + (1 - cfg) * x.index_select(0, u_pos)
                    x = x.index_copy(0, c_pos, mixed).index_copy(0, u_pos, mixed)
            layer += 1
    for i, c in enumerate(new_chunks):
        state.kv[i] = state.kv[i] + [rows.full_chunk(c)]
    tau = gen.tau_list[k]
    if both and cfg != 1 and gen.cfg_on_logits:
        logits = m.get_logits(x, cond_BD).mul(1 / tau)
        if rows.legacy:
            logits = cfg * logits[:B] + (1 - cfg) * logits[B:]
        else:
            c_pos, u_pos = pairs
            mixed = cfg * logits.index_select(0, c_pos) + (1 - cfg) * logits.index_select(0, u_pos)
            logits = logits[:Rc].index_copy(0, c_pos, mixed)
    else:
        logits = m.get_logits(x[:Rc], cond_BD[:Rc]).mul(1 / tau)
    return logits, recorded


def ada_norm(blk, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The block's adaptive layer norm (upstream's fused function when the block has one)."""
    if blk.fused_norm_func is not None:
        return blk.fused_norm_func(C=blk.C, eps=blk.norm_eps, x=x, scale=scale, shift=shift)
    return blk.ln_wo_grad(x.float()).mul(scale.add(1)).add_(shift)


def select_tokens(x_BLC: torch.Tensor, counts: list[int], hw: tuple[int, int]):
    """FastVAR's selection (fastvar_utils.masked_previous_scale_cache): per row, the indices of the
    tokens farthest (squared L2) from the map's mean token in descending order of that distance,
    the first ``counts[b]`` of them; rows keeping every token take them in natural order. Returns
    ((B, n_max, 1) indices, (B, n_max) validity mask or None when every row keeps n_max)."""
    B, L, c = x_BLC.shape
    mean = x_BLC.view(B, hw[0], hw[1], -1).permute(0, 3, 1, 2)
    mean = F.adaptive_avg_pool2d(mean, (1, 1)).permute(0, 2, 3, 1).view(B, 1, c)
    dev = torch.sum((x_BLC - mean) ** 2, dim=-1, keepdim=True)
    n_max = max(counts)
    idx = torch.argsort(dev, dim=1, descending=True)[:, :n_max, :]
    full = [n >= L for n in counts]
    if any(full):
        natural = torch.arange(L, device=x_BLC.device).view(1, L, 1).expand(B, L, 1)
        idx = torch.where(torch.tensor(full, device=x_BLC.device).view(B, 1, 1), natural, idx)
    if all(n == n_max for n in counts):
        return idx, None
    valid = torch.arange(n_max, device=x_BLC.device)[None, :] < torch.tensor(counts, device=x_BLC.device)[:, None]
    return idx, valid


def run_block(gen: Any, blk, layer: int, x: torch.Tensor, k: int, gss: torch.Tensor, ca_kv,
              counts: list[int] | None, source, record: dict | None, state: InfinityState, rows: ScaleRows):
    """One upstream CrossAttnBlock through its submodules (upstream's fused-norm path); ``counts``:
    tokens each row keeps (None = all, unpruned)."""
    hw = gen.scale_hw[k]
    with torch.autocast(x.device.type, enabled=False):
        if blk.shared_aln:
            g1, g2, s1, s2, b1, b2 = (blk.ada_gss + gss).unbind(2)
        else:
            g1, g2, s1, s2, b1, b2 = blk.ada_lin(gss).view(-1, 1, 6, blk.C).unbind(2)

    def gather(t, idx):
        return torch.gather(t, dim=1, index=idx.repeat(1, 1, t.shape[-1]))

    def select(t):
        return select_tokens(t, counts, hw) if counts is not None else (None, None)

    def restore(out, idx, valid, name):
        return scatter_rows(source((layer, name)).to(out.dtype), idx[..., 0], out, valid)

    # self-attention
    idx, valid = select(x)
    xs = gather(x, idx) if idx is not None else x
    h_sa, kv_chunk = self_attention(gen, blk.sa, ada_norm(blk, xs, s1, b1), state, layer, k, idx, rows, valid)
    h_sa = h_sa.mul_(g1)
    if idx is not None:
        h_sa = restore(h_sa, idx, valid, "sa")
    if record is not None:
        record[(layer, "sa")] = h_sa
    x = x + blk.drop_path(h_sa)
    # cross-attention
    idx, valid = select(x)
    xs = gather(x, idx) if idx is not None else x
    h_ca = blk.ca(blk.ca_norm(xs), ca_kv).float().mul_(blk.ca_gamma)
    if idx is not None:
        h_ca = restore(h_ca, idx, valid, "ca")
    if record is not None:
        record[(layer, "ca")] = h_ca
    x = x + h_ca
    # FFN
    idx, valid = select(x)
    xs = gather(x, idx) if idx is not None else x
    h_ffn = blk.ffn(ada_norm(blk, xs, s2, b2)).mul(g2)
    if idx is not None:
        h_ffn = restore(h_ffn, idx, valid, "ffn")
    if record is not None:
        record[(layer, "ffn")] = h_ffn
    x = x + blk.drop_path(h_ffn)
    return x, kv_chunk
