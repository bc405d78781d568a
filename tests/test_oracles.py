"""The three oracles on constructed quality tables, where the right choice is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.oracles import (cross_validated_oracle, in_sample_oracle, oracle_value, per_image_oracle)

ITEMS = [("p", 0), ("p", 1), ("p", 2), ("q", 0), ("q", 1), ("q", 2)]
# candidate A is best for prompt p on average, but seed 2 of p is a lucky outlier for B;
# for prompt q, B wins on every seed
QUALITY = {"A": np.array([0.5, 0.5, 0.0, 0.1, 0.1, 0.1]),
           "B": np.array([0.0, 0.0, 0.9, 0.2, 0.3, 0.2])}


def test_in_sample_oracle_picks_per_prompt_on_its_own_items():
    choice = in_sample_oracle(QUALITY, ITEMS, ["A", "B"])
    # p: mean A 1/3 < mean B 0.3? A = 0.333.., B = 0.3 -> A; q: B
    assert [choice[i] for i in ITEMS] == ["A", "A", "A", "B", "B", "B"]


def test_cross_validated_oracle_never_sees_the_item_it_is_scored_on():
    choice = cross_validated_oracle(QUALITY, ITEMS, ["A", "B"])
    # (p,0): others 0.5,0.0 vs 0.0,0.9 -> B; (p,1): same -> B; (p,2): others 0.5,0.5 vs 0,0 -> A
    assert [choice[i] for i in ITEMS] == ["B", "B", "A", "B", "B", "B"]
    v = oracle_value(QUALITY, ITEMS, choice)
    np.testing.assert_array_equal(v, [0.0, 0.0, 0.0, 0.2, 0.3, 0.2])
    # here the in-sample oracle's headroom is all seed noise: cross-validated, it is below the best single schedule
    assert v.mean() < QUALITY["B"].mean() < oracle_value(QUALITY, ITEMS, in_sample_oracle(QUALITY, ITEMS, ["A", "B"])).mean()


def test_per_image_oracle_takes_the_best_on_every_item_and_bounds_the_others():
    choice = per_image_oracle(QUALITY, ITEMS, ["A", "B"])
    assert [choice[i] for i in ITEMS] == ["A", "A", "B", "B", "B", "B"]
    best = oracle_value(QUALITY, ITEMS, choice)
    for other in (in_sample_oracle, cross_validated_oracle):
        assert np.all(best >= oracle_value(QUALITY, ITEMS, other(QUALITY, ITEMS, ["A", "B"])))


def test_ties_go_to_the_first_candidate_and_bad_tables_are_refused():
    flat = {"A": np.zeros(6), "B": np.zeros(6)}
    for oracle in (in_sample_oracle, cross_validated_oracle, per_image_oracle):
        assert set(oracle(flat, ITEMS, ["B", "A"]).values()) == {"B"}
    with pytest.raises(ValueError, match="one seed"):
        cross_validated_oracle({"A": np.zeros(2)}, [("p", 0), ("q", 0)], ["A"])
    with pytest.raises(ValueError, match="one value per item"):
        in_sample_oracle({"A": np.zeros(5)}, ITEMS, ["A"])
    with pytest.raises(ValueError, match="no quality values"):
        per_image_oracle(QUALITY, ITEMS, ["A", "C"])
    with pytest.raises(ValueError, match="at least one candidate"):
        per_image_oracle(QUALITY, ITEMS, [])
