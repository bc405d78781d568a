"""Fourier (DFT) analysis of code maps and images: the seed's ``dft_results`` / ``analyze_fourier_npy``.

Spectra are centred log-magnitude 2-D DFTs averaged over channels; the radial profile averages
them over rings of equal spatial frequency (cycles per sample, 0 = DC, 0.5 = Nyquist).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

HIGH_FREQUENCY_CUTOFF = 0.25  # cycles/sample: above this counts as "high frequency" (half of Nyquist)


def _radius_hw(h: int, w: int, device=None) -> torch.Tensor:
    """Spatial frequency (cycles/sample) of every bin of a centred (h, w) spectrum."""
    fy = torch.fft.fftshift(torch.fft.fftfreq(h, device=device))
    fx = torch.fft.fftshift(torch.fft.fftfreq(w, device=device))
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def power_spectrum(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Centred power spectrum |DFT|^2 averaged over channels, mean removed per channel: (B, H, W)."""
    if x_BCHW.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x_BCHW.shape)}")
    x = x_BCHW.float() - x_BCHW.float().mean(dim=(-2, -1), keepdim=True)
    f = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    return f.abs().pow(2).mean(1)


def log_magnitude_spectrum(x_BCHW: torch.Tensor) -> torch.Tensor:
    """log(1 + |DFT|) averaged over channels, centred (DC in the middle): (B, H, W)."""
    return power_spectrum(x_BCHW).sqrt().log1p()


def high_frequency_energy_batch(x_BCHW, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> np.ndarray:
    """Fraction of (non-DC) spectral energy above ``cutoff`` cycles/sample, per item: (B,) in [0, 1].

    By Parseval the total energy is the spatial energy of the mean-removed map, and the low band
    is a projection onto its few DFT basis vectors, so no full FFT is needed: this runs on every
    env step, on tiny maps, where NumPy beats torch's per-call overhead.
    """
    x = x_BCHW.detach().cpu().numpy() if isinstance(x_BCHW, torch.Tensor) else np.asarray(x_BCHW)
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) array, got shape {x.shape}")
    b, c, h, w = x.shape
    x = x.astype(np.float64).reshape(b, c, h * w)
    x = x - x.mean(-1, keepdims=True)
    total = (x ** 2).sum(-1).mean(1)  # (B,): mean over channels of the per-channel energy
    low = ((x @ _low_band_basis(h, w, cutoff).T) ** 2).sum(-1).mean(1)
    high = np.maximum(total - low, 0.0)
    return np.where(total > 0, high / np.maximum(total, 1e-12), 0.0)


@functools.lru_cache(maxsize=64)
def _low_band_basis(h: int, w: int, cutoff: float) -> np.ndarray:
    """Real and imaginary parts (2 n_low, h*w) of the orthonormal DFT rows at or below ``cutoff``
    cycles/sample: |DFT|^2 of the low band = sum of squared projections on these rows."""
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    keep = np.sqrt(fy ** 2 + fx ** 2) <= cutoff
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    phase = np.outer(fy[keep], yy.ravel()) + np.outer(fx[keep], xx.ravel())
    return np.concatenate([np.cos(2 * np.pi * phase), np.sin(2 * np.pi * phase)]) / np.sqrt(h * w)


def radial_profile(x_BCHW: torch.Tensor, bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies (n,), mean power per ring (B, n)) from DC up to the corner frequency."""
    p = power_spectrum(x_BCHW)
    h, w = p.shape[-2:]
    r = _radius_hw(h, w, p.device).flatten()
    n = bins or max(h, w) // 2 + 1
    edges = torch.linspace(0, float(r.max()) + 1e-9, n + 1, device=p.device)
    idx = (torch.bucketize(r, edges, right=True) - 1).clamp(0, n - 1)
    flat = p.flatten(1)
    sums = torch.zeros(p.shape[0], n, device=p.device).index_add_(1, idx, flat)
    counts = torch.bincount(idx, minlength=n).clamp_min(1).to(p.dtype)
    return (edges[:-1] + edges[1:]) / 2, sums / counts
