"""Which (branch, image) rows one scale's forward runs, and FastVAR's restore of pruned slots."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_hw(cached_BSC: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """A cached (B, h*w, C) map area-resampled to ``to_hw`` (B, H*W, C), as FastVAR restores pruned slots."""
    B, _, c = cached_BSC.shape
    full = cached_BSC.reshape(B, from_hw[0], from_hw[1], c).permute(0, 3, 1, 2)
    return F.interpolate(full, size=to_hw, mode="area").permute(0, 2, 3, 1).reshape(B, to_hw[0] * to_hw[1], c)


class ScaleRows:
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
