"""Fréchet distance and seed diversity on feature sets whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.distribution import frechet_distance, seed_diversity


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift_and_a_spread():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # a pure mean shift of 3 in every one of 8 dims adds exactly 8 * 9 = 72
    assert frechet_distance(a, a + 3.0) == pytest.approx(72.0, rel=1e-6)
    # same mean, twice the spread: Tr(S + 4S - 2*2S) = Tr(S) ~ 8
    assert frechet_distance(a, 2 * (a - a.mean(0)) + a.mean(0)) == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-6)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :4])
    with pytest.raises(ValueError, match=">= 2 images"):
        frechet_distance(a[:1], a)


def test_seed_diversity_is_zero_for_identical_seeds_and_one_for_orthogonal_images():
    items = [("p", 0), ("p", 1), ("q", 0), ("q", 1)]
    same = np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, 3.0]])
    assert seed_diversity(same, items) == 0.0
    orth = np.array([[1.0, 0], [0, 1.0], [1.0, 0], [0, 2.0]])
    assert seed_diversity(orth, items) == 1.0
    with pytest.raises(ValueError, match="one seed"):
        seed_diversity(same[:3], items[:3])
    with pytest.raises(ValueError, match="feature rows"):
        seed_diversity(same, items[:3])
