"""SB3 callbacks: validation evaluation with pruning metrics, resumable checkpoints."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from agents.normalization import load_obs_stats_into, save_obs_stats
from generator.weights_io import atomic_write_bytes, atomic_write_json

#: which evaluation a residual run's best_model.zip comes from (step 0: the untrained policy, the frontier)
SERVED_FILE = "served.json"

EVAL_COLUMNS = ("timesteps", "mean_reward", "std_reward", "flops_fraction", "clip_delta", "ssim", "lpips", "episodes")


class PruningEvalCallback(EvalCallback):
    """EvalCallback on validation prompts that also records FLOPs and quality terms.

    Appends one row per evaluation to ``eval_curve.csv`` (columns ``EVAL_COLUMNS``) and saves the
    observation statistics next to ``best_model.zip`` whenever a new best model is saved.
    """

    def __init__(self, eval_env, run_dir: Path, **kwargs) -> None:
        super().__init__(eval_env, best_model_save_path=str(run_dir), log_path=str(run_dir), **kwargs)
        self.run_dir = Path(run_dir)
        self._terminal_infos: list[dict] = []
        self.curve_path = self.run_dir / "eval_curve.csv"
        self.last_row: dict | None = None  # the latest evaluation (a row of eval_curve.csv), for progress lines

    def restore_from_curve(self) -> None:
        """After a resume: the best mean reward and latest row of the run's ``eval_curve.csv`` so far, so
        that a worse first evaluation after resuming does not replace the best model."""
        if not self.curve_path.is_file():
            return
        with open(self.curve_path) as f:
            rows = list(csv.DictReader(f))
        if rows:
            self.best_mean_reward = max(float(r["mean_reward"]) for r in rows)
            self.last_row = rows[-1]

    def _log_success_callback(self, locals_: dict, globals_: dict) -> None:
        super()._log_success_callback(locals_, globals_)
        if locals_["done"]:
            self._terminal_infos.append(locals_["info"])

    def _on_step(self) -> bool:
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return True
        self._terminal_infos = []
        best_before = self.best_mean_reward
        cont = super()._on_step()
        infos = self._terminal_infos

        def mean(key):
            vals = [i[key] for i in infos if key in i]
            return float(np.mean(vals)) if vals else float("nan")

        row = {"timesteps": self.num_timesteps, "mean_reward": float(self.last_mean_reward),
               "std_reward": float(np.std(self.evaluations_results[-1])) if self.evaluations_results else float("nan"),
               "flops_fraction": mean("flops_fraction"), "clip_delta": mean("clip_delta"), "ssim": mean("ssim"),
               "lpips": mean("lpips"), "episodes": len(infos)}
        new = not self.curve_path.exists()
        with open(self.curve_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=EVAL_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)
        self.last_row = row
        for k in ("flops_fraction", "clip_delta", "ssim"):
            self.logger.record(f"eval/{k}", row[k])
        if self.best_mean_reward > best_before:
            vecnorm = self.model.get_vec_normalize_env()
            if vecnorm is not None:
                save_obs_stats(vecnorm, self.run_dir / "best_obs_stats.json")
            self.best_row = row
        return cont


def maskable_eval_callback_class():
    """``PruningEvalCallback`` evaluating with action masks (sb3-contrib's ``MaskableEvalCallback``: the
    policy's masked argmax, masks from ``env_method("action_masks")``), for the residual agent, with its
    model selection: the untrained policy (whose masked argmax keeps the frontier's every decision: paired
    validation reward exactly 0) is the first best model, and a trained one replaces the best only if
    the one-sided 95 % lower bound of its mean paired validation reward (each validation prompt once) is
    above 0 and its mean beats the best's. So a run that learned nothing serves the frontier."""
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

    class MaskablePruningEvalCallback(PruningEvalCallback, MaskableEvalCallback):
        def _on_training_start(self) -> None:
            super()._on_training_start()
            best = self.run_dir / "best_model.zip"
            if not best.exists():  # a fresh run: the untrained policy is the candidate to beat
                self.model.save(str(best))
                vecnorm = self.model.get_vec_normalize_env()
                if vecnorm is not None:
                    save_obs_stats(vecnorm, self.run_dir / "best_obs_stats.json")
                self.best_mean_reward = 0.0
                atomic_write_json(self.run_dir / SERVED_FILE, {"served_step": 0, "untrained": True})

        def _on_step(self) -> bool:
            if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
                return True
            best = self.run_dir / "best_model.zip"
            kept = (best.read_bytes() if best.exists() else None, self.best_mean_reward,
                    (self.run_dir / "best_obs_stats.json").read_bytes() if (self.run_dir / "best_obs_stats.json").exists() else None)
            cont = super()._on_step()
            if self.best_mean_reward > kept[1]:
                if lower_bound(self.evaluations_results[-1]) > 0:
                    atomic_write_json(self.run_dir / SERVED_FILE, {"served_step": int(self.num_timesteps), "untrained": False,
                                                                   "mean_paired_gain": float(self.best_mean_reward)})
                else:  # better on average but not surely positive: the previous best stays served
                    for path, data in ((best, kept[0]), (self.run_dir / "best_obs_stats.json", kept[2])):
                        if data is not None:
                            atomic_write_bytes(path, data)
                    self.best_mean_reward = kept[1]
            return cont

    return MaskablePruningEvalCallback


def lower_bound(rewards) -> float:
    """One-sided 95 % lower bound of a mean (normal approximation); -inf for fewer than two values."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if r.size < 2:
        return float("-inf")
    return float(r.mean() - 1.645 * r.std(ddof=1) / np.sqrt(r.size))


class ResumableCheckpoint(BaseCallback):
    """Every ``save_freq`` steps: model zip, observation stats (JSON) and, for off-policy
    algorithms, the replay buffer, written to temp names and renamed (a kill never leaves a
    half-written checkpoint). ``keep`` newest checkpoints are kept."""

    def __init__(self, save_freq: int, ckpt_dir: Path, keep: int = 2) -> None:
        super().__init__()
        self.save_freq, self.ckpt_dir, self.keep = save_freq, Path(ckpt_dir), keep

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            save_checkpoint(self.model, self.ckpt_dir)
            prune_checkpoints(self.ckpt_dir, self.keep)
        return True


def save_checkpoint(model, ckpt_dir: Path) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    steps = model.num_timesteps
    final = ckpt_dir / f"model_{steps}_steps.zip"
    tmp = ckpt_dir / f".model_{steps}_steps.tmp.zip"
    model.save(str(tmp))
    vecnorm = model.get_vec_normalize_env()
    if vecnorm is not None:
        save_obs_stats(vecnorm, ckpt_dir / f"obs_stats_{steps}_steps.json")
    if hasattr(model, "replay_buffer") and model.replay_buffer is not None:
        rb_tmp = ckpt_dir / f".replay_{steps}.tmp.pkl"
        model.save_replay_buffer(str(rb_tmp))
        os.replace(rb_tmp, ckpt_dir / f"replay_{steps}_steps.pkl")
    os.replace(tmp, final)  # the model zip last: its presence marks a complete checkpoint
    return final


def load_checkpoint(algo_cls, ckpt_path: Path, steps: int, venv, device: str):
    """The model of checkpoint ``ckpt_path`` (written at ``steps``) on ``venv``, with that checkpoint's
    observation statistics loaded into ``venv`` and, for off-policy algorithms, its replay buffer."""
    model = algo_cls.load(str(ckpt_path), env=venv, device=device)
    ckpt_dir = Path(ckpt_path).parent
    stats = ckpt_dir / f"obs_stats_{steps}_steps.json"
    if stats.is_file():
        load_obs_stats_into(venv, stats)
    replay = ckpt_dir / f"replay_{steps}_steps.pkl"
    if replay.is_file() and hasattr(model, "load_replay_buffer"):
        model.load_replay_buffer(str(replay))
    return model


def latest_checkpoint(ckpt_dir: Path) -> tuple[int, Path] | None:
    found = []
    for p in Path(ckpt_dir).glob("model_*_steps.zip"):
        m = re.fullmatch(r"model_(\d+)_steps\.zip", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found) if found else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    steps = sorted(int(re.fullmatch(r"model_(\d+)_steps\.zip", p.name).group(1))
                   for p in ckpt_dir.glob("model_*_steps.zip"))
    for s in steps[:-keep]:
        for name in (f"model_{s}_steps.zip", f"obs_stats_{s}_steps.json", f"replay_{s}_steps.pkl"):
            (ckpt_dir / name).unlink(missing_ok=True)
