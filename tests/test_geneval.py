"""GenEval path: generate.py writes GenEval's layout (end to end on the embedded default with a hand-written
metadata file in our grammar), evaluate_agent.py --geneval tabulates results files in GenEval's format,
and the HPSv2 scorer loads a local checkpoint in HPSv2's format."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate_agent
import generate
from evaluation.geneval import GENEVAL_TAGS
from evaluation.geneval_table import geneval_mode, signflip_p
from evaluation.preference import HPSv2Scorer, HPSv2Unavailable

# GenEval-style metadata whose prompts are in the embedded domain's grammar (the classes and clauses are
# only carried through: GenEval's detector is not run here)
METADATA = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
     "prompt": "a large red solid circle in the centre on a plain gray background"},
    {"tag": "colors", "include": [{"class": "star", "count": 1, "color": "blue"}],
     "prompt": "a small blue dotted star at the top left on a plain white background"},
    {"tag": "two_object", "include": [{"class": "diamond", "count": 1}, {"class": "ring", "count": 1}],
     "prompt": "a medium red dotted diamond in the centre and a small red dotted ring at the bottom on a plain black background"},
]
LINES = [json.dumps(m) for m in METADATA]


def geneval_results_line(filename: str, meta: dict, correct: bool) -> str:
    """One line as GenEval's evaluate_images.py writes it (pandas records: '/' escaped, metadata a string)."""
    rec = {"filename": filename, "tag": meta["tag"], "prompt": meta["prompt"], "correct": correct,
           "reason": "" if correct else "expected something, found nothing", "metadata": json.dumps(meta), "details": "{}"}
    return json.dumps(rec).replace("/", "\\/")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    meta = root / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(LINES) + "\n")
    for name, sched in (("original", "original"), ("fastvar", "fastvar")):
        assert generate.main(["--prompts", f"geneval:{meta}", "--images-per-prompt", "2", "--schedule", sched,
                              "--out", str(root / name)]) == 0
    return root


def test_generate_writes_genevals_layout(generated):
    for name in ("original", "fastvar"):
        out = generated / name
        assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]  # nothing half-written left
        for i, line in enumerate(LINES):
            folder = out / f"{i:05d}"
            # GenEval's evaluator: json.load(metadata.jsonl), every samples/<digits>.png
            assert json.loads((folder / "metadata.jsonl").read_text()) == METADATA[i]
            assert (folder / "metadata.jsonl").read_text() == line + "\n"
            samples = sorted(p.name for p in (folder / "samples").iterdir())
            assert samples == ["0000.png", "0001.png"] and all(re.fullmatch(r"\d+\.png", s) for s in samples)
            assert Image.open(folder / "samples" / "0000.png").size == (64, 64)
            cfg = json.loads((folder / "config.json").read_text())
            assert cfg["prompt"] == METADATA[i]["prompt"] and cfg["tag"] == METADATA[i]["tag"]
            assert cfg["schedule"] == name and [r["seed"] for r in cfg["images"]] == [0, 1]
            assert [r["file"] for r in cfg["images"]] == ["samples/0000.png", "samples/0001.png"]
            rec = cfg["images"][0]
            assert rec["flops_total"] == pytest.approx(rec["flops_fraction"] * cfg["flops_full"]) and rec["latency_s"] > 0
            if name == "fastvar":
                assert rec["ratios"] == [0.0, 0.0, 0.0, 0.4, 0.5, 1.0, 1.0] and 0.3 < rec["flops_fraction"] < 0.4
            else:
                assert rec["flops_fraction"] == 1.0
    a = np.asarray(Image.open(generated / "original/00001/samples/0000.png"))
    b = np.asarray(Image.open(generated / "original/00001/samples/0001.png"))
    assert not np.array_equal(a, b)  # two seeds, two images


