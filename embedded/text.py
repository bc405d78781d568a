"""Prompt encoder: open_clip's BPE tokenizer (works offline) + a small transformer.

The 49,408-entry BPE vocabulary is folded into ``text_buckets`` rows by ``id mod text_buckets`` so
the embedding table stays tiny; tests check that no two words of the embedded domain collide.
"""

from __future__ import annotations

import functools

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from embedded.config import TransformerConfig


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer():
    # open_clip's SimpleTokenizer ships its BPE merges inside the package: no network.
    return open_clip.tokenizer.SimpleTokenizer()


def tokenize(prompts: list[str], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (BPE ids (B, T) int64, valid mask (B, T) bool). Over-long prompts are truncated
    by open_clip's tokenizer, keeping the end-of-text token."""
    ids_BT = _bpe_tokenizer()(prompts, context_length=context)
    return ids_BT, ids_BT != 0


class _TextBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x_BTD: torch.Tensor, key_mask_B11T: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(self.ln1(x_BTD)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask_B11T)
        x_BTD = x_BTD + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x_BTD + self.fc2(F.gelu(self.fc1(self.ln2(x_BTD))))


class PromptEncoder(nn.Module):
    """BPE ids -> per-token features (for cross-attention) and a pooled vector (for AdaLN)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.embed = nn.Embedding(cfg.text_buckets, D)
        self.pos_TD = nn.Parameter(torch.randn(cfg.text_context, D) * 0.02)
        self.blocks = nn.ModuleList(_TextBlock(D, cfg.num_heads) for _ in range(cfg.text_depth))
        self.ln_out = nn.LayerNorm(D)

    def forward(self, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids_BT % self.cfg.text_buckets) + self.pos_TD[: ids_BT.shape[1]]
        key_mask = mask_BT[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, key_mask)
        x = self.ln_out(x)
        m = mask_BT.unsqueeze(-1).to(x.dtype)
        pooled_BD = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x, pooled_BD
