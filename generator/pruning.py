"""FastVAR's cached token pruning, as small composable pieces.

Inside a pruned block, *each* residual sub-layer (self-attention, cross-attention, MLP) is run only
on the tokens that deviate most from the token map's mean (squared L2 distance, recomputed on the
current residual stream before every sub-layer, as in FastVAR). The sub-layer outputs of the other
("pruned") positions are filled in from the same sub-layer's output cached at the most recent
scale that ran unpruned, area-resampled to the current map size. The residual stream itself always
keeps every token, so blocks outside the pruned range see a full map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

SUBLAYERS = ("sa", "ca", "ffn")


def tokens_kept(num_tokens: int, ratio: float) -> int:
    """Tokens forwarded through pruned blocks for a pruning ratio in [0, 1): L - floor(r * L), >= 1."""
    return max(1, num_tokens - math.floor(ratio * num_tokens))


def select_tokens(x_BLD: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices (B, n_keep) of the tokens farthest (squared L2) from the map's mean token."""
    dev_BL = (x_BLD - x_BLD.mean(dim=1, keepdim=True)).pow(2).sum(-1)
    return dev_BL.topk(n_keep, dim=1, sorted=True).indices


def gather_tokens(x_BLD: torch.Tensor, idx_Bn: torch.Tensor) -> torch.Tensor:
    return x_BLD.gather(1, idx_Bn.unsqueeze(-1).expand(-1, -1, x_BLD.shape[-1]))


def area_resample(cached_BSD: torch.Tensor, cached_side: int, side: int) -> torch.Tensor:
    """(B, side*side, D): a cached (B, cached_side**2, D) token map area-resampled to ``side``."""
    B, _, D = cached_BSD.shape
    grid = cached_BSD.transpose(1, 2).reshape(B, D, cached_side, cached_side)
    return F.interpolate(grid, size=(side, side), mode="area").flatten(2).transpose(1, 2).contiguous()


def restore_tokens(out_BnD: torch.Tensor, idx_Bn: torch.Tensor, cached_BSD: torch.Tensor,
                   cached_side: int, side: int) -> torch.Tensor:
    """Full (B, side*side, D) map: cached sub-layer output area-resampled, kept outputs scattered in."""
    full = area_resample(cached_BSD, cached_side, side)
    return full.scatter(1, idx_Bn.unsqueeze(-1).expand(-1, -1, full.shape[-1]), out_BnD)


@dataclass
class PruningPlan:
    """What one scale's forward does inside the pruned blocks, per row of the forward's batch.

    side: the token map's side. counts: tokens each row forwards through the pruned sub-layers
        (side * side = all of them); None = every row keeps every token (the unpruned path).
    source: (block, sublayer) -> (R, side*side, D), the cached outputs each row's pruned slots are
        filled from (each row's last unpruned scale, resampled; zeros where a row has none); needed
        when some row prunes.
    record: when True the forward fills ``recorded`` with this scale's sub-layer outputs (full maps,
        natural token order, every row) so later scales can restore from them; the caller keeps the
        rows that ran unpruned.
    """

    side: int
    counts: list[int] | None = None
    source: Callable[[tuple[int, str]], torch.Tensor] | None = None
    record: bool = False

    def __post_init__(self) -> None:
        self.recorded: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def prunes(self) -> bool:
        """Whether any row forwards fewer than all tokens through the pruned blocks."""
        return self.counts is not None and min(self.counts) < self.side * self.side


# ---- per-image decisions in one batch -----------------------------------------------------------------

def row_token_counts(num_tokens: int, ratios: list[float]) -> list[int]:
    """Tokens each image forwards through the pruned blocks at one scale: 0 if it skips (r >= 1),
    ``num_tokens`` if it runs unpruned, else ``tokens_kept``."""
    return [0 if r >= 1.0 else tokens_kept(num_tokens, r) for r in ratios]


