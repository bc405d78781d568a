"""Prompt-clustered statistics of the compare mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rewards.stats import check_unique, clustered_mean_ci, clustered_paired, mean_ci


def test_clustered_ci_is_wider_than_the_naive_one_by_the_expected_factor():
    """P prompts x S seeds where the seeds of a prompt give identical values (all variation is between
    prompts): the naive per-image CI pretends P*S independent draws; the clustered one has P."""
    P, S = 12, 3
    prompt_effect = np.random.default_rng(0).normal(0.7, 0.1, P)
    values = [float(v) for v in prompt_effect for _ in range(S)]
    prompts = [f"p{i}" for i in range(P) for _ in range(S)]
    _, naive_half, naive_n = mean_ci(values)
    c = clustered_mean_ci(values, prompts)
    assert naive_n == P * S and c["n"] == P and c["n_images"] == P * S
    assert c["mean"] == pytest.approx(float(np.mean(values)), abs=1e-12)
    # sd of the duplicated sample = sd_prompt * sqrt((P - 1) S / (PS - 1)), so
    # clustered / naive = t_{P-1} / t_{PS-1} * sqrt(S) * sqrt((PS - 1) / ((P - 1) S))
    expected = (stats.t.ppf(0.975, P - 1) / stats.t.ppf(0.975, P * S - 1)
                * math.sqrt(S) * math.sqrt((P * S - 1) / ((P - 1) * S)))
    assert c["ci95"] / naive_half == pytest.approx(expected, rel=1e-9)
    assert expected > 1.8  # the naive interval is much too narrow


def test_clustered_paired_test_counts_prompts_not_images():
    P, S = 10, 4
    rng = np.random.default_rng(1)
    shift = rng.normal(0.01, 0.02, P)  # per-prompt difference, identical over that prompt's seeds
    base = rng.random(P * S)
    a = [float(base[i] + shift[i // S]) for i in range(P * S)]
    b = [float(x) for x in base]
    prompts = [i // S for i in range(P * S)]
    c = clustered_paired(a, b, prompts)
    assert c["n"] == P and c["n_images"] == P * S
    assert c["mean_diff"] == pytest.approx(float(shift.mean()), abs=1e-12)
    assert c["p_ttest"] == pytest.approx(float(stats.ttest_1samp(shift, 0).pvalue), rel=1e-9)
    assert c["wins"] == int((shift > 0).sum())
    # a missing value drops that image only
    a[0] = None
    assert clustered_paired(a, b, prompts)["n_images"] == P * S - 1


def test_duplicates_are_named():
    with pytest.raises(ValueError, match=r"duplicate seeds: 0 "):
        check_unique("seeds", [0, 1, 0])
    with pytest.raises(ValueError, match="'a red circle'"):
        check_unique("prompts", ["a red circle", "b", "a red circle"])
    check_unique("seeds", [0, 1, 2])


def test_the_cross_validated_oracle_never_looks_at_the_image_it_is_scored_on():
    """Perturbing every candidate's quality on one image never changes the cross-validated oracle's choice
    for that image (it is chosen on the prompt's other seeds), while it does change the in-sample and
    per-image oracles' choices somewhere (so the check can fail)."""
    from evaluation.scoreboard import oracle_choices

    rng = np.random.default_rng(0)
    items = [(f"p{i}", s) for i in range(6) for s in range(3)]
    cands = [f"s{j}" for j in range(5)]
    quality = {c: rng.normal(0, 1, len(items)) for c in cands}
    base, left_out = oracle_choices(quality, items, cands)
    assert set(base) == {"oracle", "oracle_cv", "oracle_image"} and not left_out
    moved = {"oracle": 0, "oracle_image": 0}
    for i, item in enumerate(items):
        for trial in range(5):
            perturbed = {c: q.copy() for c, q in quality.items()}
            for c in cands:
                perturbed[c][i] = rng.normal(0, 10)
            got, _ = oracle_choices(perturbed, items, cands)
            assert got["oracle_cv"][item] == base["oracle_cv"][item], (item, trial)
            moved = {k: moved[k] + (got[k][item] != base[k][item]) for k in moved}
    assert moved["oracle"] > 0 and moved["oracle_image"] > 0
    one_seed = [(p, 0) for p in dict.fromkeys(p for p, _ in items)]
    chosen, why = oracle_choices({c: q[:len(one_seed)] for c, q in quality.items()}, one_seed, cands)
    assert set(chosen) == {"oracle", "oracle_image"} and "needs >= 2 seeds" in why["oracle_cv"]
