"""The batched vector env (N VarPrune-v0 episodes in lockstep, one generator call per scale), its batched
references and rewards, and train.py on it, on the shipped embedded generator and CLIP."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import train
from envs.batched import BatchedVarPruneEnv
from envs.config import EnvConfig
from envs.var_prune import VarPruneEnv
from rewards import ReferenceCache

PROMPTS = ["a large red solid circle in the centre on a plain gray background",
           "a small blue striped square at the top left on a noisy navy background",
           "a medium green striped cross on the left on a plain black background",
           "a small yellow dotted star at the bottom on a gradient white background"]


@pytest.fixture(scope="module")
def shared():
    from envs.factory import make_clip, make_generator

    torch.set_num_threads(2)
    cfg = EnvConfig()
    return dict(generator=make_generator(cfg), clip=make_clip(cfg))


def batched_and_dummy(cfg: EnvConfig, n: int, shared: dict, prompts=PROMPTS, seed: int = 5):
    """The batched env and a DummyVecEnv of n single envs on the same generator and CLIP, both seeded
    with ``seed`` and reset: (batched, dummy, batched obs, dummy obs)."""
    batched = BatchedVarPruneEnv(cfg, n, prompts=prompts, reference_cache=ReferenceCache(), **shared)
    dummy = DummyVecEnv([lambda: VarPruneEnv(cfg, prompts=prompts, reference_cache=ReferenceCache(), **shared)
                         for _ in range(n)])
    batched.seed(seed)
    dummy.seed(seed)
    return batched, dummy, batched.reset(), dummy.reset()


@pytest.mark.parametrize("budget_range", [None, (0.3, 0.6)])
def test_batched_env_equals_a_dummy_vec_env_of_single_envs(shared, budget_range):
    """Slot i is VarPrune-v0 seeded with seed + i: same episodes, same observations (exact), same
    per-step rewards (exact: analytic FLOPs), terminal rewards within 1e-5 (metrics on a batch round
    differently), same infos; auto-reset with the terminal observation, as DummyVecEnv does. Also for
    budget-conditioned episodes (per-image budgets drawn, observed and guarded)."""
    from rewards.reward import RewardConfig

    n = 3
    cfg = EnvConfig() if budget_range is None else EnvConfig(budget_range=budget_range,
                                                             reward=RewardConfig.embedded_budget())
    batched, dummy, ob, od = batched_and_dummy(cfg, n, shared)
    assert ob.shape == (n, batched.observation_space.shape[0]) and ob.dtype == np.float32
    assert np.array_equal(ob, od)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(2 * batched.controllable):
        actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        ob, rb, db, ib = batched.step(actions)
        od, rd, dd, id_ = dummy.step(actions)
        assert np.array_equal(ob, od) and np.array_equal(db, dd)
        keys = ("prompt", "image_seed", "ratios", "kept", "budget", "guarded", "drop_unconditional")
        assert [[i[k] for k in keys] for i in ib] == [[i[k] for k in keys] for i in id_]
        if db[0]:
            ends += 1
            np.testing.assert_allclose(rb, rd, rtol=0, atol=1e-5)
            for a, b in zip(ib, id_):
                assert np.array_equal(a["terminal_observation"], b["terminal_observation"])
                assert a["flops_fraction"] == b["flops_fraction"]
                for key, tol in (("ssim", 1e-5), ("clip_delta", 1e-4), ("terminal_reward", 1e-5)):  # CLIP: 0-100 points
                    assert a[key] == pytest.approx(b[key], abs=tol)
        else:
            assert np.array_equal(rb, rd)
    assert ends == 2


def test_all_zero_actions_score_as_the_reference_and_bad_actions_fail(shared):
    env = BatchedVarPruneEnv(EnvConfig(), 2, prompts=PROMPTS, reference_cache=ReferenceCache(), **shared)
    env.seed(0)
    env.reset()
    zero = np.stack([env.ratio_to_action(0.0)] * 2)
    for _ in range(env.controllable):
        _, _, dones, infos = env.step(zero)
    assert dones.all()
    for info in infos:  # the unpruned image vs its reference, both made in batches: equal up to batch rounding
        assert info["flops_fraction"] == pytest.approx(1.0)
        assert info["ssim"] == pytest.approx(1.0, abs=1e-5) and abs(info["quality_reward"]) < 1e-4
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([[np.nan], [0.0]], np.float32))
    with pytest.raises(ValueError, match="one action per env"):
        env.step(np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match="num_envs"):
        BatchedVarPruneEnv(EnvConfig(), 0, prompts=PROMPTS, **shared)


def test_references_are_made_in_batches_and_kept_on_disk(shared, tmp_path):
    gen = shared["generator"]
    calls = []

    def make(indices):
        calls.append(list(indices))
        img, _ = gen.generate([PROMPTS[i] for i in indices], [0] * len(indices))
        return img

    keys = [(p, 0, gen.fingerprint()) for p in PROMPTS]
    first = ReferenceCache(directory=tmp_path)
    got = first.get_or_create_many(keys + keys[:1], lambda ix: make([i % 4 for i in ix]), clip=shared["clip"],
                                   prompts=PROMPTS + PROMPTS[:1], batch_size=3)
    assert calls == [[0, 1, 2], [3]] and first.misses == 4  # the repeated key is made once
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    again = ReferenceCache(directory=tmp_path)  # another run: everything from disk, nothing made
    got2 = again.get_or_create_many(keys, lambda ix: make(ix), clip=shared["clip"], prompts=PROMPTS)
    assert len(calls) == 2 and again.hits == 4
    for (a, ca), (b, cb) in zip(got, got2):
        assert torch.equal(a, b) and ca == cb
    assert torch.equal(got[4][0], got[0][0])
    # a reference made in a batch is the image the generator makes alone, up to the decoder's batch rounding
    alone, _ = gen.generate([PROMPTS[2]], [0])
    torch.testing.assert_close(got[2][0], alone, atol=1e-5, rtol=0)


def _curve(run):
    return [(int(r["timesteps"]), float(r["mean_reward"]), float(r["flops_fraction"]))
            for r in csv.DictReader(open(run / "eval_curve.csv"))]


def test_one_slot_batched_training_reproduces_the_dummy_vec_env_run(tmp_path):
    """With one slot the batched env is VarPrune-v0 exactly (same episodes, observations and rewards at
    batch 1), so the whole learning curve is identical; and the run records how it was made."""
    args = ["--total-timesteps", "64", "--eval-freq", "32", "--checkpoint-freq", "64", "--eval-episodes", "2",
            "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=1", "--no-progress", "--n-envs", "1",
            "--out", str(tmp_path), "--seed", "2", "--algo", "ppo"]
    assert train.main(args + ["--name", "batched", "--vec-env", "batched"]) == 0
    assert train.main(args + ["--name", "dummy", "--vec-env", "dummy"]) == 0
    assert _curve(tmp_path / "batched") == _curve(tmp_path / "dummy")
    assert [t for t, _, _ in _curve(tmp_path / "batched")] == [32, 64]
    assert any((tmp_path / "references").glob("*.safetensors"))  # OUT/references, kept for the next run


def test_n_envs_must_divide_the_rollout(tmp_path, capsys):
    assert train.main(["--algo", "ppo", "--n-envs", "3", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "n_steps 256" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_env_on_cuda_matches_single_envs_on_cuda():
    """Generator and CLIP on a GPU (EnvConfig.device): the same episodes and decisions as single envs
    there; observations and rewards within 1e-4 (measured on an H200: observations exact, rewards
    within 3.6e-6)."""
    from envs.factory import make_clip, make_generator

    cfg = EnvConfig(device="cuda").validate()
    shared = dict(generator=make_generator(cfg), clip=make_clip(cfg))
    assert shared["generator"].fingerprint().endswith(",device=cuda")
    n = 3
    batched, dummy, ob, od = batched_and_dummy(cfg, n, shared, prompts=PROMPTS[:n])
    rng = np.random.default_rng(0)
    worst_obs = worst_reward = 0.0
    ends = 0
    for _ in range(2 * batched.controllable):
        actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        ob, rb, db, ib = batched.step(actions)
        od, rd, dd, id_ = dummy.step(actions)
        assert np.array_equal(db, dd)
        assert [(i["ratios"], i["kept"]) for i in ib] == [(i["ratios"], i["kept"]) for i in id_]
        worst_obs = max(worst_obs, float(np.abs(ob - od).max()))
        worst_reward = max(worst_reward, float(np.abs(rb - rd).max()))
        ends += int(db[0])
    print(f"cuda: max |obs batched - single| {worst_obs:.3g}, max |reward batched - single| {worst_reward:.3g}")
    assert ends == 2
    assert worst_obs <= 1e-4 and worst_reward <= 1e-4
