"""evaluate_agent.py: folder mode on generated images (with broken inputs), and the statistics helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import evaluate_agent
import generate
from rewards.stats import mean_ci, paired

PROMPTS = {"circle": "a large red solid circle in the centre on a plain gray background",
           "star": "a small blue dotted star at the top left on a plain white background"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    pfile = root / "p.json"
    pfile.write_text(json.dumps(PROMPTS))
    for name, sched in (("orig", "original"), ("fast", "fastvar")):
        assert generate.main(["--prompts", str(pfile), "--schedule", sched, "--out", str(root / name)]) == 0
    return root


def test_folder_mode_reads_the_generate_layout(folders, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate_agent.main(["--orig", str(folders / "orig"), "--fast", str(folders / "fast"), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    fast = rep["methods"]["fast"]
    assert fast["num_scored"] == 2 and not fast["missing"] and not fast["extra"]
    assert {r["prompt"] for r in fast["per_image"]} == set(PROMPTS.values())  # prompts from config.json
    assert 0 < fast["metrics"]["ssim"]["mean"] < 1 and "ssim" not in rep["methods"]["orig"]["metrics"]
    assert rep["methods"]["orig"]["metrics"]["clip_score"]["n"] == 2
    assert "lpips" in rep["unavailable"]  # no ImageNet backbone offline: said plainly, not silently dropped
    assert "| fast | 2 / 2 |" in capsys.readouterr().out


def test_flat_folders_with_broken_images_are_listed_not_dropped(folders, tmp_path):
    orig, rl = tmp_path / "o", tmp_path / "rl"
    orig.mkdir()
    rl.mkdir()
    for i, name in enumerate(PROMPTS):
        img = Image.open(folders / "orig" / f"gen_images_{name}" / "1.jpg")
        img.save(orig / f"{name}_{i}.png")
        Image.open(folders / "fast" / f"gen_images_{name}" / "1.jpg").save(rl / f"{name}_{i}.png")
    Image.open(folders / "orig" / "gen_images_star" / "1.jpg").save(orig / "red_square.png")  # prompt from name
    (orig / "metadata.json").write_text(json.dumps({"circle_0.png": {"prompt": PROMPTS["circle"]}}))
    (rl / "star_1.png").write_bytes(b"garbage")  # unreadable
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rl / "red_square.png")  # size mismatch
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(rl / "extra_one.png")
    out = tmp_path / "r.json"
    assert evaluate_agent.main(["--orig", str(orig), "--rl", str(rl), "--json", str(out)]) == 0
    m = json.loads(out.read_text())["methods"]["rl"]
    assert m["num_scored"] == 1 and m["unreadable"] == ["star_1.png"] and m["extra"] == ["extra_one.png"]
    assert m["size_mismatch"] and m["size_mismatch"][0].startswith("red_square.png")
    assert m["per_image"][0]["prompt"] == PROMPTS["circle"]
    o = json.loads(out.read_text())["methods"]["orig"]
    prompts = {r["image"]: r["prompt"] for r in o["per_image"]}
    assert prompts["red_square.png"] == "red square" and prompts["star_1.png"] == "star 1"


def test_folder_mode_bad_arguments(tmp_path, capsys):
    assert evaluate_agent.main(["--fast", str(tmp_path)]) == 2
    assert "--orig" in capsys.readouterr().err
    assert evaluate_agent.main(["--orig", str(tmp_path / "missing"), "--fast", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    assert evaluate_agent.main(["--orig", str(tmp_path), "--image-reward", "--lpips-backbone", str(tmp_path / "x.pth")]) == 2
    assert "x.pth" in capsys.readouterr().err


def test_statistics_helpers():
    m, h, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (m, n) == (2.0, 3) and h == pytest.approx(2.4842, abs=1e-3)  # t(0.975, 2) * 1 / sqrt(3)
    c = paired([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.5, 4.0])
    assert c["mean_diff"] == pytest.approx(0.5) and c["wins"] == 3 and c["n"] == 4
