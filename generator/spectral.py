"""Fourier (DFT) analysis of code maps and images: the seed's ``dft_results`` / ``analyze_fourier_npy``.

Spectra are centred log-magnitude 2-D DFTs averaged over channels; the radial profile averages
them over rings of equal spatial frequency (cycles per sample, 0 = DC, 0.5 = Nyquist).
"""

from __future__ import annotations

import torch

HIGH_FREQUENCY_CUTOFF = 0.25  # cycles/sample: above this counts as "high frequency" (half of Nyquist)


def _radius_hw(h: int, w: int, device=None) -> torch.Tensor:
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


def high_frequency_energy_batch(x_BCHW: torch.Tensor, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> torch.Tensor:
    """Fraction of (non-DC) spectral energy above ``cutoff`` cycles/sample, per item: (B,) in [0, 1]."""
    p = power_spectrum(x_BCHW)
    r = _radius_hw(p.shape[-2], p.shape[-1], p.device)
    total = p.sum(dim=(-2, -1))
    high = (p * (r > cutoff)).sum(dim=(-2, -1))
    return torch.where(total > 0, high / total.clamp_min(1e-12), torch.zeros_like(total))


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
