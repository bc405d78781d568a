"""The weight-training scripts run on CPU, write loadable weights, and resume from their checkpoints.

A few steps each on tiny batches: this checks the machinery (data, loss, checkpoint, resume,
export), not the quality of the shipped weights (tests/test_embedded_weights.py does that).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.weights_io import read_metadata


@pytest.mark.parametrize("script", ["train_tokenizer", "train_generator", "train_clip"])
def test_script_trains_exports_and_resumes_on_cpu(script, tmp_path):
    import importlib

    mod = importlib.import_module(f"scripts.{script}")
    torch.set_num_threads(2)
    out, ckpt = tmp_path / "w.safetensors", tmp_path / "ckpt"
    common = ["--device", "cpu", "--workers", "0", "--batch-size", "8", "--out", str(out), "--ckpt-dir", str(ckpt),
              "--ckpt-every", "1"]
    mod.main(common + ["--steps", "2"])
    assert read_metadata(out)["steps"] == 2
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 2
    mod.main(common + ["--steps", "3", "--resume"])
    assert read_metadata(out)["steps"] == 3  # continued from step 2, not restarted


DEEP_SCALES = "1,2,3,4,5,6,8,10,13,16"  # a 16x16 latent: enough scales for FastVAR to run all that "skip after middle" runs


def test_deeper_scale_schedule_trains_and_generates_without_code_changes(tmp_path):
    """The shape the embedded model would need for SSIM to separate FastVAR from heavy skipping
    (>= 9 scales, see README) is a command-line option: tokenizer -> generator -> loaders -> schedules."""
    from embedded.loaders import load_embedded_generator
    from embedded.model_card import heavy_skip_ratios
    from generator.schedules import FastVARSchedule, RatioListSchedule, schedule_ratios
    from scripts import train_generator, train_tokenizer

    torch.set_num_threads(2)
    tok_w, gen_w = tmp_path / "tok.safetensors", tmp_path / "gen.safetensors"
    common = ["--device", "cpu", "--workers", "0", "--batch-size", "4", "--steps", "1", "--ckpt-every", "1"]
    train_tokenizer.main(common + ["--scales", DEEP_SCALES, "--channel-mult", "1,4,8", "--out", str(tok_w),
                                   "--ckpt-dir", str(tmp_path / "ck_tok")])
    train_generator.main(common + ["--tokenizer", str(tok_w), "--out", str(gen_w), "--ckpt-dir", str(tmp_path / "ck_gen")])
    g = load_embedded_generator(tokenizer_path=tok_w, generator_path=gen_w)
    sides = tuple(int(v) for v in DEEP_SCALES.split(","))
    assert g.scale_sides == sides and read_metadata(gen_w)["transformer"]["scales"] == list(sides)
    n = g.num_scales
    fastvar, heavy = schedule_ratios(FastVARSchedule(), n), heavy_skip_ratios(n)
    # every scale the heavy schedule runs whole, FastVAR runs whole too (not so for <= 8 scales)
    assert all(f == 0.0 for f, h in zip(fastvar, heavy) if h == 0.0)
    assert sum(s * s for s in sides[-2:]) / sum(s * s for s in sides) > 0.5  # last two scales hold most tokens
    flops = {}
    for name, schedule in {"fastvar": FastVARSchedule(), "heavy": RatioListSchedule(tuple(heavy))}.items():
        img, st = g.generate(["a large red circle in the centre"], [0], schedule)
        assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()
        flops[name] = st.flops_used / g.flops_full()
    assert 0 < flops["heavy"] < flops["fastvar"] < 1

    from envs.config import EnvConfig
    from envs.var_prune import VarPruneEnv

    env = VarPruneEnv(EnvConfig(prompts="val"), generator=g)
    obs, _ = env.reset(seed=0)
    assert env.first_controllable == n - 4 and obs.shape == env.observation_space.shape
    for r in fastvar[env.first_controllable:]:
        obs, reward, terminated, _, info = env.step(env.ratio_to_action(r))
    assert terminated and np.isfinite(reward) and np.isfinite(obs).all()
    assert info["flops_fraction"] == pytest.approx(flops["fastvar"])


def test_resume_with_another_shape_is_refused_with_both_configs_named(tmp_path):
    """Other --scales keep the tokenizer's parameter shapes: without the config check a resumed run
    would silently continue on another schedule."""
    from scripts import train_tokenizer

    torch.set_num_threads(2)
    common = ["--device", "cpu", "--workers", "0", "--batch-size", "4", "--ckpt-every", "1",
              "--out", str(tmp_path / "tok.safetensors"), "--ckpt-dir", str(tmp_path / "ck")]
    train_tokenizer.main(common + ["--steps", "1"])
    with pytest.raises(SystemExit, match=r"another model config .*'scales'"):
        train_tokenizer.main(common + ["--steps", "2", "--resume", "--scales", "1,2,4,8"])
    with pytest.raises(SystemExit, match=r"another model config .*'channel_mult'"):
        train_tokenizer.main(common + ["--steps", "2", "--resume", "--scales", "1,2,4,8,16", "--channel-mult", "1,4,8"])
    train_tokenizer.main(common + ["--steps", "2", "--resume"])  # the original options still resume
    assert read_metadata(tmp_path / "tok.safetensors")["steps"] == 2
