"""generate.py and scripts/analyze_fourier.py on the shipped embedded generator."""

from __future__ import annotations

import json

import numpy as np
import pytest

import generate
from scripts import analyze_fourier

PROMPT = "a large red solid circle in the centre on a plain gray background"


def test_writes_the_seed_layout_and_merges_config_all(tmp_path):
    out = tmp_path / "results"
    assert generate.main(["--prompt", PROMPT, "--name", "circle", "--schedule", "fastvar", "--out", str(out)]) == 0
    prompts = tmp_path / "p.tsv"
    prompts.write_text("star\ta small blue dotted star at the top left on a plain white background\n")
    assert generate.main(["--prompts", str(prompts), "--schedule", "6:0.5,8:1", "--out", str(out),
                          "--images-per-prompt", "2"]) == 0
    assert (out / "gen_images_circle" / "1.jpg").is_file()
    assert (out / "gen_images_star" / "2.jpg").is_file()
    cfg = json.loads((out / "gen_images_circle" / "config.json").read_text())
    rec = cfg["images"][0]
    assert cfg["prompt"] == PROMPT and cfg["schedule"] == "fastvar"
    assert rec["ratios"] == [0.0, 0.0, 0.0, 0.4, 0.5, 1.0, 1.0]
    assert rec["pruning_scales"] == "4:0.4,5:0.5,6:1,8:1"
    assert 0.3 < rec["flops_fraction"] < 0.4 and rec["latency_s"] > 0
    assert rec["flops_total"] == pytest.approx(rec["flops_fraction"] * cfg["flops_full"])
    assert set(rec["scales"][0]) >= {"scale", "width", "ratio", "tokens", "kept", "skipped", "flops"}
    assert [s["skipped"] for s in rec["scales"]] == [False] * 5 + [True] * 2
    star = json.loads((out / "gen_images_star" / "config.json").read_text())
    assert [i["seed"] for i in star["images"]] == [0, 1]
    assert star["images"][0]["ratios"][-2:] == [0.5, 1.0]
    merged = json.loads((out / "config_all.json").read_text())
    assert set(merged) == {"circle", "star"}  # the second run added to, not replaced, the first


def test_same_seed_same_image_bytes_and_json_prompts(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"a": PROMPT}))
    for d in ("x", "y"):
        assert generate.main(["--prompts", str(p), "--out", str(tmp_path / d)]) == 0
    assert (tmp_path / "x/gen_images_a/1.jpg").read_bytes() == (tmp_path / "y/gen_images_a/1.jpg").read_bytes()


def test_intermediates_and_dft_skip_skipped_scales(tmp_path):
    out = tmp_path / "r"
    assert generate.main(["--prompt", PROMPT, "--name", "c", "--schedule", "fastvar", "--out", str(out),
                          "--save-intermediate", "--dft"]) == 0
    folder = out / "gen_images_c"
    summed = sorted(p.name for p in (folder / "summed_codes").iterdir())
    assert summed == [f"intermediate_scale_img_{i}.png" for i in range(5)]  # scales 5 and 6 skipped
    assert len(list((folder / "rescale_codes").iterdir())) == 5
    spec = np.load(folder / "fourier_latent_unscaled" / "scale_4.npy")
    assert spec.shape == (5, 5) and np.isfinite(spec).all()
    assert np.load(folder / "fourier_pixel_summed" / "scale_4.npy").shape == (64, 64)
    assert analyze_fourier.main([str(folder), "--kinds", "fourier_pixel_summed"]) == 0
    assert (folder / "fourier_pixel_summed_radial.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--prompt", PROMPT, "--schedule", "7:0.5"], "4, 5, 6, 8"),
    (["--prompt", PROMPT, "--schedule", "bogus"], "unknown schedule"),
    (["--prompt", "  "], "empty"),
    (["--prompts", "no_such_file_or_split"], "no_such_file_or_split"),
    (["--prompt", PROMPT, "--agent", "no_such_run"], "no_such_run"),
    (["--prompt", PROMPT, "--cfg", "0.5"], "--cfg"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    assert generate.main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "config_all.json").exists()
