"""The procedural captioned image domain and its prompt splits."""

from __future__ import annotations

import numpy as np
import pytest

import domain as d


def test_deterministic_by_seed():
    a, ca = d.sample_batch(5, 8)
    b, cb = d.sample_batch(5, 8)
    c, _ = d.sample_batch(6, 8)
    assert a.dtype == np.uint8 and a.shape == (8, 64, 64, 3)
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)


def test_caption_parse_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(500):
        sc = d.sample_scene(rng)
        assert d.parse_caption(d.caption(sc)) == sc


@pytest.mark.parametrize("text,bad", [
    ("a large mauve solid circle in the centre on a plain gray background", "mauve"),
    ("a large red solid hexagon in the centre on a plain gray background", "hexagon"),
    ("a large red solid circle in the centre on a wavy gray background", "wavy"),
    ("a huge red solid circle in the centre on a plain gray background", "huge"),
])
def test_parse_errors_name_the_bad_word(text, bad):
    with pytest.raises(ValueError, match=bad):
        d.parse_caption(text)


def test_splits_hold_out_pairs_and_cover_the_grammar():
    splits = {s: d.load_prompts(s) for s in d.SPLITS}
    assert [len(splits[s]) for s in d.SPLITS] == [1000, 100, 100]
    assert not (set(splits["train"]) & set(splits["val"]) or set(splits["train"]) & set(splits["test"])
                or set(splits["val"]) & set(splits["test"]))
    for s in d.SPLITS:
        scenes = [d.parse_caption(p) for p in splits[s]]
        held = [d.has_held_out(sc) for sc in scenes]
        assert all(held) if s == "test" else not any(held)
        objs = [o for sc in scenes for o in sc.objects]
        assert {o.texture for o in objs} == set(d.TEXTURES)
        assert {o.size for o in objs} == set(d.SIZES)
        assert {sc.background for sc in scenes} == set(d.BACKGROUNDS)
        assert {len(sc.objects) for sc in scenes} == {1, 2, 3}
        if s != "test":
            assert {o.shape for o in objs} == set(d.SHAPES) and {o.colour for o in objs} == set(d.COLOURS)


def _laplacian_energy(img: np.ndarray) -> float:
    g = img.astype(np.float32).mean(-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def test_detail_heterogeneity_is_real():
    easy = "a large red solid circle in the centre on a plain gray background"
    hard = ("a small blue striped square at the top left, a small yellow dotted star on the right and "
            "a small white checkered cross at the bottom on a noisy navy background")
    e, h = d.render_prompt(easy, 0), d.render_prompt(hard, 0)
    assert _laplacian_energy(h) > 5 * _laplacian_energy(e)
    assert d.detail_level(d.parse_caption(hard)) > d.detail_level(d.parse_caption(easy)) + 0.4


def test_load_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        d.load_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.txt"):
        d.load_prompts(empty)