def select_rows(dev_BL: torch.Tensor, counts: list[int], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token indices (B, n_max) for rows that keep different numbers of tokens, and the (B, n_max)
    validity mask (None when every row keeps n_max).

    A pruned row takes its ``counts[b]`` highest-deviation tokens in descending order (the first
    entries of the top n_max, i.e. exactly what it would select alone); a row that keeps every token
    takes them in their natural order (so its KV entries are laid out as in the unpruned path).
    Slots past a row's count are padding (more of the row's tokens): the caller masks them out.
    """
    n_max = max(counts)
    idx = dev_BL.topk(n_max, dim=1, sorted=True).indices
    full = [c >= num_tokens for c in counts]
    if any(full):
        natural = torch.arange(num_tokens, device=dev_BL.device).expand(len(counts), num_tokens)
        idx = torch.where(torch.tensor(full, device=dev_BL.device)[:, None], natural, idx)
    if all(c == n_max for c in counts):
        return idx, None
    valid = torch.arange(n_max, device=dev_BL.device)[None, :] < torch.tensor(counts, device=dev_BL.device)[:, None]
    return idx, valid


def scatter_rows(full_BLD: torch.Tensor, idx_Bn: torch.Tensor, out_BnD: torch.Tensor,
                 valid_Bn: torch.Tensor | None) -> torch.Tensor:
    """``full`` with the kept outputs scattered in at ``idx``; padded slots write back the value that
    is already there (a no-op, so duplicate-free and exact)."""
    index = idx_Bn.unsqueeze(-1).expand(-1, -1, full_BLD.shape[-1])
    if valid_Bn is not None:
        out_BnD = torch.where(valid_Bn.unsqueeze(-1), out_BnD, full_BLD.gather(1, index))
    return full_BLD.scatter(1, index, out_BnD)


@dataclass(frozen=True)
class RowPruneCache:
    """Per image of one guidance branch: the sub-layer outputs of *that image's* last unpruned scale.

    With per-image ratios the images of a batch last ran unpruned at different scales, so each row
    carries its own map size. ``hw_rows[b]``: (h, w) of row b's cached map, None if it has none yet
    (its pruned slots then get a zero update). ``tensors[key]``: (B, S, D) with S = the largest
    h * w among the rows (smaller maps use the first h * w positions). Immutable: updates return a
    new cache sharing unchanged tensors.
    """

    hw_rows: tuple
    tensors: dict

    @classmethod
    def empty(cls, batch: int) -> "RowPruneCache":
        return cls((None,) * batch, {})

    @property
    def batch(self) -> int:
        return len(self.hw_rows)

    def uniform_hw(self):
        """The map size shared by every row, or None if the rows differ or have nothing cached."""
        first = self.hw_rows[0]
        return first if all(h == first for h in self.hw_rows) else None

    def rows(self, index: list[int]) -> "RowPruneCache":
        index = list(index)
        if index == list(range(self.batch)):
            return self
        if index and index == list(range(index[0], index[-1] + 1)):  # a contiguous block: views
            s = slice(index[0], index[-1] + 1)
            return RowPruneCache(self.hw_rows[s], {k: v[s] for k, v in self.tensors.items()})
        return RowPruneCache(tuple(self.hw_rows[i] for i in index), select_batch_rows(self.tensors, index))

    @staticmethod
    def cat(a: "RowPruneCache", b: "RowPruneCache") -> "RowPruneCache":
        """Rows of ``a`` then rows of ``b`` (keys missing on one side are dropped: nothing restores from them)."""
        if not a.tensors or not b.tensors:
            tensors = {}
            if a.tensors or b.tensors:
                return RowPruneCache.cat(a if a.tensors else _zeros_like_cache(a, b), b if b.tensors else _zeros_like_cache(b, a))
            return RowPruneCache(a.hw_rows + b.hw_rows, tensors)
        keys = [k for k in a.tensors if k in b.tensors]
        out = {}
        for k in keys:
            x, y = a.tensors[k], b.tensors[k]
            s = max(x.shape[1], y.shape[1])
            out[k] = torch.cat([_pad_tokens(x, s), _pad_tokens(y, s)], 0)
        return RowPruneCache(a.hw_rows + b.hw_rows, out)

    def updated(self, rows: list[int], recorded: dict, hw) -> "RowPruneCache":
        """Rows ``rows`` (in order) now cache ``recorded[key]`` ((len(rows), h*w, D)) of a map of size hw."""
        if list(rows) == list(range(self.batch)):
            return RowPruneCache((hw,) * self.batch, dict(recorded))
        if not rows:
            return self
        hw_rows = list(self.hw_rows)
        for r in rows:
            hw_rows[r] = hw
        index = None
        out = {}
        for key, new in recorded.items():
            old = self.tensors.get(key)
            s = new.shape[1] if old is None else max(old.shape[1], new.shape[1])
            base = (torch.zeros(self.batch, s, new.shape[-1], dtype=new.dtype, device=new.device) if old is None
                    else _pad_tokens(old, s).to(new.dtype).clone())
            if index is None:
                index = torch.tensor(rows, dtype=torch.long, device=new.device)
            base.index_copy_(0, index, _pad_tokens(new, s))
            out[key] = base
        return RowPruneCache(tuple(hw_rows), out)

    def resampled(self, key, hw, dim: int, dtype, device, resample) -> torch.Tensor:
        """(B, h*w, D): each row's cached map resampled to ``hw`` by ``resample(t (n, S, D), from_hw, to_hw)``
        (the backend's own area resampling), zeros for rows with nothing cached."""
        L = hw[0] * hw[1]
        uniform = self.uniform_hw()
        if uniform is not None and key in self.tensors:
            t = self.tensors[key]
            s = uniform[0] * uniform[1]
            return resample(t if t.shape[1] == s else t[:, :s], uniform, hw)
        out = torch.zeros(self.batch, L, dim, dtype=dtype, device=device)
        groups: dict = {}
        for b, h in enumerate(self.hw_rows):
            if h is not None and key in self.tensors:
                groups.setdefault(h, []).append(b)
        for src_hw, rows in groups.items():
            idx = torch.tensor(rows, dtype=torch.long, device=device)
            s = src_hw[0] * src_hw[1]
            part = resample(self.tensors[key].index_select(0, idx)[:, :s], src_hw, hw)
            out.index_copy_(0, idx, part.to(dtype))
        return out


def select_batch_rows(tensors: dict, rows: list[int]) -> dict:
    """``{key: t.index_select(0, rows)}``, with the row index copied to each device once, not once per
    tensor (on a GPU each host-to-device copy of a Python list is a synchronisation)."""
    index = torch.tensor(list(rows), dtype=torch.long)
    on_device: dict = {}
    out = {}
    for key, t in tensors.items():
        if t.device not in on_device:
            on_device[t.device] = index.to(t.device)
        out[key] = t.index_select(0, on_device[t.device])
    return out


def _pad_tokens(t: torch.Tensor, s: int) -> torch.Tensor:
    return t if t.shape[1] == s else F.pad(t, (0, 0, 0, s - t.shape[1]))


def _zeros_like_cache(empty: RowPruneCache, like: RowPruneCache) -> RowPruneCache:
    return RowPruneCache(empty.hw_rows, {k: v.new_zeros(empty.batch, *v.shape[1:]) for k, v in like.tensors.items()})
