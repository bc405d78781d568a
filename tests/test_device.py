"""The env's ``device`` option: bad devices are clear errors, and the fingerprint keeps devices apart
(the CUDA runs themselves: tests/test_batched_env.py, test_batched_steps.py, test_batched_agent.py)."""

from __future__ import annotations

import pytest
import torch

from envs.config import EnvConfig

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
