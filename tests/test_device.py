"""The env's ``device`` option: bad devices are clear errors (runs everywhere), and on a CUDA machine the
batched env with generator and CLIP on the GPU plays the same episodes as single envs there (skipped
without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.config import EnvConfig

PROMPTS = ["a large red solid circle in the centre on a plain gray background",
           "a small blue striped square at the top left on a noisy navy background",
           "a medium green striped cross on the left on a plain black background"]


@pytest.mark.parametrize("device, match", [("tpu", "not a torch device"), ("meta", "only 'cpu' and 'cuda"),
                                           ("cuda:99", "CUDA")])
def test_bad_devices_are_clear_errors(device, match):
    if device == "cuda:99" and not torch.cuda.is_available():
        match = "CUDA is not available"
    with pytest.raises(ValueError, match=match):
        EnvConfig(device=device).validate()


def test_fingerprint_keeps_devices_apart_and_the_agent_check_ignores_them():
    """Reference caches keep CPU and CUDA images apart (the fingerprint's image part); an agent's check
    compares only the model part (a CPU-trained agent serves on a GPU)."""
    from envs.factory import make_generator
    from generator.protocol import IMAGE_MARK, image_fingerprint, model_part

    fp = make_generator(EnvConfig(device="cpu")).fingerprint()
    assert fp.endswith(",device=cpu") and IMAGE_MARK in fp
    on_gpu = image_fingerprint(model_part(fp), decode=2, device="cuda")
    assert on_gpu != fp and model_part(on_gpu) == model_part(fp)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_env_on_cuda_matches_single_envs_on_cuda():
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.batched import BatchedVarPruneEnv
    from envs.factory import make_clip, make_generator
    from envs.var_prune import VarPruneEnv
    from rewards import ReferenceCache

    cfg = EnvConfig(device="cuda").validate()
    shared = dict(generator=make_generator(cfg), clip=make_clip(cfg))
    assert shared["generator"].fingerprint().endswith(",device=cuda")
    n = len(PROMPTS)
    batched = BatchedVarPruneEnv(cfg, n, prompts=PROMPTS, reference_cache=ReferenceCache(), **shared)
    dummy = DummyVecEnv([lambda: VarPruneEnv(cfg, prompts=PROMPTS, reference_cache=ReferenceCache(), **shared)
                         for _ in range(n)])
    batched.seed(5)
    dummy.seed(5)
    ob, od = batched.reset(), dummy.reset()
    rng = np.random.default_rng(0)
    worst_obs = worst_reward = 0.0
    ends = 0
    for _ in range(2 * batched.controllable):
        actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        ob, rb, db, ib = batched.step(actions)
        od, rd, dd, id_ = dummy.step(actions)
        assert np.array_equal(db, dd)
        assert [i["ratios"] for i in ib] == [i["ratios"] for i in id_]
        assert [i["kept"] for i in ib] == [i["kept"] for i in id_]
        worst_obs = max(worst_obs, float(np.abs(ob - od).max()))
        worst_reward = max(worst_reward, float(np.abs(rb - rd).max()))
        ends += int(db[0])
    print(f"cuda: max |obs batched - single| {worst_obs:.3g}, max |reward batched - single| {worst_reward:.3g}")
    assert ends == 2
    assert worst_obs <= 1e-4 and worst_reward <= 1e-4

