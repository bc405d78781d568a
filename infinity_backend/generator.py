"""The Infinity generator: upstream blocks stepped one scale per call with explicit state, our
cached token pruning and scale skipping, bitwise sampling with CFG, Infinity's FLOPs model."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from generator.protocol import StepReport, check_prompts_and_seeds, scale_seed, validate_ratio
from generator.pruning import tokens_kept
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
