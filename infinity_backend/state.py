"""The explicit per-batch generation state of the Infinity backend (owned by the caller)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from generator.protocol import StateProgress, StepReport


@dataclass
class InfinityState(StateProgress):
    """Everything one batch generation carries between scales. Owned by the caller.

    rows of the two-branch tensors: cond = [0, B), uncond = [B, 2B). kv[layer] is a list of
    per-scale chunks (k, v, both) with k, v (rows, heads, tokens, head_dim); both=False chunks hold
    the conditional rows only (scales run with drop_unconditional). prune_cache[branch] =
    ((h, w), {(layer, 'sa'|'ca'|'ffn'): (B, h*w, C)}) from the last scale that ran unpruned.
    summed_codes: (B, d, 1, H, W) accumulated BSQ codes at the final latent size (upstream's name).
    codes[k]: scale k's sampled bits (B, h, w, d) long, None if skipped / not yet run.
    """

    prompts: list[str]
    seeds: list[int]
    num_scales: int
    summed_codes: torch.Tensor
    text: dict
    kv: list[list[tuple]]
    rngs: list[torch.Generator] | None
    scale_index: int = 0
    codes: list[torch.Tensor | None] = field(default_factory=list)
    prune_cache: dict = field(default_factory=dict)
    last_entropy_B: torch.Tensor | None = None
    reports: list[StepReport] = field(default_factory=list)
    flops_prefill: float = 0.0

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
                             dict(self.prune_cache), self.last_entropy_B, list(self.reports), self.flops_prefill)
