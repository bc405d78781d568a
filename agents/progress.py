"""A progress line every N environment steps, for training runs whose stdout is a file or a pipe.

SB3's progress bar draws on a terminal; redirected to a file it shows nothing until the end. This
callback prints plain lines instead (as rl-baselines3-zoo's ``--verbose`` runs do)::

    [train] step 2,000/24,000 (8.3%) | 51.2 steps/s | elapsed 39 s | ETA 7 min 10 s | last eval @ 2,000: reward 0.0123, FLOPs 0.331, SSIM 0.752
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from stable_baselines3.common.callbacks import BaseCallback


def format_duration(seconds: float) -> str:
    """'42 s', '7 min 10 s', '1 h 02 min' (rounded down to the unit shown)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress_line(step: int, total: int, steps_per_s: float, elapsed_s: float, last_eval: dict | None) -> str:
    """One progress line. ``step``/``total`` are environment steps; ``steps_per_s`` is measured in this
    process (a resumed run counts from where it resumed); ``last_eval`` is a row of eval_curve.csv."""
    remaining = max(0, total - step)
    eta = remaining / steps_per_s if steps_per_s > 0 else float("inf")
    pct = 100.0 * step / total if total > 0 else 100.0
    line = (f"[train] step {step:,}/{total:,} ({pct:.1f}%) | {steps_per_s:.1f} steps/s | "
            f"elapsed {format_duration(elapsed_s)} | ETA {format_duration(eta)}")
    if last_eval is None:
        return line + " | no evaluation yet"
    return (line + f" | last eval @ {int(last_eval['timesteps']):,}: reward {float(last_eval['mean_reward']):.4f}, "
            f"FLOPs {float(last_eval['flops_fraction']):.3f}, SSIM {float(last_eval['ssim']):.3f}")


class ProgressLog(BaseCallback):
    """Prints :func:`progress_line` whenever the step count crosses a multiple of ``every_steps``, and
    once at the end of training. ``eval_callback`` is the run's ``PruningEvalCallback`` (its last row)."""

    def __init__(self, every_steps: int, total_steps: int, eval_callback=None, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.every_steps, self.total_steps, self.eval_callback = every_steps, total_steps, eval_callback
        self.stream = stream
        self.lines: list[str] = []
        self._t0 = 0.0
        self._step0 = 0
        self._next = 0

    def _on_training_start(self) -> None:
        self._t0 = time.perf_counter()
        self._step0 = self.num_timesteps
        self._next = (self.num_timesteps // self.every_steps + 1) * self.every_steps

    def _emit(self) -> None:
        elapsed = time.perf_counter() - self._t0
        rate = (self.num_timesteps - self._step0) / elapsed if elapsed > 0 else 0.0
        last = getattr(self.eval_callback, "last_row", None)
        line = progress_line(self.num_timesteps, self.total_steps, rate, elapsed, last)
        self.lines.append(line)
        print(line, file=self.stream or sys.stdout, flush=True)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._emit()
            self._next = (self.num_timesteps // self.every_steps + 1) * self.every_steps
        return True

    def _on_training_end(self) -> None:
        if not self.lines or not self.lines[-1].startswith(f"[train] step {self.num_timesteps:,}/"):
            self._emit()
