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


# ---- compare mode: every argument is checked before the first image ------------------------------------
# The checks live in evaluation.compare_plan.resolve_plan (no generator, no metric model) and, for budgets
# given as multiples of FastVAR's FLOPs, in agent_rows (needs FastVAR's fraction): both run before the first
# "[   n s] generating" progress line. Without them, `--budgets 2` failed after ~25 s of images.

def _progress_lines(err: str) -> list[str]:
    """The comparison's progress lines ("[     3 s] generating: ..."): none may come before an argument error."""
    import re

    return re.findall(r"^\[\s*\d+ s\] .*$", err, flags=re.M)


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "2"], "--budgets: budget 2.0000 is outside (0, 1]"),
    (["--budgets", "1.5"], "--budgets: budget 1.5000 is outside (0, 1]"),
    (["--budgets", "0.95", "0"], "--budgets: budget 0.0000 is outside (0, 1]"),
    (["--budgets", "0.95", "-0.3"], "--budgets: budget -0.3000 is outside (0, 1]"),
    (["--budgets", "0.95", "0.950"], "--budgets lists a budget twice: 0.95 0.950"),
    (["--budgets", "fastvar", "fastvar"], "--budgets lists a budget twice: fastvar fastvar"),
    (["--budgets", "0.3", "0.30"], "--budgets lists a budget twice: 0.3 0.30"),
    (["--budgets", "half"], "--budgets: 'half' is not a budget"),
    (["--budget", "0.3", "--budgets", "0.4"], "--budget and --budgets cannot be combined"),
    (["--budgets", "3fastvar"], "(3fastvar) is outside (0, 1]"),  # needs FastVAR's FLOPs: after the generator, before images
    (["--budgets", "0.1"], "budget 0.1000 is below 0.18"),  # the all-skip floor (0.184) needs the generator too
    (["--seeds", "0", "0"], "duplicate seeds in --seeds 0 0: 0"),
    (["--search-seeds", "1", "1"], "duplicate seeds in --search-seeds 1 1: 1"),
    (["--num-prompts", "0"], "--num-prompts must be >= 1, got 0"),
    (["--prompts", "no_such_prompts.txt"], "prompts file no_such_prompts.txt not found"),
    (["--search-prompts", "test"], "are both test and search prompts"),
    (["--judge-weights", "no_such_judge.pt"], "--judge-weights no_such_judge.pt not found"),
])
def test_compare_mode_refuses_bad_arguments_before_any_image(budget_run, tmp_path, capsys, argv, message):
    out = tmp_path / "ev"
    assert evaluate_agent.main(["--run", str(budget_run), "--latency-images", "0"] + argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and not _progress_lines(err)
    assert not out.exists()


def test_compare_mode_refuses_bad_paths_and_runs_before_any_image(budget_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["--run", str(budget_run), "--num-prompts", "1", "--seeds", "0"]
    for argv, message in (([f"--cache-dir={a_file}"], f"--cache-dir {a_file} is a file"),
                          ([f"--out={a_file}"], f"--out {a_file} is a file"),
                          ([f"--json={tmp_path}"], f"--json {tmp_path} is a folder"),
                          ([f"--run={budget_run}"], "--run lists the same run twice")):
        assert evaluate_agent.main(base + argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and not _progress_lines(err), argv
    unfinished = tmp_path / "unfinished"  # a run folder without its model: named before the baselines are made
    unfinished.mkdir()
    (unfinished / "config.json").write_text((budget_run / "config.json").read_text())
    assert evaluate_agent.main(["--run", str(unfinished), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert f"{unfinished / 'best_model.zip'} is missing" in err and not _progress_lines(err)
    assert evaluate_agent.main(["--runs-dir", str(tmp_path / "empty")]) == 2
    assert f"no finished train.py run under {tmp_path / 'empty'}/" in capsys.readouterr().err


def test_compare_mode_defaults_to_every_finished_run_side_by_side(budget_run, tmp_path):
    """No --run: every finished run under --runs-dir, oldest first; an unfinished one is left out."""
    import os
    import shutil

    from evaluation.compare_plan import resolve_runs

    runs_dir = tmp_path / "runs"
    for i, name in enumerate(("b_old", "a_new")):
        shutil.copytree(budget_run, runs_dir / name)
        os.utime(runs_dir / name / "best_model.zip", (1_000_000 + i, 1_000_000 + i))
    (runs_dir / "unfinished").mkdir()
    (runs_dir / "unfinished" / "config.json").write_text((budget_run / "config.json").read_text())
    assert [r.label for r in resolve_runs((), runs_dir, static_search=True)] == ["b_old", "a_new"]
    assert [r.label for r in resolve_runs((runs_dir / "a_new",), runs_dir, static_search=True)] == ["a_new"]

def test_the_resolve_stage_needs_no_generator(budget_run, tmp_path):
    """resolve_plan checks and resolves a request on its own (no model, no image); budgets relative to FastVAR
    are checked by agent_rows against FastVAR's fraction, which the caller gets from the generator. A budget
    outside the run's trained range makes its agent row n/a, saying why; one outside (0, 1] is an error."""
    from evaluation.compare_plan import CompareRequest, ItemRequest, agent_rows, budget_request, resolve_plan

    plan = resolve_plan(CompareRequest(runs=(budget_run,), test=ItemRequest("test", 2, (0, 5)), out=tmp_path / "ev"))
    assert [r.label for r in plan.runs] == ["b"] and plan.domain_prompts and plan.first_controllable == 3
    assert len(plan.items.test) == 4 and plan.items.seeds == [0, 5] and len(plan.items.search) == 100
    assert plan.budgets.tokens == ["fastvar", "0.8fastvar", "0.6fastvar"] and not plan.budgets.explicit
    assert [(r.name, round(r.budget, 3)) for r in agent_rows(plan.runs, plan.budgets, 0.5)] == [
        ("rl:b@0.500", 0.5), ("rl:b@0.400", 0.4), ("rl:b@0.300", 0.3)]
    rows = agent_rows(plan.runs, plan.budgets, 0.35)  # 0.6 x 0.35 = 0.21: below the trained range
    assert [(r.name, round(r.budget, 3), r.na) for r in rows] == [
        ("rl:b@0.350", 0.35, None), ("rl:b@0.280", 0.28, None),
        ("rl:b@0.210", 0.21, "budget 0.21 outside the trained range [0.25, 0.6]")]
    with pytest.raises(ValueError, match=r"--budgets: budget 1\.0500 \(3fastvar\) is outside \(0, 1\]"):
        agent_rows(plan.runs, budget_request(None, ("3fastvar",)), 0.35)
    twice = resolve_plan(CompareRequest(runs=(budget_run,), budgets=("0.35", "fastvar"), out=tmp_path / "ev"))
    with pytest.raises(ValueError, match="--budgets lists a budget twice: 0.35 fastvar"):
        agent_rows(twice.runs, twice.budgets, 0.35)
    with pytest.raises(ValueError, match=r"--budgets: budget 2\.0000 is outside \(0, 1\]"):
        resolve_plan(CompareRequest(runs=(budget_run,), budgets=("2",)))
    near = resolve_plan(CompareRequest(runs=(budget_run,), budgets=("0.95", "fastvar"), out=tmp_path / "ev"))
    assert [(r.name, r.budget, r.na) for r in agent_rows(near.runs, near.budgets, 0.35)] == [
        ("rl:b@0.950", 0.95, "budget 0.95 outside the trained range [0.25, 0.6]"), ("rl:b@0.350", 0.35, None)]
    assert not (tmp_path / "ev").exists()


def test_compare_mode_on_a_budget_conditioned_run_has_every_oracle_attribute_and_distribution(budget_run, tmp_path):
    """The headline setup, small: a budget-conditioned run with the CFG-drop lever, static search and the
    oracles. Every oracle row is there and says what it bounds; the per-budget gap share is against
    oracle_cv; DomainEval per attribute and the distribution measures are in every method's summary;
    the random row never spends more transformer FLOPs than the agent's mean. With one seed the
    cross-validated oracle is left out with a note, not an error."""
    import csv

    from judge import ATTRIBUTES

    base = ["--run", str(budget_run), "--num-prompts", "2", "--search-num-prompts", "2", "--grid-ratios", "0.5",
            "--refine-rounds", "0", "--budgets", "0.3", "--latency-images", "0", "--grid-prompts", "1",
            "--oracle-candidates", "0", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "ev"
    assert evaluate_agent.main(base + ["--seeds", "0", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    methods, table = summary["methods"], (out / "table.md").read_text()
    for kind in ("oracle", "oracle_cv", "oracle_image"):
        m = methods[kind]
        assert m["upper_bound"] and m["oracle_kind"] == kind and m["oracle"]["kind"] == kind
        assert m["bounds"] == summary["oracles"]["bounds"][kind] and m["bounds"] in m["note"]
    assert "per-prompt controller" in methods["oracle_cv"]["bounds"] and "seed noise" in methods["oracle"]["bounds"]
    assert "kept or dropped" in methods["best_static"]["note"]  # the run may drop the CFG branch: so may its static
    entry = summary["budgets"][0]
    assert entry["oracle_cv"] == "oracle_cv" and set(entry["gap_captured"]) == {"oracle_cv", "oracle"}
    assert "of the gap to oracle_cv" in table and "of the gap to the in-sample oracle" in table
    for name, m in methods.items():
        assert list(m["domain_per_attribute"]) == list(ATTRIBUTES) + ["scene"], name
        assert all(v["n"] == 2 and v["n_images"] == 4 for v in m["domain_per_attribute"].values()), name
        assert m["distribution"]["seed_diversity"] > 0, name
        if name != "original":  # every other method prunes: its images, and so their features, differ from Original's
            assert m["distribution"]["frechet_distance_to_original"] > 0, name
    assert methods["original"]["distribution"]["frechet_distance_to_original"] == pytest.approx(0, abs=1e-6)
    assert "### DomainEval per attribute" in table and "Fréchet distance to Original" in table
    assert "RELATIVE at this sample size" in table
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    agent_mean = float(np.mean([float(r["flops_fraction"]) for r in rows if r["method"] == "rl:b"]))
    assert all(float(r["flops_fraction"]) <= agent_mean + 1e-12 for r in rows if r["method"] == "random")
    one = tmp_path / "one"
    assert evaluate_agent.main(base + ["--seeds", "0", "--out", str(one)]) == 0
    single = json.loads((one / "summary.json").read_text())
    assert "oracle_cv" not in single["methods"] and {"oracle", "oracle_image"} <= set(single["methods"])
    assert "needs >= 2 seeds" in single["oracles"]["left_out"]["oracle_cv"]
    assert "- oracle_cv: left out" in (one / "table.md").read_text()
    assert single["methods"]["rl:b"]["distribution"]["seed_diversity"] is None
    assert set(single["budgets"][0]["gap_captured"]) == {"oracle"}


def test_compare_mode_at_a_budget_outside_the_trained_range_has_an_na_agent_row_and_static_rows(budget_run, tmp_path):
    """Issue #24: --budgets 0.95 fastvar on a run trained on [0.25, 0.6]. At 0.95 the agent row is n/a (no
    images, the reason in the summary and the tables), while the best static schedule, the oracles and the
    random schedule are computed at the budget itself: the search's target is 0.95 of the transformer FLOPs
    as a total fraction (not an agent's mean), every image of those rows fits 0.95, and the search and the
    oracles' choices are recomputed from the caches (tests/compare_checks.py). At FastVAR's budget the agent
    is run as before."""
    from compare_checks import check_rows_fit, check_static_baselines, per_image_rows

    from domain import load_prompts
    from envs.config import EnvConfig
    from envs.factory import make_generator
    from generator.protocol import total_fraction_of_used
    from rewards import ClipScorer, RewardFunction

    out, cache = tmp_path / "ev", tmp_path / "cache"
    assert evaluate_agent.main(["--run", str(budget_run), "--budgets", "0.95", "fastvar", "--num-prompts", "3",
                                "--seeds", "0", "--search-num-prompts", "2", "--grid-ratios", "0.5", "--refine-rounds", "0",
                                "--oracle-candidates", "2", "--latency-images", "0", "--grid-prompts", "1",
                                "--cache-dir", str(cache), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = per_image_rows(out)
    env = EnvConfig.from_dict(json.loads((budget_run / "config.json").read_text())["env"])
    g = make_generator(env)
    why = "budget 0.95 outside the trained range [0.25, 0.6]"
    na, run = summary["budgets"]
    assert (na["agent"], na["agent_row"], na["budget"]) == (f"n/a: {why}", "rl:b@0.950", 0.95)
    assert run["agent"] == run["agent_row"] == "rl:b@0.347" and run["agent"] in summary["methods"]
    assert "rl:b@0.950" not in summary["methods"] and "rl:b@0.950" not in rows  # no image for the agent there
    assert not any(k.startswith("rl:b@0.950 ") for k in summary["paired"]) and "rl:b@0.347 vs best_static:b@0.347" in summary["paired"]
    for name in (na["best_static"], na["oracle"], na["oracle_image"], na["random"]):
        assert name in summary["methods"] and len(rows[name]) == 3, name
        check_rows_fit(g, rows[name], transformer_budget=0.95)
    search = summary["static_search"]["rl:b@0.950"]
    assert search["target_total_fraction"] == pytest.approx(total_fraction_of_used(g, 0.95 * g.flops_full()), rel=1e-12)
    assert "n/a" in search["target_from"] and search["total_fraction"] > summary["static_search"]["rl:b@0.347"]["target_total_fraction"]
    assert "the budget; rl:b@0.950 is n/a there" in summary["methods"][na["random"]]["note"]
    assert all(0.95 - 0.02 <= float(r["flops_fraction"]) <= 0.95 + 1e-12 for r in rows[na["random"]])
    rfn = RewardFunction(env.reward, clip=ClipScorer.embedded() if env.reward.clip_weight > 0 else None)
    check_static_baselines(g, rfn, summary, rows, cache, 3, [(p, 0) for p in load_prompts("val")[:2]], oracle_candidates=2)
    table = (out / "table.md").read_text()
    assert f"| 0.950 | rl:b@0.950: n/a: {why} | n/a |" in table  # the per-budget table
    assert "| rl:b@0.950 | n/a |" in table and f"- rl:b@0.950: n/a: {why} (no images" in table  # the main table
    assert (out / "pareto.png").stat().st_size > 0


def test_compare_mode_on_a_budget_conditioned_run_with_static_search_and_oracle(budget_run, tmp_path):
    """The headline setup, small: a budget-conditioned run at two budgets with the static search (a {0.5} x CFG
    kept/dropped + skip grid) and the oracle over every grid schedule within each target. Per budget the agent,
    best-static, oracle and random rows exist, and every image of each fits that budget (FLOPs recomputed from
    its ratios); the search and the oracle's choices are recomputed from the caches (tests/compare_checks.py)."""
    from compare_checks import check_frontier, check_rows_fit, check_static_baselines, per_image_rows

    from domain import load_prompts
    from envs.config import EnvConfig
    from envs.factory import make_generator
    from rewards import ClipScorer, RewardFunction

    out, cache = tmp_path / "ev", tmp_path / "cache"
    assert evaluate_agent.main(["--run", str(budget_run), "--budgets", "0.3", "0.5", "--num-prompts", "3",
                                "--seeds", "0", "1", "--search-num-prompts", "2", "--grid-ratios", "0.5",
                                "--refine-rounds", "1", "--oracle-candidates", "0", "--latency-images", "0",
                                "--grid-prompts", "1", "--cache-dir", str(cache), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = per_image_rows(out)
    env = EnvConfig.from_dict(json.loads((budget_run / "config.json").read_text())["env"])
    g = make_generator(env)
    assert [(e["agent"], e["budget"]) for e in summary["budgets"]] == [("rl:b@0.300", 0.3), ("rl:b@0.500", 0.5)]
    for e in summary["budgets"]:
        b = e["budget"]
        names = [e["agent"], e["best_static"], e["oracle"], e["random"]]
        assert all(n in summary["methods"] and len(rows[n]) == 6 for n in names), names
        agent = check_rows_fit(g, rows[e["agent"]], transformer_budget=b)
        # the static search's target is the agent's mean total FLOPs, recomputed here from its images
        target = summary["static_search"][e["agent"]]["target_total_fraction"]
        assert target == pytest.approx(float(np.mean([tot for _, tot in agent])), rel=1e-9)
        for name in names[1:]:
            check_rows_fit(g, rows[name], transformer_budget=b)
        assert summary["methods"][e["oracle"]]["upper_bound"]
    assert summary["static_search"]["rl:b@0.300"]["target_total_fraction"] < summary["static_search"]["rl:b@0.500"]["target_total_fraction"]
    rfn = RewardFunction(env.reward, clip=ClipScorer.embedded() if env.reward.clip_weight > 0 else None)
    val_items = [(p, 0) for p in load_prompts("val")[:2]]
    check_static_baselines(g, rfn, summary, rows, cache, 3, val_items)
    check_frontier(g, summary, cache, 3, val_items)
