"""Image tensor conversions shared by generation, evaluation and the env."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 channels-last: (3, H, W) -> (H, W, 3), (B, 3, H, W) -> (B, H, W, 3)."""
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) images, got shape {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()
