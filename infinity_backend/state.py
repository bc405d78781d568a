"""The explicit per-batch generation state of the Infinity backend (owned by the caller)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from generator.protocol import StateProgress


@dataclass
class InfinityState(StateProgress):
    """Everything one batch generation carries between scales. Owned by the caller.

    rows of the two-branch tensors: cond = [0, B), uncond = [B, 2B). kv[layer] is a list of
    per-scale chunks (k, v, both, mask) with k, v (rows, heads, tokens, head_dim); both=False chunks
    hold the conditional rows only (no image ran the unconditional branch at that scale); mask
    (rows, tokens) bool marks real entries (None = all real; images that skipped, dropped the branch
    or kept fewer tokens than the batch's maximum hold masked padding there). kv_len_rows[branch][b]:
    image b's real KV length per block (what it would hold alone). prune_cache[branch]: a
    ``generator.pruning.RowPruneCache`` with each image's sub-layer outputs {(layer, 'sa'|'ca'|'ffn'):
    (B, h*w, C)} of its last unpruned scale. summed_codes: (B, d, 1, H, W) accumulated BSQ codes at
    the final latent size (upstream's name). codes[k]: scale k's sampled bits (B, h, w, d) long, None
    if skipped / not yet run, or a list of per-image (h, w, d) / None when only some images ran it.
    """

    prompts: list[str]
    seeds: list[int]
    num_scales: int
    summed_codes: torch.Tensor
    text: dict
    kv: list[list[tuple]]
    rngs: list[torch.Generator] | None
    scale_index: int = 0
    codes: list = field(default_factory=list)
    prune_cache: dict = field(default_factory=dict)
    last_entropy_B: torch.Tensor | None = None
    reports: list = field(default_factory=list)
    flops_prefill: float = 0.0
    kv_len_rows: dict = field(default_factory=dict)

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
                             dict(self.prune_cache), self.last_entropy_B, list(self.reports), self.flops_prefill,
                             {br: [list(r) for r in rows] for br, rows in self.kv_len_rows.items()})
