"""The Infinity generator: upstream blocks stepped one scale per call with explicit state, our
cached token pruning and scale skipping, bitwise sampling with CFG, Infinity's FLOPs model."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from generator.protocol import (BatchStepReport, StepReport, check_prompts_and_seeds, combine_reports,
                                per_image_decisions, scale_seed, whole_batch_codes)
from generator.pruning import RowPruneCache, row_token_counts, scatter_rows
from infinity_backend.arch import InfinityArch, default_prune_layers, infinity_prefill_flops, infinity_schedule_flops, infinity_step_flops
from infinity_backend.options import InfinityOptions
from infinity_backend.state import InfinityState


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
        self._decode_flops: float | None = None  # counted on first use (FlopCounterMode), then cached
        self._text_flops: float | None = None

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
        if unconditional is None:
            unconditional = [self.guided] * self.num_scales
        return infinity_schedule_flops(self.arch, self.scale_hw, ratios, unconditional, self.prune_layers)

    def _prefill_flops(self) -> float:
        return infinity_prefill_flops(self.arch, 2 if self.guided else 1)

    def flops_full(self) -> float:
        return self._prefill_flops() + sum(self.schedule_flops([0.0] * self.num_scales))

    def uses_unconditional(self, scale_index: int) -> bool:
        """Whether this scale runs the unconditional branch unless a step drops it (CFG is on or off for
        the whole image in upstream Infinity)."""
        return self.guided

    def flops_fraction(self, ratios: list[float], unconditional: list[bool] | None = None) -> float:
        return (self._prefill_flops() + sum(self.schedule_flops(ratios, unconditional))) / self.flops_full()

    def decode_flops(self) -> float:
        """FLOPs of the VAE decoder for one image at the final scale's latent size, counted once with
        FlopCounterMode on the loaded VAE (a forward pass on a zero latent) and cached."""
        if self._decode_flops is None:
            from generator.flop_count import count_flops

            _, H, W = self.vae_scale_schedule[-1]
            z = torch.zeros(1, self.model.codebook_dim, H, W, device=self.device)
            with self._amp():
                self._decode_flops = count_flops(lambda: self.vae.decode(z))
        return self._decode_flops

    def text_flops(self) -> float:
        """FLOPs of the text encoder for one prompt (T5 runs on the prompt padded to its max_length, so
        every prompt costs the same), counted once with FlopCounterMode and cached. Not in
        ``flops_full()``, whose prefill starts from the encoder's output."""
        if self._text_flops is None:
            from generator.flop_count import count_flops

            with self._amp():
                self._text_flops = count_flops(lambda: self.text_encoder(["a photo"]))
        return self._text_flops

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
        text = {"kv": kv_compact, "cu": cu, "cu_list": [int(c) for c in cu.tolist()], "max_len": max_len,
                "cond_BD": cond_BD, "gss": gss, "sos": sos}
        d = m.codebook_dim
        _, H, W = self.vae_scale_schedule[-1]
        rngs = None
        if self.opts.rng == "upstream":
            rngs = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        return InfinityState(
            prompts=list(prompts), seeds=[int(s) for s in seeds], num_scales=self.num_scales,
            summed_codes=torch.zeros(B, d, 1, H, W, device=self.device), text=text,
            kv=[[] for _ in range(self.depth)], rngs=rngs, codes=[None] * self.num_scales,
            flops_prefill=self._prefill_flops(),
            kv_len_rows={br: [[0] * self.depth for _ in range(B)] for br in ("cond", "uncond")})

    # ---- one scale --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, state: InfinityState, ratio, drop_unconditional=False) -> StepReport | BatchStepReport:
        """Run scale ``state.scale_index``; advances the state. ``ratio``: one pruning ratio for every
        image or one per image (r >= 1 skips); ``drop_unconditional``: a bool or one per image. Images
        that decided differently run in one forward pass (kept tokens padded to the largest count,
        padded keys masked); an image that skips gets no codes and no KV entries."""
        if state.finished:
            raise IndexError(f"all {state.num_scales} scales are already generated; start a new generation")
        B = state.batch
        ratios, drops = per_image_decisions(ratio, drop_unconditional, B)
        k = state.scale_index
        h, w = self.scale_hw[k]
        L = h * w
        counts = row_token_counts(L, ratios)
        cond = [b for b in range(B) if counts[b] > 0]
        if not cond:
            return state.record_skip(w, h, ratios)
        uses_uncond = [counts[b] > 0 and self.guided and not drops[b] for b in range(B)]
        rows = _Rows(B, cond, [b for b in range(B) if uses_uncond[b]], counts)
        reports = []
        for b in range(B):
            if counts[b] == 0:
                reports.append(StepReport(k, w, h, L, ratios[b], 0, True, False, 0.0))
                continue
            n_keep = None if counts[b] >= L else counts[b]
            lens = [list(state.kv_len_rows["cond"][b])] + ([list(state.kv_len_rows["uncond"][b])] if uses_uncond[b] else [])
            flops = infinity_step_flops(self.arch, (h, w), k, n_keep, self.prune_layers, lens)
            reports.append(StepReport(k, w, h, L, ratios[b], counts[b], False, uses_uncond[b], flops))
        with self._amp():
            logits_BlV, recorded = self._forward(state, k, rows)
            idx_Bhwd, entropy_B = self._sample(state, logits_BlV, k, cond)
            self._add_codes(state, k, idx_Bhwd, cond)
        first, last = self.prune_layers
        for branch, images in (("cond", rows.cond), ("uncond", rows.uncond)):
            lens = state.kv_len_rows[branch]
            for b in images:
                pruned = counts[b] < L
                lens[b] = [n + (counts[b] if pruned and first <= i < last else L) for i, n in enumerate(lens[b])]
        if recorded:  # images that ran unpruned now restore from this scale
            cache = dict(state.prune_cache)
            offset = 0
            for branch, images in (("cond", rows.cond), ("uncond", rows.uncond)):
                pos = [offset + j for j, b in enumerate(images) if counts[b] >= L]
                offset += len(images)
                if not pos:
                    continue
                if pos == list(range(pos[0], pos[-1] + 1)):
                    tensors = {key: t[pos[0]:pos[-1] + 1] for key, t in recorded.items()}
                else:
                    sel = torch.tensor(pos, device=self.device)
                    tensors = {key: t.index_select(0, sel) for key, t in recorded.items()}
                base = cache.get(branch) or RowPruneCache.empty(B)
                cache[branch] = base.updated([images[p - (offset - len(images))] for p in pos], tensors, (h, w))
            state.prune_cache = cache
        if len(cond) == B:
            state.last_entropy_B = entropy_B
        else:
            prev = state.last_entropy_B
            if prev is None:  # NaN = "no scale sampled yet" for images that have not run one
                prev = torch.full((B,), float("nan"), dtype=entropy_B.dtype, device=entropy_B.device)
            state.last_entropy_B = prev.index_copy(0, torch.tensor(cond, device=prev.device), entropy_B)
        rep = combine_reports(reports)
        state.reports.append(rep)
        state.scale_index += 1
        return rep

    def _scale_input(self, state: InfinityState, k: int, rows: "_Rows") -> torch.Tensor:
        m, B = self.model, state.batch
        R = rows.size
        if k == 0:
            sos = state.text["sos"][:R] if rows.legacy else state.text["sos"].index_select(0, rows.index(self.device))
            return sos.unsqueeze(1).expand(R, 1, -1) + m.pos_start.expand(R, 1, -1)
        x = F.interpolate(state.summed_codes, size=self.vae_scale_schedule[k], mode=self.vae.quantizer.z_interplote_up)
        x = x.squeeze(-3)
        x = x.reshape(*x.shape[:2], -1).permute(0, 2, 1)                     # (B, L, d)
        x = m.word_embed(m.norm0_ve(x))
        if rows.legacy:
            return x.repeat(R // B, 1, 1)
        return x.index_select(0, torch.tensor(rows.images, device=x.device))

    def _text_rows(self, t: dict, rows: "_Rows"):
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

    def _forward(self, state: InfinityState, k: int, rows: "_Rows"):
        """Blocks + head for scale k on the forward's rows. Returns guided logits (one row per image
        that runs, (n, L, 2d)) and this scale's sub-layer outputs of the pruned block range (all rows;
        only when some row runs unpruned)."""
        m, B = self.model, state.batch
        R, Rc = rows.size, len(rows.cond)
        both = bool(rows.uncond)
        t = state.text
        ca_kv = self._text_rows(t, rows)
        if rows.legacy:
            gss, cond_BD = t["gss"][:R], t["cond_BD"][:R]
        else:
            sel = rows.index(self.device)
            gss, cond_BD = t["gss"].index_select(0, sel), t["cond_BD"].index_select(0, sel)
        h, w = self.scale_hw[k]
        L = h * w
        x = self._scale_input(state, k, rows)
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
            source = lambda key: cache.resampled(key, (h, w), C, x.dtype, x.device, _resample_hw)  # noqa: E731
        first, last = self.prune_layers
        cfg = self.cfg_list[k]
        pairs = rows.cfg_pairs()
        recorded: dict = {}
        new_chunks: list[tuple] = []
        layer = 0
        for ci, chunk in enumerate(self.chunks):
            if (m.add_lvl_embeding_only_first_block and ci == 0) or not m.add_lvl_embeding_only_first_block:
                x = x.clone()
                x[:, :h * w] += m.lvl_embed(k * torch.ones((R, h * w), dtype=torch.int).to(x.device))
            for blk in chunk:
                in_range = first <= layer < last
                x, chunk_kv = self._block(blk, layer, x, k, gss, ca_kv, row_counts if (prunes and in_range) else None,
                                          source, recorded if (record and in_range) else None, state, rows)
                new_chunks.append(chunk_kv)
                if both and cfg != 1 and self.cfg_layer is not None and layer == self.cfg_layer:
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
        tau = self.tau_list[k]
        if both and cfg != 1 and self.cfg_on_logits:
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

    def _ada_norm(self, blk, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if blk.fused_norm_func is not None:
            return blk.fused_norm_func(C=blk.C, eps=blk.norm_eps, x=x, scale=scale, shift=shift)
        return blk.ln_wo_grad(x.float()).mul(scale.add(1)).add_(shift)

    @staticmethod
    def _select(x_BLC: torch.Tensor, counts: list[int], hw: tuple[int, int]):
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

    def _block(self, blk, layer: int, x: torch.Tensor, k: int, gss: torch.Tensor, ca_kv, counts: list[int] | None,
               source, record: dict | None, state: InfinityState, rows: "_Rows"):
        """One upstream CrossAttnBlock through its submodules (upstream's fused-norm path); ``counts``:
        tokens each row keeps (None = all, unpruned)."""
        hw = self.scale_hw[k]
        with torch.autocast(x.device.type, enabled=False):
            if blk.shared_aln:
                g1, g2, s1, s2, b1, b2 = (blk.ada_gss + gss).unbind(2)
            else:
                g1, g2, s1, s2, b1, b2 = blk.ada_lin(gss).view(-1, 1, 6, blk.C).unbind(2)

        def gather(t, idx):
            return torch.gather(t, dim=1, index=idx.repeat(1, 1, t.shape[-1]))

        def select(t):
            return self._select(t, counts, hw) if counts is not None else (None, None)

        def restore(out, idx, valid, name):
            return scatter_rows(source((layer, name)).to(out.dtype), idx[..., 0], out, valid)

        # self-attention
        idx, valid = select(x)
        xs = gather(x, idx) if idx is not None else x
        h_sa, kv_chunk = self._self_attention(blk.sa, self._ada_norm(blk, xs, s1, b1), state, layer, k, idx, rows, valid)
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
        h_ffn = blk.ffn(self._ada_norm(blk, xs, s2, b2)).mul(g2)
        if idx is not None:
            h_ffn = restore(h_ffn, idx, valid, "ffn")
        if record is not None:
            record[(layer, "ffn")] = h_ffn
        x = x + blk.drop_path(h_ffn)
        return x, kv_chunk

    def _self_attention(self, sa, x: torch.Tensor, state: InfinityState, layer: int, k: int,
                        idx: torch.Tensor | None, rows: "_Rows", new_valid: torch.Tensor | None):
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
        q, k_ = self._rope(q, k_, k, idx)
        B = state.batch
        chunks = state.kv[layer]
        both = bool(rows.uncond)
        if rows.legacy and new_valid is None and all(ch[3] is None for ch in chunks):
            if both:
                if all(ch[2] for ch in chunks):
                    k_all = torch.cat([ch[0] for ch in chunks] + [k_], dim=2)
                    v_all = torch.cat([ch[1] for ch in chunks] + [v], dim=2)
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
        else:  # rows with different histories or kept counts: padded keys masked out
            Rc = len(rows.cond)
            kc, vc, mc = self._past_rows(chunks, rows.cond, B, uncond=False)
            new_m = new_valid if new_valid is not None else torch.ones(Bn, l, dtype=torch.bool, device=q.device)
            if both:
                ku, vu, mu = self._past_rows(chunks, rows.uncond, B, uncond=True)
            if both and kc.shape[2] == ku.shape[2]:
                k_all = torch.cat([torch.cat([kc, ku], 0), k_], 2)
                v_all = torch.cat([torch.cat([vc, vu], 0), v], 2)
                oup = self._attend(sa, q, k_all, v_all, torch.cat([torch.cat([mc, mu], 0), new_m], 1))
            else:
                oup = self._attend(sa, q[:Rc], torch.cat([kc, k_[:Rc]], 2), torch.cat([vc, v[:Rc]], 2),
                                   torch.cat([mc, new_m[:Rc]], 1))
                if both:
                    ou = self._attend(sa, q[Rc:], torch.cat([ku, k_[Rc:]], 2), torch.cat([vu, v[Rc:]], 2),
                                      torch.cat([mu, new_m[Rc:]], 1))
                    oup = torch.cat((oup, ou), 0)
        out = sa.proj_drop(sa.proj(oup.transpose(1, 2).reshape(Bn, l, C)))
        return out, (k_, v, both, new_valid)

    @staticmethod
    def _past_rows(chunks: list[tuple], images: list[int], B: int, uncond: bool):
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

    def _gather_kv(self, state: InfinityState, layer: int, branch: str, which: int) -> list[torch.Tensor]:
        B = state.batch
        if branch == "cond":
            return [ch[which][:B] for ch in state.kv[layer]]
        return [ch[which][B:] for ch in state.kv[layer] if ch[2]]

    @staticmethod
    def _attend(sa, q, k, v, mask: torch.Tensor | None = None):
        if q.device.type == "cuda":
            q, k = q.to(v.dtype), k.to(v.dtype)
        attn_mask = None if mask is None else mask[:, None, None, :]
        return F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=attn_mask, scale=sa.scale, dropout_p=0)

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

    def _sample(self, state: InfinityState, logits_BlV: torch.Tensor, k: int, images: list[int]):
        """Bitwise sampling with upstream's filter for the listed images (one logits row each); returns
        bits (n, h, w, d) and entropy (n,) in nats."""
        B, l, V = logits_BlV.shape
        bits = logits_BlV.float().reshape(B, -1, 2)
        p = bits.softmax(-1)
        entropy_B = -(p * torch.log_softmax(bits, -1)).sum(-1).reshape(B, l, -1).sum(-1).mean(-1)
        rows = []
        for j, b in enumerate(images):
            if state.rngs is not None:
                g = state.rngs[b]
            else:
                g = torch.Generator(device=logits_BlV.device).manual_seed(scale_seed(state.seeds[b], k))
            lg = logits_BlV[j:j + 1].reshape(1, -1, 2).clone()
            rows.append(self._sample_fn(lg, rng=g, top_k=self.opts.top_k, top_p=self.opts.top_p, num_samples=1)[:, :, 0])
        h, w = self.scale_hw[k]
        idx = torch.cat(rows, 0).reshape(B, l, -1).reshape(B, h, w, -1)
        return idx, entropy_B

    def _add_codes(self, state: InfinityState, k: int, idx_Bhwd: torch.Tensor, images: list[int]) -> None:
        q = self.vae.quantizer
        codes = q.lfq.indices_to_codes(idx_Bhwd.unsqueeze(1), label_type="bit_label")   # (n, d, 1, h, w)
        if k != self.num_scales - 1:
            codes = F.interpolate(codes, size=self.vae_scale_schedule[-1], mode=q.z_interplote_up)
        if len(images) < state.batch:  # only some images ran this scale
            index = torch.tensor(images, device=codes.device)
            state.summed_codes = state.summed_codes.index_copy(
                0, index, state.summed_codes.index_select(0, index) + codes.to(state.summed_codes.dtype))
            per_image: list = [None] * state.batch
            for j, b in enumerate(images):
                per_image[b] = idx_Bhwd[j]
            state.codes[k] = per_image
            return
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
        idx = whole_batch_codes(state, scale_index)
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
        idx = whole_batch_codes(state, scale_index)
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



def _resample_hw(cached_BSC: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """A cached (B, h*w, C) map area-resampled to ``to_hw`` (B, H*W, C), as FastVAR restores pruned slots."""
    B, _, c = cached_BSC.shape
    full = cached_BSC.reshape(B, from_hw[0], from_hw[1], c).permute(0, 3, 1, 2)
    return F.interpolate(full, size=to_hw, mode="area").permute(0, 2, 3, 1).reshape(B, to_hw[0] * to_hw[1], c)


class _Rows:
    """The (branch, image) rows one scale's forward runs: first the conditional rows of ``cond``
    (images that run the scale), then the unconditional rows of ``uncond`` (images that also run the
    guidance branch). ``legacy``: every image runs, with the same branch set (the uniform path,
    whose tensor layout matches upstream's: cond rows [0, B), uncond rows [B, 2B))."""

    def __init__(self, batch: int, cond: list[int], uncond: list[int], counts: list[int]) -> None:
        self.B, self.cond, self.uncond = batch, cond, uncond
        self.row_counts = [counts[b] for b in cond] + [counts[b] for b in uncond]
        everyone = list(range(batch))
        self.legacy = cond == everyone and uncond in ([], everyone)
        self.rows2 = cond + [batch + b for b in uncond]     # row numbers in the 2B layout of the text tensors
        self.images = cond + uncond

    @property
    def size(self) -> int:
        return len(self.rows2)

    def index(self, device) -> torch.Tensor:
        return torch.tensor(self.rows2, device=device)

    def cfg_pairs(self):
        """(positions of the cond rows, positions of the matching uncond rows) for images running both."""
        pos = {b: j for j, b in enumerate(self.cond)}
        c = torch.tensor([pos[b] for b in self.uncond], dtype=torch.long)
        u = torch.tensor([len(self.cond) + j for j in range(len(self.uncond))], dtype=torch.long)
        return c, u

    def full_chunk(self, chunk: tuple) -> tuple:
        """This scale's (k, v, both, mask) KV chunk laid out over every image (B rows, or 2B with the
        unconditional branch); rows of images that did not run are masked padding."""
        k_, v, both, valid = chunk
        if self.legacy and valid is None:
            return (k_, v, both, None)
        n_rows = 2 * self.B if both else self.B
        index = torch.tensor(self.rows2, device=k_.device)
        k_full = k_.new_zeros(n_rows, *k_.shape[1:]).index_copy_(0, index, k_)
        v_full = v.new_zeros(n_rows, *v.shape[1:]).index_copy_(0, index, v)
        mask = torch.zeros(n_rows, k_.shape[2], dtype=torch.bool, device=k_.device)
        mask.index_copy_(0, index, torch.ones(len(self.rows2), k_.shape[2], dtype=torch.bool, device=k_.device)
                         if valid is None else valid)
        return (k_full, v_full, both, mask)
