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


def restore_tokens(out_BnD: torch.Tensor, idx_Bn: torch.Tensor, cached_BSD: torch.Tensor,
                   cached_side: int, side: int) -> torch.Tensor:
    """Full (B, side*side, D) map: cached sub-layer output area-resampled, kept outputs scattered in."""
    B, _, D = cached_BSD.shape
    grid = cached_BSD.transpose(1, 2).reshape(B, D, cached_side, cached_side)
    full = F.interpolate(grid, size=(side, side), mode="area").flatten(2).transpose(1, 2).contiguous()
    return full.scatter(1, idx_Bn.unsqueeze(-1).expand(-1, -1, D), out_BnD)


@dataclass
class PruningPlan:
    """What one scale's forward does inside the pruned blocks.

    n_keep: tokens forwarded through pruned sub-layers (None = every token: the unpruned path).
    cache: (block, sublayer) -> that sub-layer's output at the cached scale, (B, S, D); needed when
        n_keep is set. record: when True (unpruned scales) the forward fills ``recorded`` with this
        scale's sub-layer outputs so later scales can restore from them.
    """

    side: int
    n_keep: int | None = None
    cache: dict[tuple[int, str], torch.Tensor] | None = None
    cached_side: int | None = None
    record: bool = False

    def __post_init__(self) -> None:
        self.recorded: dict[tuple[int, str], torch.Tensor] = {}
