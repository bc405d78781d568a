"""Text-conditional next-scale transformer (VAR/Infinity-like), small and explicit.

No module keeps hidden state between calls: the KV cache, the cross-attention keys/values and
the AdaLN modulation of a generation live in a ``BranchContext`` that the caller owns and passes in.
The same blocks serve teacher-forced training (whole sequence, block-causal mask) and stepwise
generation (one scale, attending to the cached keys of earlier scales).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from embedded.config import TransformerConfig
from generator.pruning import PruningPlan, RowPruneCache, gather_tokens, scatter_rows, select_rows
from embedded.text import PromptEncoder


@dataclass
class BranchContext:
    """Per-generation tensors of one guidance branch (conditional or unconditional) for B images.

    Static after ``NextScaleTransformer.prefill``: ada_B6D (per block), head_ada_B2D, sos_B1D,
    ca_k/ca_v (per block, (B, H, T, c)), text_mask_B11T. Dynamic: kv (per block, self-attention keys
    and values of every token fed so far, (B, H, L_kv, c)), kv_mask (per block, (B, L_kv) bool, True
    where an entry is real; None = all real: images that decided differently at some scale hold
    masked padding there), prune (each image's sub-layer outputs of its last unpruned scale).
    """

    ada_B6D: list[torch.Tensor]
    head_ada_B2D: torch.Tensor
    sos_B1D: torch.Tensor
    ca_k: list[torch.Tensor]
    ca_v: list[torch.Tensor]
    text_mask_B11T: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    kv_mask: list[torch.Tensor | None] = field(default_factory=list)
    prune: RowPruneCache | None = None

    def __post_init__(self) -> None:
        if not self.kv_mask:
            self.kv_mask = [None] * len(self.kv)
        if self.prune is None:
            self.prune = RowPruneCache.empty(self.batch)

    @property
    def batch(self) -> int:
        return self.sos_B1D.shape[0]

    def kv_lengths(self) -> tuple[int, ...]:
        """Per block: KV entries held (padding included)."""
        return tuple(0 if kv is None else kv[0].shape[2] for kv in self.kv)

    def kv_lengths_rows(self) -> list[tuple[int, ...]]:
        """Per image, per block: real KV entries (what the image would hold alone)."""
        cols = []
        for kv, m in zip(self.kv, self.kv_mask):
            if kv is None:
                cols.append([0] * self.batch)
            elif m is None:
                cols.append([kv[0].shape[2]] * self.batch)
            else:
                cols.append(m.sum(1).tolist())
        return [tuple(c[b] for c in cols) for b in range(self.batch)]

    def copy(self) -> "BranchContext":
        """Shallow copy: tensors are never modified in place, so containers are all we copy."""
        return BranchContext(self.ada_B6D, self.head_ada_B2D, self.sos_B1D, self.ca_k, self.ca_v,
                             self.text_mask_B11T, list(self.kv), list(self.kv_mask), self.prune)

    @staticmethod
    def cat(a: "BranchContext", b: "BranchContext") -> "BranchContext":
        """Stack two branches along the batch (their KV lengths must agree)."""
        c = lambda x, y: torch.cat([x, y], 0)  # noqa: E731
        kv = [None if ka is None else (c(ka[0], kb[0]), c(ka[1], kb[1])) for ka, kb in zip(a.kv, b.kv)]
        masks = []
        for ka, ma, mb in zip(a.kv, a.kv_mask, b.kv_mask):
            if ma is None and mb is None:
                masks.append(None)
            else:
                L = ka[0].shape[2]
                masks.append(c(_all_real(ma, a.batch, L, ka[0].device), _all_real(mb, b.batch, L, ka[0].device)))
        return BranchContext([c(x, y) for x, y in zip(a.ada_B6D, b.ada_B6D)], c(a.head_ada_B2D, b.head_ada_B2D),
                             c(a.sos_B1D, b.sos_B1D), [c(x, y) for x, y in zip(a.ca_k, b.ca_k)],
                             [c(x, y) for x, y in zip(a.ca_v, b.ca_v)], c(a.text_mask_B11T, b.text_mask_B11T),
                             kv, masks, RowPruneCache.cat(a.prune, b.prune))

    def rows(self, start: int, stop: int) -> "BranchContext":
        """The branch made of batch rows [start, stop) (views, no copies)."""
        s = slice(start, stop)
        return BranchContext([x[s] for x in self.ada_B6D], self.head_ada_B2D[s], self.sos_B1D[s],
                             [x[s] for x in self.ca_k], [x[s] for x in self.ca_v], self.text_mask_B11T[s],
                             [None if kv is None else (kv[0][s], kv[1][s]) for kv in self.kv],
                             [None if m is None else m[s] for m in self.kv_mask],
                             self.prune.rows(list(range(start, stop))))

    def select(self, index: list[int]) -> "BranchContext":
        """The branch made of the listed batch rows (itself when that is every row)."""
        if list(index) == list(range(self.batch)):
            return self
        t = torch.tensor(index, dtype=torch.long, device=self.sos_B1D.device)
        sel = lambda x: x.index_select(0, t)  # noqa: E731
        return BranchContext([sel(x) for x in self.ada_B6D], sel(self.head_ada_B2D), sel(self.sos_B1D),
                             [sel(x) for x in self.ca_k], [sel(x) for x in self.ca_v], sel(self.text_mask_B11T),
                             [None if kv is None else (sel(kv[0]), sel(kv[1])) for kv in self.kv],
                             [None if m is None else sel(m) for m in self.kv_mask], self.prune.rows(index))

    def pad_kv_to(self, lengths: tuple[int, ...]) -> "BranchContext":
        """KV padded with masked entries up to ``lengths`` per block (to stack with a longer branch)."""
        if tuple(lengths) == self.kv_lengths():
            return self
        out = self.copy()
        for i, (kv, target) in enumerate(zip(self.kv, lengths)):
            have = 0 if kv is None else kv[0].shape[2]
            if target == have:
                continue
            if kv is None:
                raise ValueError("cannot pad an empty KV cache (the other branch must have run scale 0)")
            extra = target - have
            out.kv[i] = (F.pad(kv[0], (0, 0, 0, extra)), F.pad(kv[1], (0, 0, 0, extra)))
            mask = _all_real(self.kv_mask[i], self.batch, have, kv[0].device)
            out.kv_mask[i] = F.pad(mask, (0, extra), value=False)
        return out

    def merged(self, parts: list[tuple[list[int], "BranchContext"]]) -> "BranchContext":
        """This branch after a scale that ran only some rows, in one or more forwards: ``parts`` =
        [(rows, ran)], ``ran`` being those rows' context after the scale (KV = old entries + this
        scale's). This scale's entries become one chunk as wide as the widest part; rows that did not
        run (and narrower parts' tail) hold masked padding there, so every row keeps the same KV length."""
        out = self.copy()
        device = self.sos_B1D.device
        index_of = [torch.tensor(rows, dtype=torch.long, device=device) for rows, _ in parts]  # once, not per block
        for i, old in enumerate(self.kv):
            have = 0 if old is None else old[0].shape[2]
            news = [(rows, ran.kv[i][0][:, :, have:], ran.kv[i][1][:, :, have:], ran.kv_mask[i]) for rows, ran in parts]
            n = max(k_new.shape[2] for _, k_new, _, _ in news)
            k0 = news[0][1]
            k_full = k0.new_zeros(self.batch, k0.shape[1], n, k0.shape[3])
            v_full = torch.zeros_like(k_full)
            chunk_mask = torch.zeros(self.batch, n, dtype=torch.bool, device=device)
            for index, (rows, k_new, v_new, m_new) in zip(index_of, news):
                extra = n - k_new.shape[2]
                part_mask = (torch.ones(len(rows), k_new.shape[2], dtype=torch.bool, device=device) if m_new is None
                             else m_new[:, have:])
                k_full.index_copy_(0, index, F.pad(k_new, (0, 0, 0, extra)) if extra else k_new)
                v_full.index_copy_(0, index, F.pad(v_new, (0, 0, 0, extra)) if extra else v_new)
                chunk_mask.index_copy_(0, index, F.pad(part_mask, (0, extra), value=False) if extra else part_mask)
            if old is None:
                out.kv[i] = (k_full, v_full)
                out.kv_mask[i] = chunk_mask
            else:
                out.kv[i] = (torch.cat([old[0], k_full], 2), torch.cat([old[1], v_full], 2))
                out.kv_mask[i] = torch.cat([_all_real(self.kv_mask[i], self.batch, have, device), chunk_mask], 1)
        return out


def _all_real(mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    return torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask


class Block(nn.Module):
    """Pre-norm block: AdaLN self-attention, cross-attention to the prompt, AdaLN MLP."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        D = cfg.width
        self.heads = cfg.num_heads
        self.ln_sa = nn.LayerNorm(D, elementwise_affine=False)
        self.qkv = nn.Linear(D, 3 * D)
        self.sa_proj = nn.Linear(D, D)
        self.ln_ca = nn.LayerNorm(D)
        self.ca_q = nn.Linear(D, D)
        self.ca_kv = nn.Linear(D, 2 * D)
        self.ca_proj = nn.Linear(D, D)
        self.ln_ffn = nn.LayerNorm(D, elementwise_affine=False)
        self.fc1 = nn.Linear(D, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, D)
        # per-block offset added to the shared AdaLN projection (Infinity's ada_gss)
        self.ada_gss_16D = nn.Parameter(torch.zeros(1, 6, D))

    def _heads(self, x_BnD: torch.Tensor) -> torch.Tensor:
        B, n, D = x_BnD.shape
        return x_BnD.view(B, n, self.heads, D // self.heads).transpose(1, 2)

    def text_kv(self, text_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.ca_kv(text_BTD).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    # ---- sub-layers: each maps (a subset of) the residual stream to its residual update --------
    def self_attention(self, x_BnD, ada_B6D, past_kv, attn_mask=None, past_mask=None, new_mask=None):
        """past_mask (B, L_past) / new_mask (B, n): which keys are real (None = all); padded keys are
        masked out of every query's attention."""
        gamma1, _, scale1, _, shift1, _ = ada_B6D.unbind(1)
        h = self.ln_sa(x_BnD) * (1 + scale1[:, None]) + shift1[:, None]
        B, n, D = h.shape
        q, k, v = self.qkv(h).view(B, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        past_len = 0
        if past_kv is not None:
            past_len = past_kv[0].shape[2]
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        if past_mask is not None or new_mask is not None:
            attn_mask = torch.cat([_all_real(past_mask, B, past_len, h.device),
                                   _all_real(new_mask, B, n, h.device)], 1)[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.sa_proj(a.transpose(1, 2).reshape(B, n, D)) * gamma1[:, None]
        return out, (k, v)

    def cross_attention(self, x_BnD, ca_k, ca_v, text_mask_B11T):
        B, n, D = x_BnD.shape
        q = self._heads(self.ca_q(self.ln_ca(x_BnD)))
        a = F.scaled_dot_product_attention(q, ca_k, ca_v, attn_mask=text_mask_B11T)
        return self.ca_proj(a.transpose(1, 2).reshape(B, n, D))

    def ffn(self, x_BnD, ada_B6D):
        _, gamma2, _, scale2, _, shift2 = ada_B6D.unbind(1)
        h = self.ln_ffn(x_BnD) * (1 + scale2[:, None]) + shift2[:, None]
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh")) * gamma2[:, None]

    # ---- whole block ----------------------------------------------------------------------------
    def forward(self, x_BLD, ada_B6D, ca_k, ca_v, text_mask_B11T, past_kv=None, attn_mask=None, past_mask=None):
        """Unpruned block; returns (x, (k, v) of past+current tokens)."""
        sa, kv = self.self_attention(x_BLD, ada_B6D, past_kv, attn_mask, past_mask)
        x_BLD = x_BLD + sa
        x_BLD = x_BLD + self.cross_attention(x_BLD, ca_k, ca_v, text_mask_B11T)
        return x_BLD + self.ffn(x_BLD, ada_B6D), kv

    def forward_pruned(self, x_BLD, ada_B6D, ca_k, ca_v, text_mask_B11T, past_kv, past_mask, plan: PruningPlan,
                       index: int):
        """Cached token pruning (see generator.pruning): each sub-layer sees only the tokens its row
        keeps (``plan.counts``), padded to the largest count; returns (x, kv, mask of the new keys)."""
        L = x_BLD.shape[1]
        new_mask = None

        def pruned(name, x, fn):
            nonlocal new_mask
            dev_BL = (x - x.mean(dim=1, keepdim=True)).pow(2).sum(-1)
            idx, valid = select_rows(dev_BL, plan.counts, L)
            if name == "sa":
                new_mask = valid
            out, extra = fn(gather_tokens(x, idx), valid)
            full = scatter_rows(plan.source((index, name)).to(out.dtype), idx, out, valid)
            if plan.record:
                plan.recorded[(index, name)] = full
            return x + full, extra

        x_BLD, kv = pruned("sa", x_BLD, lambda t, m: self.self_attention(t, ada_B6D, past_kv, None, past_mask, m))
        x_BLD, _ = pruned("ca", x_BLD, lambda t, m: (self.cross_attention(t, ca_k, ca_v, text_mask_B11T), None))
        x_BLD, _ = pruned("ffn", x_BLD, lambda t, m: (self.ffn(t, ada_B6D), None))
        return x_BLD, kv, new_mask

    def forward_recording(self, x_BLD, ada_B6D, ca_k, ca_v, text_mask_B11T, past_kv, plan: PruningPlan, index: int,
                          past_mask=None):
        """Unpruned block that also records each sub-layer's output for later cached restoration."""
        sa, kv = self.self_attention(x_BLD, ada_B6D, past_kv, None, past_mask)
        plan.recorded[(index, "sa")] = sa
        x_BLD = x_BLD + sa
        ca = self.cross_attention(x_BLD, ca_k, ca_v, text_mask_B11T)
        plan.recorded[(index, "ca")] = ca
        x_BLD = x_BLD + ca
        ffn = self.ffn(x_BLD, ada_B6D)
        plan.recorded[(index, "ffn")] = ffn
        return x_BLD + ffn, kv


class NextScaleTransformer(nn.Module):
    """Predicts the codes of scale k from the prompt and the accumulated codes of scales < k."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, C, V = cfg.width, cfg.latent_channels, cfg.codebook_size
        self.text = PromptEncoder(cfg)
        self.sos_proj = nn.Linear(D, D)
        self.word_embed = nn.Linear(C, D)
        self.level_embed_KD = nn.Parameter(torch.randn(len(cfg.scales), D) * 0.02)
        side = cfg.scales[-1]
        self.pos_1Dss = nn.Parameter(torch.randn(1, D, side, side) * 0.02)
        self.shared_ada = nn.Linear(D, 6 * D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.head_ada = nn.Linear(D, 2 * D)
        self.ln_head = nn.LayerNorm(D, elementwise_affine=False)
        self.head = nn.Linear(D, V)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # adaLN-Zero (DiT): every residual branch starts closed, so the net starts as identity
        nn.init.zeros_(self.shared_ada.weight)
        nn.init.zeros_(self.head_ada.weight)
        nn.init.zeros_(self.head.weight)

    # ---- embeddings -----------------------------------------------------------------------------
    def scale_pos(self, k: int) -> torch.Tensor:
        """2-D position (area-resampled from the finest grid) + level embedding for scale k, (p*p, D)."""
        p = self.cfg.scales[k]
        pos = self.pos_1Dss if p == self.pos_1Dss.shape[-1] else F.interpolate(self.pos_1Dss, size=(p, p), mode="area")
        return pos.flatten(2)[0].t() + self.level_embed_KD[k]

    def embed_scale_input(self, k: int, f_in_BCpp: torch.Tensor | None, sos_B1D: torch.Tensor) -> torch.Tensor:
        """Token embeddings fed at scale k: the start token at k = 0, else the projected codes."""
        if k == 0:
            return sos_B1D + self.scale_pos(0)
        return self.word_embed(f_in_BCpp.flatten(2).transpose(1, 2)) + self.scale_pos(k)

    # ---- generation -----------------------------------------------------------------------------
    def prefill(self, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> BranchContext:
        """Encode prompts once per generation: AdaLN modulation, start token, cross-attention K/V."""
        text_BTD, pooled_BD = self.text(ids_BT, mask_BT)
        shared_B6D = self.shared_ada(F.silu(pooled_BD)).view(-1, 6, self.cfg.width)
        ca = [blk.text_kv(text_BTD) for blk in self.blocks]
        return BranchContext(
            ada_B6D=[shared_B6D + blk.ada_gss_16D for blk in self.blocks],
            head_ada_B2D=self.head_ada(F.silu(pooled_BD)).view(-1, 2, self.cfg.width),
            sos_B1D=self.sos_proj(pooled_BD)[:, None],
            ca_k=[k for k, _ in ca], ca_v=[v for _, v in ca],
            text_mask_B11T=mask_BT[:, None, None, :],
            kv=[None] * self.cfg.depth, kv_mask=[None] * self.cfg.depth,
        )

    def logits(self, x_BLD: torch.Tensor, head_ada_B2D: torch.Tensor) -> torch.Tensor:
        scale, shift = head_ada_B2D.unbind(1)
        return self.head(self.ln_head(x_BLD) * (1 + scale[:, None]) + shift[:, None])

    def forward_scale(self, x_BLD: torch.Tensor, ctx: BranchContext, plan: PruningPlan
                      ) -> tuple[torch.Tensor, list, list]:
        """One scale for one (possibly stacked) branch. Returns (logits (B, L, V), new per-block KV
        (old + this scale's entries), new per-block KV masks (None = every entry real))."""
        first, last = self.cfg.pruned_block_range
        new_kv, new_masks = [], []
        for i, blk in enumerate(self.blocks):
            past_mask = ctx.kv_mask[i]
            args = (x_BLD, ctx.ada_B6D[i], ctx.ca_k[i], ctx.ca_v[i], ctx.text_mask_B11T, ctx.kv[i])
            chunk_mask = None
            if first <= i < last and plan.prunes:
                x_BLD, kv, chunk_mask = blk.forward_pruned(*args, past_mask, plan=plan, index=i)
            elif first <= i < last and plan.record:
                x_BLD, kv = blk.forward_recording(*args, plan=plan, index=i, past_mask=past_mask)
            else:
                x_BLD, kv = blk(*args, past_mask=past_mask)
            new_kv.append(kv)
            if past_mask is None and chunk_mask is None:
                new_masks.append(None)
            else:
                past_len = 0 if ctx.kv[i] is None else ctx.kv[i][0].shape[2]
                B, n = x_BLD.shape[0], kv[0].shape[2] - past_len
                new_masks.append(torch.cat([_all_real(past_mask, B, past_len, x_BLD.device),
                                            _all_real(chunk_mask, B, n, x_BLD.device)], 1))
        return self.logits(x_BLD, ctx.head_ada_B2D), new_kv, new_masks

    # ---- training -------------------------------------------------------------------------------
    def forward(self, ids_BT, mask_BT, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Teacher forcing over all scales: inputs[k-1] is the (B, C, p_k, p_k) map fed at scale k.

        Returns logits (B, L_total, V) for every token of every scale.
        """
        ctx = self.prefill(ids_BT, mask_BT)
        xs = [self.embed_scale_input(0, None, ctx.sos_B1D)]
        xs += [self.embed_scale_input(k, f, ctx.sos_B1D) for k, f in enumerate(inputs, start=1)]
        x_BLD = torch.cat(xs, dim=1)
        mask_LL = self.block_causal_mask(x_BLD.device)
        for i, blk in enumerate(self.blocks):
            x_BLD, _ = blk(x_BLD, ctx.ada_B6D[i], ctx.ca_k[i], ctx.ca_v[i], ctx.text_mask_B11T, None, mask_LL)
        return self.logits(x_BLD, ctx.head_ada_B2D)

    def block_causal_mask(self, device) -> torch.Tensor:
        """(L, L) bool: token of scale k sees every token of scales <= k."""
        level_L = torch.cat([torch.full((p * p,), k, device=device) for k, p in enumerate(self.cfg.scales)])
        return level_L[:, None] >= level_L[None, :]
