"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def budget_run(tmp_path_factory):
    """A short real budget-conditioned run (64 steps, trained range [0.25, 0.6], CFG-drop lever on), trained
    once per test session and shared by the generate, evaluate and iso-quality tests."""
    import train

    out = tmp_path_factory.mktemp("runs")
    args = ["--total-timesteps", "64", "--eval-freq", "64", "--checkpoint-freq", "64", "--eval-episodes", "2",
            "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=1", "--no-progress",
            "--budget-range", "0.25", "0.6", "--allow-drop-unconditional", "--out", str(out), "--name", "b", "--algo", "ppo"]
    assert train.main(args) == 0
    return out / "b"
