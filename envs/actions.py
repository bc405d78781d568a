"""Mapping between agent actions and (pruning ratio, drop-unconditional) decisions."""

from __future__ import annotations

import math

import numpy as np
from gymnasium import spaces

from envs.config import EnvConfig
from generator.protocol import validate_ratio


class ActionMapper:
    """See ``VarPruneEnv``'s docstring for the two action modes."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        if config.action_mode == "continuous":
            self.space = spaces.Box(-1.0, 1.0, (2 if config.allow_drop_unconditional else 1,), np.float32)
        else:
            self.space = spaces.Discrete(len(config.ratio_grid) * (2 if config.allow_drop_unconditional else 1))

    def to_ratio(self, action) -> tuple[float, bool]:
        """Validate an action (no silent clipping) and map it to (ratio, drop_unconditional)."""
        cfg = self.config
        if cfg.action_mode == "continuous":
            a = np.asarray(action, dtype=np.float64).reshape(-1).tolist()  # Python floats: cheaper per step
            if len(a) != self.space.shape[0]:
                raise ValueError(f"action must have shape {self.space.shape}, got ({len(a)},)")
            if not all(math.isfinite(v) for v in a):
                raise ValueError(f"action must be finite, got {a}")
            if any(abs(v) > 1.0 + 1e-6 for v in a):
                raise ValueError(f"action must lie in [-1, 1] (Box action space), got {a}")
            # rounding makes ratio -> action -> ratio exact for fixed schedules run through the env
            ratio = round(min(max((a[0] + 1.0) / 2.0, 0.0), 1.0), 6)
            if ratio >= cfg.skip_threshold:
                ratio = 1.0
            return ratio, bool(cfg.allow_drop_unconditional and a[1] > 0)
        n = self.space.n
        try:
            as_float = float(np.asarray(action, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(f"discrete action must be an integer in 0..{n - 1}, got {action!r}") from None
        if not np.isfinite(as_float) or as_float != int(as_float) or not 0 <= int(as_float) < n:
            raise ValueError(f"discrete action must be an integer in 0..{n - 1}, got {action!r}")
        i, g = int(as_float), len(cfg.ratio_grid)
        return float(cfg.ratio_grid[i % g]), i >= g

    def from_ratio(self, ratio: float, drop: bool = False):
        """The action that reproduces ``ratio`` (nearest grid value in discrete mode)."""
        ratio = validate_ratio(ratio)
        cfg = self.config
        if cfg.action_mode == "continuous":
            a = [min(1.0, ratio) * 2.0 - 1.0] + ([1.0 if drop else -1.0] if cfg.allow_drop_unconditional else [])
            return np.asarray(a, np.float32)
        grid = np.asarray(cfg.ratio_grid)
        i = int(np.argmin(np.abs(grid - min(ratio, 1.0))))
        return i + (len(grid) if (drop and cfg.allow_drop_unconditional) else 0)
