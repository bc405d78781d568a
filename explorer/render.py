"""The explorer's pictures (numpy uint8, channels last: what the page shows): an image enlarged, the
summed-codes image after every scale as one strip, and per-scale bar charts of ratio and FLOPs."""

from __future__ import annotations

import io

import numpy as np

from explorer.comparison import ScaleRow, ScheduleOutcome

def upscale(image_HW3: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscaling to ``size`` pixels wide (tiny images stay crisp)."""
    from PIL import Image

    h, w = image_HW3.shape[:2]
    return np.asarray(Image.fromarray(image_HW3).resize((size, max(1, round(size * h / w))), Image.NEAREST))


def intermediates_strip(scales: list[ScaleRow], tile: int = 96) -> np.ndarray:
    """The summed-codes image after every scale, left to right, each captioned with its map size and
    ratio; a skipped scale is a grey tile marked "skipped"."""
    from PIL import Image, ImageDraw

    caption_h, pad = 16, 4
    strip = Image.new("RGB", (len(scales) * (tile + pad) + pad, tile + caption_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, s in enumerate(scales):
        x = pad + i * (tile + pad)
        what = "skip" if s.skipped else ("full" if s.ratio == 0 else f"r={s.ratio:g}")
        draw.text((x, 2), f"{s.width}x{s.height} {what}", fill=(0, 0, 0))
        if s.summed_HW3 is not None:
            strip.paste(Image.fromarray(upscale(s.summed_HW3, tile)), (x, caption_h))
        else:
            draw.rectangle([x, caption_h, x + tile - 1, caption_h + tile - 1], fill=(200, 200, 200))
            draw.text((x + tile // 2 - 20, caption_h + tile // 2 - 6), "skipped", fill=(90, 90, 90))
    return np.asarray(strip)


def scales_chart(outcome: ScheduleOutcome, width_px: int = 420) -> np.ndarray:
    """Two bar charts per scale: the ratio (skips drawn at 1, hatched) and the FLOPs spent vs unpruned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    scales = outcome.scales
    x = np.arange(len(scales))
    names = [f"{s.width}x{s.height}" for s in scales]
    fig, (ax_r, ax_f) = plt.subplots(2, 1, figsize=(width_px / 100, 3.6), dpi=100, sharex=True)
    colours = ["#9e9e9e" if s.skipped else "#1f77b4" for s in scales]
    bars = ax_r.bar(x, [1.0 if s.skipped else s.ratio for s in scales], color=colours)
    for b, s in zip(bars, scales):
        if s.skipped:
            b.set_hatch("//")
            ax_r.text(b.get_x() + b.get_width() / 2, 0.5, "skip", ha="center", va="center", fontsize=7, rotation=90)
    if not any(s.skipped or s.ratio > 0 for s in scales):
        ax_r.text(0.5, 0.5, "no pruning", transform=ax_r.transAxes, ha="center", va="center", fontsize=9, color="#555555")
    ax_r.set_ylim(0, 1.05)
    ax_r.set_ylabel("ratio")
    ax_r.set_title(f"{outcome.label}: {outcome.flops_fraction:.3f} of the FLOPs", fontsize=9)
    ax_f.bar(x, [s.flops_unpruned / 1e6 for s in scales], color="none", edgecolor="#555555", label="unpruned")
    ax_f.bar(x, [s.flops / 1e6 for s in scales], color="#ff7f0e", label="this schedule")
    ax_f.set_ylabel("MFLOPs")
    ax_f.set_xticks(x, names, fontsize=8)
    ax_f.set_xlabel("token map")
    ax_f.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))
