"""Spectral features: the fast high-frequency energy equals its FFT definition."""

import numpy as np
import pytest
import torch

from generator.spectral import _radius_hw, high_frequency_energy_batch, power_spectrum, radial_profile


@pytest.mark.parametrize("hw", [(8, 8), (5, 5), (6, 4)])
def test_high_frequency_energy_matches_the_fft_definition(hw):
    x = torch.randn(3, 16, *hw, generator=torch.Generator().manual_seed(0))
    p = power_spectrum(x)
    expected = (p * (_radius_hw(*hw) > 0.25)).sum((-2, -1)) / p.sum((-2, -1))
    np.testing.assert_allclose(high_frequency_energy_batch(x), expected.numpy(), rtol=1e-5)


def test_flat_maps_have_no_high_frequency_energy_and_checkerboards_all_of_it():
    assert high_frequency_energy_batch(torch.ones(1, 3, 8, 8))[0] == 0.0
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    assert high_frequency_energy_batch(checker.float().expand(1, 3, 8, 8))[0] == pytest.approx(1.0)
    f, prof = radial_profile(checker.float().expand(1, 3, 8, 8))
    assert f.shape == (5,) and int(prof[0].argmax()) == 4  # all power in the outermost ring
