"""Image tensor conversions and the labelled image grid, shared by generation, evaluation and the env."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from generator.weights_io import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 channels-last: (3, H, W) -> (H, W, 3), (B, 3, H, W) -> (B, H, W, 3)."""
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) images, got shape {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def image_grid(images: dict[str, list[torch.Tensor]], prompts: list[str], path: Path) -> None:
    """Rows = prompts (labelled), columns = methods."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(images)
    fig, axes = plt.subplots(len(prompts), len(names), figsize=(1.7 * len(names) + 3.6, 1.8 * len(prompts)), squeeze=False)
    for r, p in enumerate(prompts):
        for c, n in enumerate(names):
            ax = axes[r][c]
            ax.imshow(to_uint8(images[n][r]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(n, fontsize=8)
        axes[r][-1].text(1.05, 0.5, textwrap.fill(p, 40), transform=axes[r][-1].transAxes, fontsize=6.5, va="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