def test_generate_geneval_bad_input(generated, tmp_path, capsys):
    meta = generated / "evaluation_metadata.jsonl"
    blank = tmp_path / "blank.jsonl"
    blank.write_text(LINES[0] + "\n\n" + LINES[1] + "\n")
    notag = tmp_path / "notag.jsonl"
    notag.write_text(json.dumps({"prompt": "a red circle"}) + "\n")
    cases = [(["--prompts", f"geneval:{tmp_path / 'nope.jsonl'}"], "nope.jsonl"),
             (["--prompts", f"geneval:{blank}"], "blank.jsonl:2: empty line"),
             (["--prompts", f"geneval:{notag}"], "notag.jsonl:1: 'tag'"),
             (["--prompts", f"geneval:{meta}", "--dft"], "--dft"),
             (["--prompts", f"geneval:{meta}", "--prompt", "x"], "not both")]
    for argv, message in cases:
        assert generate.main(argv + ["--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    # another schedule into a folder that holds FastVAR's images: refused, nothing touched
    before = (generated / "fastvar/00000/samples/0000.png").read_bytes()
    assert generate.main(["--prompts", f"geneval:{meta}", "--images-per-prompt", "2", "--schedule", "tail",
                          "--out", str(generated / "fastvar")]) == 2
    err = capsys.readouterr().err
    assert "schedule: 'fastvar' there vs 'tail' now" in err and "fresh --out" in err
    assert (generated / "fastvar/00000/samples/0000.png").read_bytes() == before


def _clip_judged_results(root, method: str, clip) -> tuple[str, dict]:
    """A results file in GenEval's format for a generated folder, judged by the small CLIP (correct = the
    image's own prompt beats the other prompts), standing in for GenEval's detector."""
    lines, verdicts = [], {}
    prompts = [m["prompt"] for m in METADATA]
    for i, meta in enumerate(METADATA):
        for k in range(2):
            path = root / method / f"{i:05d}" / "samples" / f"{k:04d}.png"
            x = torch.from_numpy(np.asarray(Image.open(path)).copy()).permute(2, 0, 1).float()[None] / 255
            sims = clip.score(x.expand(len(prompts), -1, -1, -1), prompts)
            verdicts[(i, k)] = bool(int(sims.argmax()) == i)
            lines.append(geneval_results_line(str(path), meta, verdicts[(i, k)]))
    results = root / f"{method}_results.jsonl"
    results.write_text("\n".join(lines) + "\n")
    return str(results), verdicts


def test_tabulates_generated_images_end_to_end(generated, tmp_path, capsys):
    from rewards import ClipScorer

    clip = ClipScorer.embedded()
    r_orig, v_orig = _clip_judged_results(generated, "original", clip)
    r_fast, v_fast = _clip_judged_results(generated, "fastvar", clip)
    out = tmp_path / "table"
    assert evaluate_agent.main(["--geneval", f"original={r_orig}", "--geneval", f"fastvar={r_fast}", "--out", str(out),
                                "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "geneval_summary.json").read_text())
    assert summary == json.loads((tmp_path / "s.json").read_text())
    assert (out / "geneval_table.md").read_text() in printed + "\n"
    fast = summary["methods"]["fastvar"]
    expected = {METADATA[i]["tag"]: np.mean([v_fast[(i, k)] for k in range(2)]) for i in range(3)}
    assert {t: fast["tags"][t]["score"] for t in expected} == pytest.approx(expected, abs=1e-12)
    assert fast["overall"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    # FLOPs and latency come from the config.json beside the images
    cfgs = [json.loads((generated / "fastvar" / f"{i:05d}" / "config.json").read_text()) for i in range(3)]
    flops = [r["flops_fraction"] for c in cfgs for r in c["images"]]
    lat = [1000 * r["latency_s"] for c in cfgs for r in c["images"]]
    assert fast["costs"]["flops_fraction"]["mean"] == pytest.approx(np.mean(flops), rel=1e-12)
    assert fast["costs"]["latency_ms"]["mean"] == pytest.approx(np.mean(lat), rel=1e-12)
    assert fast["costs"]["flops_speedup"] == pytest.approx(1 / np.mean(flops), rel=1e-9)
    assert fast["schedule"] == "fastvar" and summary["methods"]["original"]["costs"]["flops_fraction"]["mean"] == 1.0
    assert "| fastvar | fastvar |" in printed and "fastvar vs original" in printed


def test_hpsv2_scores_in_the_table_from_a_local_checkpoint(generated, tmp_path):
    """HPSv2's checkpoint format ({'state_dict': ...}, loaded weights-only) on the small CLIP architecture
    (the real ViT-H-14 weights are not available offline): the score is the cosine of image and text."""
    from rewards import ClipScorer
    from rewards.clip_model import EMBEDDED_CLIP_NAME, register_embedded_clip

    register_embedded_clip()
    clip = ClipScorer.embedded()
    ckpt = tmp_path / "hps_tiny.pt"
    torch.save({"state_dict": clip.model.state_dict()}, ckpt)
    hps = HPSv2Scorer(ckpt, device="cpu", arch=EMBEDDED_CLIP_NAME)
    img = torch.from_numpy(np.asarray(Image.open(generated / "original/00000/samples/0000.png")).copy())
    x = img.permute(2, 0, 1).float()[None] / 255
    prompts = [METADATA[0]["prompt"]]
    cos = float((clip.image_embedding(x) * clip.text_embedding(prompts)).sum())
    assert hps(x, prompts)[0] == pytest.approx(cos, abs=1e-5)
    from evaluation.metrics import MetricSuite

    row = MetricSuite(clip, None, hpsv2=hps).score(x, prompts, None)[0]  # folder / compare mode's per-image row
    assert row["hpsv2"] == pytest.approx(cos, abs=1e-5) and row["clip_score"] == pytest.approx(100 * max(cos, 0), abs=1e-3)
    results = tmp_path / "r.jsonl"
    results.write_text("\n".join(geneval_results_line(str(generated / "original" / f"{i:05d}" / "samples" / f"{k:04d}.png"),
                                                      m, True) for i, m in enumerate(METADATA) for k in range(2)) + "\n")
    summary = geneval_mode([f"original={results}"], scorers={"hpsv2": hps}, log=lambda s: None)
    assert summary["methods"]["original"]["scores"]["hpsv2"]["mean"] == pytest.approx(
        np.mean([hps(torch.from_numpy(np.asarray(Image.open(generated / "original" / f"{i:05d}" / "samples" / f"{k:04d}.png"))
                                      .copy()).permute(2, 0, 1).float()[None] / 255, [m["prompt"]])[0]
                 for i, m in enumerate(METADATA) for k in range(2)]), abs=1e-6)


def test_hpsv2_bad_checkpoints_are_clear_errors(tmp_path, capsys):
    from rewards.clip_model import EMBEDDED_CLIP_NAME, register_embedded_clip

    register_embedded_clip()
    assert evaluate_agent.main(["--geneval", f"a={tmp_path / 'r.jsonl'}", "--hpsv2-checkpoint", str(tmp_path / "HPS_v2.1.pt")]) == 2
    err = capsys.readouterr().err
    assert "HPS_v2.1.pt does not exist" in err and "nothing is downloaded" in err
    assert evaluate_agent.main(["--orig", str(tmp_path), "--fast", str(tmp_path), "--hpsv2-checkpoint", str(tmp_path / "h.pt")]) == 2
    assert "h.pt does not exist" in capsys.readouterr().err  # folder mode: the same scorer through MetricSuite
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3)}}, wrong)
    with pytest.raises(HPSv2Unavailable, match="does not fit open_clip varprune-clip-tiny"):
        HPSv2Scorer(wrong, device="cpu", arch=EMBEDDED_CLIP_NAME)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "args": argparse_namespace()}, pickled)
    with pytest.raises(HPSv2Unavailable, match="weights-only"):
        HPSv2Scorer(pickled, device="cpu", arch=EMBEDDED_CLIP_NAME)


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-4)


