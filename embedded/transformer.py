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
from generator.pruning import PruningPlan, gather_tokens, restore_tokens, select_tokens
from embedded.text import PromptEncoder


@dataclass
class BranchContext:
    """Per-generation tensors of one guidance branch (conditional or unconditional) for B images.

    Static after ``NextScaleTransformer.prefill``: ada_B6D (per block), head_ada_B2D, sos_B1D,
    ca_k/ca_v (per block, (B, H, T, c)), text_mask_B11T. Dynamic: kv (per block, self-attention keys
    and values of every token fed so far, (B, H, L_kv, c)), prune_cache (sub-layer outputs of the last
    unpruned scale) and its side.
    """

    ada_B6D: list[torch.Tensor]
    head_ada_B2D: torch.Tensor
    sos_B1D: torch.Tensor
    ca_k: list[torch.Tensor]
    ca_v: list[torch.Tensor]
    text_mask_B11T: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    prune_cache: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    prune_cache_side: int | None = None

    @property
    def batch(self) -> int:
        return self.sos_B1D.shape[0]

    def kv_lengths(self) -> tuple[int, ...]:
        return tuple(0 if kv is None else kv[0].shape[2] for kv in self.kv)

    def copy(self) -> "BranchContext":
        """Shallow copy: tensors are never modified in place, so containers are all we copy."""
        return BranchContext(self.ada_B6D, self.head_ada_B2D, self.sos_B1D, self.ca_k, self.ca_v,
                             self.text_mask_B11T, list(self.kv), dict(self.prune_cache), self.prune_cache_side)

    @staticmethod
    def cat(a: "BranchContext", b: "BranchContext") -> "BranchContext":
        """Stack two branches along the batch (their KV lengths must agree)."""
        c = lambda x, y: torch.cat([x, y], 0)  # noqa: E731
        kv = [None if ka is None else (c(ka[0], kb[0]), c(ka[1], kb[1])) for ka, kb in zip(a.kv, b.kv)]
        cache = {}
        if a.prune_cache_side == b.prune_cache_side:
            cache = {k: c(a.prune_cache[k], b.prune_cache[k]) for k in a.prune_cache if k in b.prune_cache}
        return BranchContext([c(x, y) for x, y in zip(a.ada_B6D, b.ada_B6D)], c(a.head_ada_B2D, b.head_ada_B2D),
                             c(a.sos_B1D, b.sos_B1D), [c(x, y) for x, y in zip(a.ca_k, b.ca_k)],
                             [c(x, y) for x, y in zip(a.ca_v, b.ca_v)], c(a.text_mask_B11T, b.text_mask_B11T),
                             kv, cache, a.prune_cache_side if cache else None)

    def rows(self, start: int, stop: int) -> "BranchContext":
        """The branch made of batch rows [start, stop) (views, no copies)."""
        s = slice(start, stop)
        return BranchContext([x[s] for x in self.ada_B6D], self.head_ada_B2D[s], self.sos_B1D[s],
                             [x[s] for x in self.ca_k], [x[s] for x in self.ca_v], self.text_mask_B11T[s],
                             [None if kv is None else (kv[0][s], kv[1][s]) for kv in self.kv],
                             {k: v[s] for k, v in self.prune_cache.items()}, self.prune_cache_side)


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
    def self_attention(self, x_BnD, ada_B6D, past_kv, attn_mask=None):
        gamma1, _, scale1, _, shift1, _ = ada_B6D.unbind(1)
        h = self.ln_sa(x_BnD) * (1 + scale1[:, None]) + shift1[:, None]
        B, n, D = h.shape
        q, k, v = self.qkv(h).view(B, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
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
    def forward(self, x_BLD, ada_B6D, ca_k, ca_v, text_mask_B11T, past_kv=None, attn_mask=None):
        """Unpruned block; returns (x, (k, v) of past+current tokens)."""
        sa, kv = self.self_attention(x_BLD, ada_B6D, past_kv, attn_mask)
        x_BLD = x_BLD + sa
        x_BLD = x_BLD + self.cross_attention(x_BLD, ca_k, ca_v, text_mask_B11T)
        return x_BLD + self.ffn(x_BLD, ada_B6D), kv

    def forward_pruned(self, x_BLD, ada_B6D, ca_k, ca_v, text_mask_B11T, past_kv, plan: PruningPlan, index: int):
        """Cached token pruning (see generator.pruning): every sub-layer sees only plan.n_keep tokens."""
        assert plan.n_keep is not None and plan.cache is not None and plan.cached_side is not None

        def pruned(name, x, fn):
            idx = select_tokens(x, plan.n_keep)
            out, extra = fn(gather_tokens(x, idx))
            return x + restore_tokens(out, idx, plan.cache[(index, name)], plan.cached_side, plan.side), extra

        x_BLD, kv = pruned("sa", x_BLD, lambda t: self.self_attention(t, ada_B6D, past_kv))
        x_BLD, _ = pruned("ca", x_BLD, lambda t: (self.cross_attention(t, ca_k, ca_v, text_mask_B11T), None))
        x_BLD, _ = pruned("ffn", x_BLD, lambda t: (self.ffn(t, ada_B6D), None))
        return x_BLD, kv

    def forward_recording(self, x_BLD, ada_B6D, ca_k, ca_v, text_mask_B11T, past_kv, plan: PruningPlan, index: int):
        """Unpruned block that also records each sub-layer's output for later cached restoration."""
        sa, kv = self.self_attention(x_BLD, ada_B6D, past_kv)
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
            kv=[None] * self.cfg.depth,
        )

    def logits(self, x_BLD: torch.Tensor, head_ada_B2D: torch.Tensor) -> torch.Tensor:
        scale, shift = head_ada_B2D.unbind(1)
        return self.head(self.ln_head(x_BLD) * (1 + scale[:, None]) + shift[:, None])

    def forward_scale(self, x_BLD: torch.Tensor, ctx: BranchContext, plan: PruningPlan) -> tuple[torch.Tensor, list]:
        """One scale for one (possibly stacked) branch. Returns (logits (B, L, V), new per-block KV)."""
        first, last = self.cfg.pruned_block_range
        new_kv = []
        for i, blk in enumerate(self.blocks):
            args = (x_BLD, ctx.ada_B6D[i], ctx.ca_k[i], ctx.ca_v[i], ctx.text_mask_B11T, ctx.kv[i])
            if first <= i < last and plan.n_keep is not None:
                x_BLD, kv = blk.forward_pruned(*args, plan=plan, index=i)
            elif first <= i < last and plan.record:
                x_BLD, kv = blk.forward_recording(*args, plan=plan, index=i)
            else:
                x_BLD, kv = blk(*args)
            new_kv.append(kv)
        return self.logits(x_BLD, ctx.head_ada_B2D), new_kv

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
