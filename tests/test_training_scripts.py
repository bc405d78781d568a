"""The weight-training scripts run on CPU, write loadable weights, and resume from their checkpoints.

A few steps each on tiny batches: this checks the machinery (data, loss, checkpoint, resume,
export), not the quality of the shipped weights (tests/test_embedded_weights.py does that).
"""

from __future__ import annotations

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