# ---- the tabulator on results files written here, no images ------------------------------------------
def _write_results(path, verdicts: dict[int, list[bool]], prompts: list[dict], folder_root: str = "imgs") -> str:
    lines = [geneval_results_line(f"{folder_root}/{i:05d}/samples/{k:04d}.png", prompts[i], c)
             for i, cs in verdicts.items() for k, c in enumerate(cs)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _prompts(tags: list[str]) -> list[dict]:
    return [{"tag": t, "include": [{"class": f"thing{i}", "count": 1}], "prompt": f"a photo of thing {i}"} for i, t in enumerate(tags)]


def test_geneval_scoring_rule_and_paired_statistics(tmp_path):
    # 6 single-object prompts and 2 counting prompts, 4 images each: the overall score is GenEval's mean
    # over tags, not over images
    prompts = _prompts(["single_object"] * 6 + ["counting"] * 2)
    ref = {i: [True] * 4 for i in range(6)} | {6: [True, False, False, False], 7: [False] * 4}
    new = {i: [False] * 4 for i in range(6)} | {6: [True, False, False, False], 7: [False] * 4}
    a, b = _write_results(tmp_path / "a.jsonl", ref, prompts), _write_results(tmp_path / "b.jsonl", new, prompts)
    s = geneval_mode([f"ref={a}", f"new={b}"], log=lambda x: None)
    r = s["methods"]["ref"]
    assert r["tags"]["single_object"]["score"] == 1.0 and r["tags"]["counting"]["score"] == 1 / 8
    assert r["overall"] == (1.0 + 1 / 8) / 2 and r["images_correct"] == 25 / 32 and r["prompts_any_correct"] == 7 / 8
    assert s["tags"] == ["single_object", "counting"] and s["prompts_per_tag"] == {"single_object": 6, "counting": 2}
    p = s["paired"]["new vs ref"]
    assert p["overall"]["diff"] == -0.5 and p["single_object"]["diff"] == -1.0 and p["counting"]["diff"] == 0.0
    # 6 prompts differ, all the same way: exactly 2 of the 64 sign patterns are as extreme
    assert p["overall"]["p"] == 2 / 64 and p["single_object"]["p"] == 2 / 64 and p["counting"]["p"] == 1.0
    assert (p["single_object"]["prompts_better"], p["single_object"]["prompts_worse"]) == (0, 6)
    assert p["single_object"]["ci"] == [-1.0, -1.0]  # every resample of these prompts differs by exactly 1
    assert r["costs"] == {} and any("FLOPs and latency n/a" in n for n in s["notes"])


def test_cis_are_clustered_by_prompt(tmp_path):
    """Four images with one verdict per prompt carry the information of one: the CI is that of one image
    per prompt (an image-level bootstrap would be half as wide)."""
    prompts = _prompts(["colors"] * 10)
    verdict = [True, True, False, True, False, False, True, True, True, False]
    one = _write_results(tmp_path / "one.jsonl", {i: [v] for i, v in enumerate(verdict)}, prompts)
    four = _write_results(tmp_path / "four.jsonl", {i: [v] * 4 for i, v in enumerate(verdict)}, prompts)
    s1 = geneval_mode([f"m={one}"], log=lambda x: None)["methods"]["m"]
    s4 = geneval_mode([f"m={four}"], log=lambda x: None)["methods"]["m"]
    assert s1["overall"] == s4["overall"] == 0.6
    assert s1["tags"]["colors"]["ci"] == s4["tags"]["colors"]["ci"]
    lo, hi = s4["tags"]["colors"]["ci"]
    assert hi - lo > 0.4  # 10 prompts: about ±0.3, not the ±0.15 of 40 independent images


def test_signflip_p_exact_and_random():
    assert signflip_p(np.array([1.0, 1.0, 1.0]), np.ones(3)) == 2 / 8
    assert signflip_p(np.zeros(5), np.ones(5)) == 1.0
    assert signflip_p(np.array([2.0, -1.0, 0.0]), np.ones(3)) == 1.0  # |sum| = 1 is the smallest of 4 patterns
    d = np.ones(40)  # 40 prompts all better: far below any random pattern
    assert signflip_p(d, np.ones(40)) == pytest.approx(1 / 20001)


@pytest.mark.parametrize("case, message", [
    ("missing", "missing.jsonl does not exist"),
    ("malformed", "bad.jsonl:2: not a JSON object"),
    ("not_bool", "bad.jsonl:1: 'correct' must be true or false"),
    ("no_filename", "bad.jsonl:1: missing filename"),
    ("bad_filename", "is not GenEval's <folder>/samples/<k>.png"),
    ("other_prompts", "'a' and 'b' were scored on different prompts"),
    ("other_samples", "has images [0, 1]"),
    ("spec", "--geneval must be NAME=RESULTS.jsonl"),
    ("same_name", "names must differ"),
    ("images_dir", "images folder"),
    ("with_run", "cannot be combined"),
])
def test_geneval_table_bad_input(tmp_path, capsys, case, message):
    prompts = _prompts(["single_object", "colors"])
    good = _write_results(tmp_path / "good.jsonl", {0: [True, False], 1: [True, True]}, prompts)
    bad = tmp_path / "bad.jsonl"
    line = geneval_results_line("imgs/00000/samples/0000.png", prompts[0], True)
    argv = {"missing": [f"a={tmp_path / 'missing.jsonl'}"], "spec": ["nonsense"], "same_name": [f"a={good}", f"a={good}"],
            "images_dir": [f"a={good}@{tmp_path / 'no_dir'}"], "with_run": [f"a={good}"]}.get(case, [f"a={good}", f"b={bad}"])
    if case == "malformed":
        bad.write_text(line + "\n{not json\n")
    elif case == "not_bool":
        bad.write_text(line.replace('"correct": true', '"correct": "yes"') + "\n")
    elif case == "no_filename":
        bad.write_text(json.dumps({"tag": "colors", "correct": True, "metadata": json.dumps(prompts[1])}) + "\n")
    elif case == "bad_filename":
        bad.write_text(line.replace("0000.png", "grid.jpg") + "\n")
    elif case == "other_prompts":
        _write_results(bad, {0: [True, False], 1: [True, True]}, _prompts(["single_object", "position"]))
    elif case == "other_samples":
        _write_results(bad, {0: [True, False, True], 1: [True, True]}, prompts)
    args = [x for spec in argv for x in ("--geneval", spec)] + (["--run", "runs/x"] if case == "with_run" else [])
    assert evaluate_agent.main(args) == 2
    assert message in capsys.readouterr().err


def test_tag_names_follow_geneval():
    assert list(GENEVAL_TAGS) == ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def test_rerun_with_the_same_settings_replaces_prompt_folders(generated, capsys):
    meta = generated / "evaluation_metadata.jsonl"
    out = generated / "original"
    stale = out / ".00001.partial"  # what a killed run leaves: never read by GenEval (not all digits), removed
    (stale / "samples").mkdir(parents=True)
    before = {p: p.read_bytes() for p in sorted(out.glob("0000[01]/samples/*.png"))}
    cfg1 = (out / "00001" / "config.json").read_text()
    assert generate.main(["--prompts", f"geneval:{meta}", "--num-prompts", "1", "--images-per-prompt", "2",
                          "--out", str(out)]) == 0
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
    assert {p: p.read_bytes() for p in sorted(out.glob("0000[01]/samples/*.png"))} == before  # same seeds, same images
    assert (out / "00001" / "config.json").read_text() == cfg1  # beyond --num-prompts: untouched
