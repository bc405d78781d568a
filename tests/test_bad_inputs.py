"""The bad inputs a new user hit (issue "explorer page and bad inputs", part 2), and train.py's progress
lines when its output is redirected (part 3). Each bad input is exit 2 with a message naming the value
and what is allowed, and leaves nothing behind."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch.nn.functional as F

import evaluate_agent
import generate
import train
from agents.progress import format_duration, progress_line

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a large red solid circle in the centre on a plain gray background"
SHORT = ["--total-timesteps", "128", "--eval-freq", "64", "--checkpoint-freq", "64", "--eval-episodes", "2",
         "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=1", "--no-progress", "--log-interval", "32", "--fixed-budget", "--algo", "ppo"]


@pytest.fixture(scope="module")
def redirected_run(tmp_path_factory):
    """A short real run whose stdout is not a terminal (pytest captures it): (run dir, what it printed)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("runs")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert train.main(SHORT + ["--out", str(out), "--name", "r"]) == 0
    return out / "r", buf.getvalue()


# ---- train.py ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--total-timesteps", "0"], "--total-timesteps must be >= 1, got 0"),
    (["--n-envs", "0"], "--n-envs must be >= 1, got 0"),
    (["--eval-freq", "0"], "--eval-freq must be >= 1, got 0"),
    (["--checkpoint-freq", "-5"], "--checkpoint-freq must be >= 1, got -5"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1, got 0"),
    (["--log-interval", "0"], "--log-interval must be >= 1, got 0"),
    (["--cfg", "0.5"], "--cfg must be >= 1 (1 = no guidance), got 0.5"),
    (["--selector-train-prompts", "0"], "--selector-train-prompts must be >= 1, got 0"),
    (["--generator", "infinity"], "--generator infinity needs --infinity-options FILE"),
    (["--generator", "infinity", "--infinity-options", "no_such.json"], "no_such.json does not exist"),
])
def test_train_refuses_bad_counts_before_making_a_run_folder(tmp_path, capsys, argv, message):
    out = tmp_path / "runs"
    assert train.main(argv + ["--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_default_algo_is_the_selector_on_the_embedded_model_and_ppo_elsewhere(tmp_path):
    """--algo auto: the selector (frontier-based) on --generator tiny; ppo on infinity and when resuming."""
    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps({"src": "/nowhere"}))
    ap = train.build_parser()
    for argv, want in (([], "selector"), (["--objective", "iso-quality"], "selector"), (["--algo", "ppo"], "ppo"),
                       (["--generator", "infinity", "--infinity-options", str(opts)], "ppo"),
                       (["--resume", str(tmp_path)], "ppo"), (["--algo", "ppo-residual"], "ppo-residual")):
        args = ap.parse_args(argv)
        train.check_args(args)
        assert args.algo == want, argv

    # the selector's label prompts: the measured settings per objective, unless given
    for argv, want in (([], 1000), (["--objective", "iso-quality"], 150), (["--selector-train-prompts", "40"], 40)):
        args = ap.parse_args(argv)
        train.check_args(args)
        assert args.selector_train_prompts == want, argv


@pytest.mark.parametrize("argv, named", [
    (["--total-timesteps", "64"], "--total-timesteps is"),
    (["--algo", "selector", "--hp", "n_steps=32", "--fixed-budget"], "--hp --fixed-budget are"),
    (["--budget-range", "0.2", "0.5"], "--budget-range is"),
])
def test_flags_the_selector_would_ignore_are_refused(tmp_path, capsys, argv, named):
    out = tmp_path / "runs"
    assert train.main(argv + ["--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert named in err and "add --algo ppo" in err
    assert not out.exists()

def test_cfg_is_recorded_as_the_generator_uses_it(tmp_path):
    """tiny: --cfg or 3; infinity: the options file's cfg unless --cfg overrides it (and then it is in the
    options the generator is built from, not only in the record)."""
    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps({"src": "/nowhere", "cfg": 6.0}))
    ap = train.build_parser()
    assert train.resolve_env_config(ap.parse_args([])).cfg_scale == 3.0
    assert train.resolve_env_config(ap.parse_args(["--cfg", "2"])).cfg_scale == 2.0
    inf = train.resolve_env_config(ap.parse_args(["--generator", "infinity", "--infinity-options", str(opts)]))
    assert inf.cfg_scale == 6.0 and inf.infinity["cfg"] == 6.0
    inf = train.resolve_env_config(ap.parse_args(["--generator", "infinity", "--infinity-options", str(opts), "--cfg", "2"]))
    assert inf.cfg_scale == 2.0 and inf.infinity["cfg"] == 2.0
    from generator.backends import resolved_cfg

    gp = generate.build_parser()
    assert resolved_cfg(gp.parse_args(["--generator", "infinity", "--infinity-options", str(opts)])) == 6.0
    assert resolved_cfg(gp.parse_args(["--generator", "infinity", "--infinity-options", str(opts), "--cfg", "5"])) == 5.0
    assert resolved_cfg(gp.parse_args([]), cfg_default=2.5) == 2.5


def test_redirected_training_prints_progress_lines(redirected_run):
    run, printed = redirected_run
    lines = [ln for ln in printed.splitlines() if ln.startswith("[train] step ")]
    assert [ln.split()[2] for ln in lines] == ["32/128", "64/128", "96/128", "128/128"]
    assert all("steps/s" in ln and "ETA" in ln for ln in lines)
    assert "no evaluation yet" in lines[0]
    curve = (run / "eval_curve.csv").read_text().splitlines()
    reward_64 = float(curve[1].split(",")[1])
    assert f"last eval @ 64: reward {reward_64:.4f}" in lines[1]  # the evaluation at 64 runs before the line


def test_progress_line_and_durations():
    assert [format_duration(s) for s in (0, 59.9, 60, 425, 3725)] == ["0 s", "59 s", "1 min 00 s", "7 min 05 s", "1 h 02 min"]
    line = progress_line(2000, 24000, 50.0, 40.0, {"timesteps": "2000", "mean_reward": "0.0123", "flops_fraction": "0.331",
                                                   "ssim": "0.75"})
    assert line == ("[train] step 2,000/24,000 (8.3%) | 50.0 steps/s | elapsed 40 s | ETA 7 min 20 s | "
                    "last eval @ 2,000: reward 0.0123, FLOPs 0.331, SSIM 0.750")


# ---- generate.py ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--prompt", PROMPT, "--name", "../../x"], "--name '../../x' must use only letters"),
    (["--prompt", PROMPT, "--name", ".."], "--name '..' must use only letters"),
    (["--prompt", PROMPT, "--prompt", PROMPT], "is given 2 times"),
    (["--prompt", PROMPT, "--prompt", PROMPT + " ", "--name", "a", "--name", "a"], "--name 'a' is given 2 times"),
    (["--prompts", "test", "--num-prompts", "-1"], "--num-prompts must be >= 1, got -1"),
    (["--prompts", "test", "--num-prompts", "0"], "--num-prompts must be >= 1, got 0"),
    (["--prompts", "test", "--name", "x"], "--name names --prompt values"),
])
def test_generate_refuses_bad_names_and_counts(tmp_path, capsys, argv, message):
    out = tmp_path / "a" / "b" / "results"
    assert generate.main(argv + ["--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written, inside the output folder or outside it


def test_prompts_directory_is_a_clear_error(tmp_path, capsys):
    assert generate.main(["--prompts", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"--prompts {str(tmp_path)!r} is a directory" in capsys.readouterr().err


def test_prompt_names_from_files_cannot_leave_the_output_folder(tmp_path, capsys):
    bad = tmp_path / "p.tsv"
    bad.write_text(f"..\t{PROMPT}\n")
    assert generate.main(["--prompts", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "prompt name '..'" in capsys.readouterr().err


def test_prompts_whose_slugs_collide_get_their_own_folders(tmp_path):
    """Slugs are cut at 48 characters: these two differ only in the background, after the cut."""
    a, b = PROMPT, PROMPT.replace("plain gray", "plain black")
    assert generate.slug(a) == generate.slug(b)
    out = tmp_path / "out"
    assert generate.main(["--prompt", a, "--prompt", b, "--out", str(out)]) == 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [f"gen_images_{generate.slug(a)}", f"gen_images_{generate.slug(a)}_2"]
    assert {json.loads((out / f / "config.json").read_text())["prompt"] for f in folders} == {a, b}
    plain = tmp_path / "plain.txt"  # the same in a plain one-prompt-per-line file
    plain.write_text(f"{a}\n{b}\n")
    assert set(generate.read_prompts_file(str(plain))) == {generate.slug(a), generate.slug(a) + "_2"}
    plain.write_text(f"{a}\n{a}\n")
    with pytest.raises(generate.PromptError, match="appears twice"):
        generate.read_prompts_file(str(plain))


def test_agent_with_other_guidance_is_refused_and_the_runs_own_is_the_default(redirected_run, tmp_path, capsys):
    run, _ = redirected_run
    assert generate.main(["--prompt", PROMPT, "--agent", str(run), "--cfg", "5", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "trained on another generator configuration" in err and "scale=3.0" in err and "scale=5.0" in err
    assert "cfg_scale 3.0" in err and not (tmp_path / "o1").exists()
    assert generate.main(["--prompt", PROMPT, "--name", "c", "--agent", str(run), "--out", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "gen_images_c" / "config.json").read_text())["cfg"] == 3.0
    assert generate.main(["--prompt", PROMPT, "--agent", str(run), "--temperature", "0.5", "--out", str(tmp_path / "o3")]) == 2
    assert "temperature=0.5" in capsys.readouterr().err


def test_a_prompt_outside_the_grammar_is_warned_about(tmp_path, capsys):
    assert generate.main(["--prompt", "a photo of a cat", "--name", "cat", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: prompt 'a photo of a cat' is outside the embedded model's grammar")
    assert "must end with 'on a <plain|gradient|noisy> <colour> background'" in err


# ---- evaluate_agent.py ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--num-prompts", "0"], "--num-prompts must be >= 1, got 0"),
    (["--search-num-prompts", "0"], "--search-num-prompts must be >= 1, got 0"),
    (["--refine-rounds", "-1"], "--refine-rounds must be >= 0 (0 turns it off), got -1"),
    (["--grid-ratios", "0.5", "0.95"], "--grid-ratios must be pruning ratios in [0, 0.9) (skip is always in the grid), got 0.95"),
    (["--seeds", "0", "1", "0"], "duplicate seeds in --seeds 0 1 0: 0 (each must appear once"),
    (["--grid-prompts", "-2"], "--grid-prompts must be >= 0 (0 turns it off), got -2"),
])
def test_evaluate_refuses_bad_counts(tmp_path, capsys, argv, message):
    assert evaluate_agent.main(argv + ["--out", str(tmp_path / "ev")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "ev").exists()


def test_evaluate_reuses_its_clip_only_for_the_same_model_and_weights():
    from envs.config import EnvConfig
    from evaluation.compare import clip_for_agent
    from evaluation.metrics import MetricSuite
    from rewards import ClipScorer

    suite = MetricSuite(clip=ClipScorer.embedded(), lpips=None)
    run_cfg = EnvConfig(clip_model="ViT-B-32", clip_pretrained="/ckpt/a.pt")
    assert clip_for_agent(run_cfg, "ViT-B-32", "/ckpt/a.pt", suite) is suite.clip
    assert clip_for_agent(run_cfg, "ViT-B-32", "/ckpt/b.pt", suite) is None
    default = evaluate_agent.compare_request(evaluate_agent.build_parser().parse_args([]))  # no --clip-* flags
    assert clip_for_agent(EnvConfig(), default.clip_model, default.clip_pretrained, suite) is suite.clip


# ---- the observation, the extras ------------------------------------------------------------------
def test_code_deviation_feature_is_computed_on_pooled_latent_codes():
    """Named for what it is: the deviation of the accumulated latent codes, average-pooled to the next
    token map, from their mean (not FastVAR's score on the transformer's hidden states)."""
    from embedded.loaders import load_embedded_generator
    from envs.observation import CONTENT_FEATURE_NAMES, N_BASE_FEATURES, N_CONTENT_FEATURES, ObservationBuilder

    assert N_CONTENT_FEATURES == len(CONTENT_FEATURE_NAMES) == 6  # layout unchanged: trained runs still load
    g = load_embedded_generator()
    obs = ObservationBuilder(g, first_controllable=3, prompt_embedding_dim=0)
    assert obs.dim == N_BASE_FEATURES + 4 + 6
    state = g.start([PROMPT], [0])
    for _ in range(4):
        g.step(state, 0.0)
    feats = dict(zip(CONTENT_FEATURE_NAMES, obs.content_features(state)))
    side = g.scale_sides[state.scale_index]
    x = F.adaptive_avg_pool2d(g.accumulated_codes(state)[:1].double(), (side, side))[0].flatten(1).T  # (L, C)
    dev = ((x - x.mean(0, keepdim=True)) ** 2).sum(-1)
    assert feats["log1p_code_deviation_mean"] == pytest.approx(math.log1p(float(dev.mean())), rel=1e-5)


def test_infinity_extra_has_what_upstream_imports():
    """Upstream's bsq_vae imports imageio: without it 5 of the 18 equivalence tests fail on a fresh install."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in extras["infinity"]}
    assert {"imageio", "einops", "pytz", "timm", "opencv-python-headless"} <= names
    assert any(d.startswith("gradio") for d in extras["app"])
