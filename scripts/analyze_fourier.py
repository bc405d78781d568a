"""Analyse the DFT spectra that ``generate.py --dft`` writes (the seed's analyze_fourier_npy.py).

    python scripts/analyze_fourier.py results/gen_images_val_000
    python scripts/analyze_fourier.py results_orig/gen_images_x results_fast/gen_images_x --labels original fastvar

For each image folder and each ``fourier_*`` kind it reads ``scale_<si>.npy`` (centred log-magnitude
spectra), prints the share of spectral magnitude above half-Nyquist per scale, and writes a PNG per
kind with the radial profile of every scale (one panel per folder; with two or more folders, the
last non-skipped scale of each is overlaid, which shows what skipping late scales removes).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

KINDS = ("fourier_pixel_summed", "fourier_pixel_residual", "fourier_latent_summed", "fourier_latent_residual",
         "fourier_latent_unscaled")


def load_spectra(folder: Path, kind: str) -> dict[int, np.ndarray]:
    out = {}
    for f in sorted((folder / kind).glob("scale_*.npy")):
        m = re.fullmatch(r"scale_(\d+)\.npy", f.name)
        if m:
            out[int(m.group(1))] = np.load(f, allow_pickle=False)
    return out


def radial(spec: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a centred spectrum over rings; frequency in cycles/sample (0.5 = Nyquist)."""
    h, w = spec.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h))
    fx = np.fft.fftshift(np.fft.fftfreq(w))
    r = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    edges = np.linspace(0, r.max() + 1e-9, bins + 1)
    idx = np.clip(np.digitize(r.ravel(), edges) - 1, 0, bins - 1)
    sums = np.bincount(idx, weights=spec.ravel(), minlength=bins)
    counts = np.maximum(np.bincount(idx, minlength=bins), 1)
    return (edges[:-1] + edges[1:]) / 2, sums / counts


def high_share(spec: np.ndarray, cutoff: float = 0.25) -> float:
    h, w = spec.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h))
    fx = np.fft.fftshift(np.fft.fftfreq(w))
    r = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    mag = np.expm1(spec)  # spectra are log(1 + |F|)
    return float(mag[r > cutoff].sum() / max(mag.sum(), 1e-12))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="gen_images_<name> folders written with generate.py --dft")
    ap.add_argument("--labels", nargs="*", default=None)
    ap.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    ap.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the first folder)")
    args = ap.parse_args(argv)
    labels = args.labels or [f.name for f in args.folders]
    if len(labels) != len(args.folders):
        print(f"error: {len(labels)} labels for {len(args.folders)} folders", file=sys.stderr)
        return 2
    found = False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds:
        data = [(lab, load_spectra(f, kind)) for lab, f in zip(labels, args.folders)]
        if not any(d for _, d in data):
            continue
        found = True
        print(f"\n{kind}: share of |DFT| above half-Nyquist per scale")
        scales = sorted({s for _, d in data for s in d})
        print("scale  " + "  ".join(f"{lab[:14]:>14s}" for lab, _ in data))
        for s in scales:
            print(f"{s:5d}  " + "  ".join(f"{high_share(d[s]):14.3f}" if s in d else f"{'skipped':>14s}" for _, d in data))
        ncol = len(data) + (1 if len(data) > 1 else 0)
        fig, axes = plt.subplots(1, ncol, figsize=(4 * ncol, 3.2), squeeze=False)
        for ax, (lab, d) in zip(axes[0], data):
            for s, spec in sorted(d.items()):
                f, p = radial(spec)
                ax.plot(f, p, label=f"scale {s}")
            ax.set_title(lab, fontsize=9)
            ax.set_xlabel("cycles / sample")
            ax.set_ylabel("mean log(1+|F|)")
            ax.legend(fontsize=6)
        if len(data) > 1:
            ax = axes[0][-1]
            for lab, d in data:
                if d:
                    s = max(d)
                    f, p = radial(d[s])
                    ax.plot(f, p, label=f"{lab} (last scale {s})")
            ax.set_title("last non-skipped scale", fontsize=9)
            ax.set_xlabel("cycles / sample")
            ax.legend(fontsize=6)
        fig.suptitle(kind)
        fig.tight_layout()
        png = out / f"{kind}_radial.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        print(f"wrote {png}")
    if not found:
        print(f"error: no fourier_* spectra under {', '.join(map(str, args.folders))} (generate with --dft)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
