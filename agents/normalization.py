"""Observation-normalisation statistics saved as JSON (no pickles in run directories)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from generator.weights_io import atomic_write_json


def save_obs_stats(vec_normalize, path: str | Path) -> None:
    rms = vec_normalize.obs_rms
    atomic_write_json(path, {"mean": rms.mean.tolist(), "var": rms.var.tolist(), "count": float(rms.count),
                             "clip_obs": float(vec_normalize.clip_obs), "epsilon": float(vec_normalize.epsilon)})


def load_obs_stats_into(vec_normalize, path: str | Path) -> None:
    d = json.loads(Path(path).read_text())
    vec_normalize.obs_rms.mean = np.asarray(d["mean"], np.float64)
    vec_normalize.obs_rms.var = np.asarray(d["var"], np.float64)
    vec_normalize.obs_rms.count = d["count"]


class ObsNormalizer:
    """Applies saved VecNormalize statistics to single observations (inference only)."""

    def __init__(self, path: str | Path) -> None:
        d = json.loads(Path(path).read_text())
        self.mean = np.asarray(d["mean"], np.float32)
        self.std = np.sqrt(np.asarray(d["var"], np.float32) + d["epsilon"])
        self.clip = d["clip_obs"]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if obs.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"observation has {obs.shape[-1]} values, normalisation stats have {self.mean.shape[0]}")
        return np.clip((obs - self.mean) / self.std, -self.clip, self.clip).astype(np.float32)
