"""train.py, trained runs as schedules, and generate.py --agent, on short real runs of the embedded default."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from compare_checks import check_frontier, check_rows_fit, check_static_baselines, per_image_rows

import generate
import train
from agents.schedule import RunError, load_agent_schedule
from domain import load_prompts
from embedded.loaders import load_embedded_generator

SHORT = ["--total-timesteps", "128", "--eval-freq", "64", "--checkpoint-freq", "64", "--eval-episodes", "4",
         "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=2", "--no-progress", "--fixed-budget",
         "--algo", "ppo"]


def _generator_and_reward(run):
    """The run's generator and the reward whose quality terms compare mode ranks by (the shipped CLIP)."""
    from envs.config import EnvConfig
    from envs.factory import make_generator
    from rewards import ClipScorer, RewardFunction

    env = EnvConfig.from_dict(json.loads((run / "config.json").read_text())["env"])
    return make_generator(env), RewardFunction(env.reward, clip=ClipScorer.embedded() if env.reward.clip_weight > 0 else None)


def curve(run):
    return [(int(r["timesteps"]), float(r["mean_reward"]), float(r["flops_fraction"])) for r in csv.DictReader(open(run / "eval_curve.csv"))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(2)
    assert train.main(SHORT + ["--out", str(out), "--name", "a", "--seed", "3"]) == 0
    return out / "a"


def test_a_run_directory_has_everything(trained):
    for f in ("final_model.zip", "best_model.zip", "best_obs_stats.json", "final_obs_stats.json", "config.json",
              "eval_curve.csv", "baselines.json", "summary.json", "evaluations.npz"):
        assert (trained / f).is_file(), f
    assert any((trained / "tb").iterdir())
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["algo"] == "ppo" and cfg["hyperparams"]["n_steps"] == 32 and cfg["env"]["reward"]["ssim_weight"] > 0
    assert [t for t, _, _ in curve(trained)] == [64, 128]
    summary = json.loads((trained / "summary.json").read_text())
    # a validation figure next to FastVAR's on the same episodes, said to be one; no "beats FastVAR" verdict
    assert summary["evaluations"] == 2 and "best of 2 evaluations" in summary["validation_note"]
    assert "evaluate_agent.py" in summary["validation_note"] and not any("beats" in k for k in summary)
    assert summary["fastvar"]["episodes"] == cfg["eval_episodes"]


def test_same_seed_same_learning_curve(trained, tmp_path):
    assert train.main(SHORT + ["--out", str(tmp_path), "--name", "b", "--seed", "3"]) == 0
    assert curve(tmp_path / "b") == curve(trained)


def test_resume_continues_step_count_and_curve(trained, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(trained, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["total_timesteps"] = 192  # as if the original run had been asked for more and was killed at 128
    (run / "config.json").write_text(json.dumps(cfg))
    assert train.main(["--resume", str(run), "--no-progress"]) == 0
    steps = [t for t, _, _ in curve(run)]
    assert steps == [64, 128, 192]


def test_agent_is_a_schedule_and_plugs_into_generate(trained, tmp_path):
    g = load_embedded_generator()
    agent = load_agent_schedule(trained, g)
    img, state = g.generate(["a large red solid circle in the centre on a plain gray background"], [0], schedule=agent)
    first = json.loads((trained / "config.json").read_text())["observation_layout"]["first_controllable_scale"]
    assert [r.ratio for r in state.reports][:first] == [0.0] * first
    # the seed's hook: same answers when bound to a live generation
    st = g.start(["a large red solid circle in the centre on a plain gray background"], [0])
    agent.bind(st)
    while not st.finished:
        g.step(st, agent.get_pruning_ratio(st.scale_index, st.num_scales))
    assert torch.equal(g.decode(st), img)
    out = tmp_path / "res"
    assert generate.main(["--prompt", "a small blue dotted star at the top left on a plain white background", "--name", "s",
                          "--agent", str(trained), "--out", str(out)]) == 0
    rec = json.loads((out / "gen_images_s" / "config.json").read_text())["images"][0]
    assert rec["ratios"][:first] == [0.0] * first and rec["latency_s"] > 0 and 0 < rec["flops_fraction"] <= 1


def test_broken_runs_are_clear_errors(trained, tmp_path):
    g = load_embedded_generator()
    with pytest.raises(RunError, match="does not exist"):
        load_agent_schedule(tmp_path / "nothing", g)
    run = tmp_path / "corrupt"
    shutil.copytree(trained, run)
    (run / "best_model.zip").write_bytes(b"not a zip")
    with pytest.raises(RunError, match="best_model.zip"):
        load_agent_schedule(run, g)
    (run / "config.json").write_text("{")
    with pytest.raises(RunError, match="not valid JSON"):
        load_agent_schedule(run, g)
    other = tmp_path / "other_layout"
    shutil.copytree(trained, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["observation_layout"]["scale_widths"] = [1, 2, 4, 8, 16]
    cfg["observation_layout"]["num_scales"] = 5
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match="does not fit this generator"):
        load_agent_schedule(other, g)
    assert train.main(["--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2


@pytest.mark.parametrize("algo", ["a2c", "sac", "td3", "ddpg", "dqn"])
def test_every_algorithm_trains_evaluates_and_plugs_in(algo, tmp_path):
    """Each YAML builds, learns for a few steps (replay-buffer algorithms past learning_starts), and the
    resulting run drives generation (dqn through the discrete ratio grid)."""
    hp = ["--hp", "learning_starts=16", "--hp", "batch_size=16"] if algo in ("sac", "td3", "ddpg", "dqn") else ["--hp", "n_steps=16"]
    assert train.main(["--algo", algo, "--total-timesteps", "48", "--eval-freq", "48", "--checkpoint-freq", "48",
                       "--eval-episodes", "2", "--no-progress", "--fixed-budget", "--out", str(tmp_path), "--name", algo] + hp) == 0
    run = tmp_path / algo
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["env"]["action_mode"] == ("discrete" if algo == "dqn" else "continuous")
    if algo in ("sac", "td3", "ddpg", "dqn"):
        assert (run / "checkpoints" / "replay_48_steps.pkl").is_file()  # resumable with its replay buffer
    g = load_embedded_generator()
    _, state = g.generate(["a medium green striped cross on the left on a plain black background"], [1],
                          schedule=load_agent_schedule(run, g, which="final"))
    # what the action mapping promises: earlier scales unpruned, DQN's ratios from its grid, continuous ratios at
    # or above the skip threshold turned into skips, skipped exactly where the ratio is >= 1, FLOPs as planned
    ratios = [r.ratio for r in state.reports]
    first, env = cfg["observation_layout"]["first_controllable_scale"], cfg["env"]
    assert state.finished and ratios[:first] == [0.0] * first
    if algo == "dqn":
        assert all(r in env["ratio_grid"] for r in ratios[first:])
    else:
        assert all(r == 1.0 or r < env["skip_threshold"] for r in ratios[first:])
    assert [r.skipped for r in state.reports] == [r >= 1.0 for r in ratios]
    assert state.flops_used == pytest.approx(g.flops_full() * g.flops_fraction(ratios), rel=1e-12)


def test_evaluate_agent_compare_mode_on_a_run(trained, tmp_path, capsys):
    """The whole scoreboard on a small grid ({0.5} + skip = 2^4 schedules: the run may not drop CFG): every method,
    both FLOPs fractions, prompt-clustered statistics, the best static schedule with its evidence, the
    oracle labelled as an upper bound, the frontier; a rerun takes the grid from the cache."""
    import evaluate_agent

    out = tmp_path / "ev"
    argv = ["--run", str(trained), "--num-prompts", "3", "--seeds", "0", "1", "--search-num-prompts", "2",
            "--grid-ratios", "0.5", "--refine-rounds", "1", "--grid-prompts", "2", "--cache-dir", str(tmp_path / "cache"),
            "--oracle-candidates", "0",
            "--out", str(out), "--json", str(tmp_path / "s.json")]
    assert evaluate_agent.main(argv) == 0
    table = capsys.readouterr().out
    for method in ("original", "fastvar", "tail", f"rl:{trained.name}", "best_static", "best_static@fastvar", "random"):
        assert f"| {method} |" in table
    assert "| oracle (upper bound) |" in table and "transformer FLOPs" in table and "total FLOPs" in table
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["num_images"] == 6 and f"rl:{trained.name} vs fastvar" in summary["paired"]
    methods = summary["methods"]
    rl = methods[f"rl:{trained.name}"]["metrics"]
    assert rl["ssim"]["n"] == 3 and rl["ssim"]["n_images"] == 6  # statistics over prompts
    for m in methods.values():  # the decoder's fixed cost makes every total fraction larger than the transformer one
        t, tot = m["metrics"]["flops_fraction"]["mean"], m["metrics"]["total_flops_fraction"]["mean"]
        assert t <= tot <= 1.0 + 1e-9
    assert methods["random"]["metrics"]["flops_fraction"]["mean"] == pytest.approx(rl["flops_fraction"]["mean"], abs=0.03)
    best = summary["static_search"][f"rl:{trained.name}"]
    assert best["total_fraction"] <= rl["total_flops_fraction"]["mean"] + 1e-9
    assert best["target_total_fraction"] == pytest.approx(rl["total_flops_fraction"]["mean"], rel=1e-12)
    # a --fixed-budget run may not drop the CFG branch, so neither may its static search: {0.5} + skip = 2^4
    assert best["grid_size"] == 2 ** 4 and best["grid_points_evaluated"] >= 1 and not any(best["drop_uncond"])
    assert not summary["grid"]["grid_drops_cfg"] and "always kept" in methods["best_static"]["note"]
    assert methods["best_static"]["search"] == best  # the evidence sits in the row it supports
    assert methods["oracle"]["upper_bound"] and methods["oracle"]["kind"] == "oracle"
    assert methods["best_static"]["metrics"]["total_flops_fraction"]["mean"] == pytest.approx(best["total_fraction"], rel=1e-9)
    # the search's and the oracle's evidence recomputed by other routes: FLOPs from each image's ratios, the best
    # grid point and the oracle's per-prompt choice from the cached per-item quality, the chosen schedule's
    # validation quality from images generated again (tests/compare_checks.py)
    g, rfn = _generator_and_reward(trained)
    rows = per_image_rows(out)
    check_rows_fit(g, rows[f"rl:{trained.name}"])
    val_items = [(p, 0) for p in load_prompts("val")[:2]]
    check_static_baselines(g, rfn, summary, rows, tmp_path / "cache", 3, val_items)
    assert summary["static_frontier"] and all("test" in e for e in summary["static_frontier"])
    check_frontier(g, summary, tmp_path / "cache", 3, val_items)
    for f in ("table.md", "per_image.csv", "summary.json", "pareto.png", "grid.png"):
        assert (out / f).is_file(), f
    # a rerun generates no static schedule: everything comes from the cache
    assert evaluate_agent.main(argv) == 0
    again = json.loads((tmp_path / "s.json").read_text())
    assert again["grid"]["val_schedules_generated"] == 0 and again["grid"]["test_schedules_generated"] == 0
    assert again["static_search"] == summary["static_search"]
    # --oracle-candidates: the oracle picks among the 2 best-on-validation grid schedules plus the best static
    # one (the candidates recomputed from the validation cache, the choice from the test cache)
    assert evaluate_agent.main(argv + ["--oracle-candidates", "2"]) == 0
    few = json.loads((tmp_path / "s.json").read_text())
    assert 2 <= few["methods"]["oracle"]["oracle"]["candidates"] <= 3
    assert few["grid"]["oracle_candidate_rule"].startswith("the 2 grid schedules")
    check_static_baselines(g, rfn, few, per_image_rows(out), tmp_path / "cache", 3, val_items, oracle_candidates=2)
    assert evaluate_agent.main(["--run", str(tmp_path / "nope")]) == 2


def test_evaluate_agent_names_a_bad_prompt_and_duplicates(trained, tmp_path, capsys):
    import evaluate_agent

    bad = tmp_path / "bad.txt"
    bad.write_text("a large red solid circle in the centre on a plain gray background\n"
                   "a large magenta solid circle in the centre on a plain gray background\n")
    assert evaluate_agent.main(["--run", str(trained), "--prompts", str(bad), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "prompt 2" in err and "'magenta'" in err
    dup = tmp_path / "dup.txt"
    dup.write_text("a large red solid circle in the centre on a plain gray background\n" * 2)
    assert evaluate_agent.main(["--run", str(trained), "--prompts", str(dup), "--out", str(tmp_path / "ev")]) == 2
    assert "duplicate prompts" in capsys.readouterr().err
    assert evaluate_agent.main(["--run", str(trained), "--seeds", "0", "0"]) == 2
    assert "duplicate seeds in --seeds 0 0: 0" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_bad_hyperparameters_fail_fast_without_leaving_a_run(tmp_path, capsys):
    assert train.main(["--algo", "ppo", "--hp", "bogus_key=1", "--out", str(tmp_path), "--name", "bad", "--no-progress"]) == 2
    assert "bogus_key" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert train.main(["--algo", "dqn", "--hp", "action_mode=continuous", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "discrete" in capsys.readouterr().err


def test_evaluate_agent_compares_several_runs(trained, tmp_path, capsys):
    import evaluate_agent

    other = tmp_path / "other" / trained.name  # same folder name, different parent: labels must not clash
    shutil.copytree(trained, other)
    assert evaluate_agent.main(["--run", str(trained), "--run", str(other), "--num-prompts", "2", "--seeds", "0",
                                "--no-static-search", "--out", str(tmp_path / "ev"), "--json", str(tmp_path / "s.json")]) == 0
    methods = json.loads((tmp_path / "s.json").read_text())["methods"]
    rl = sorted(m for m in methods if m.startswith("rl:"))
    assert rl == sorted([f"rl:{trained.parent.name}/{trained.name}", f"rl:other/{trained.name}"])
    assert len([m for m in methods if m.startswith("random:")]) == 2
    paired = json.loads((tmp_path / "s.json").read_text())["paired"]  # the ablation pair: identical runs, no difference
    (key,) = [k for k in paired if k.startswith("rl:") and " vs rl:" in k]
    assert paired[key]["ssim"]["mean_diff"] == 0.0 and paired[key]["flops_fraction"]["mean_diff"] == 0.0
    assert evaluate_agent.main(["--run", str(trained), "--run", str(trained)]) == 2
    assert "twice" in capsys.readouterr().err
