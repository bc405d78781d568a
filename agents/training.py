"""The stages of a training run after its flags are resolved: the plan (new, or resumed from a run
directory), the model, references made ahead, training with callbacks.

``train.py`` turns the command line into a :class:`RunPlan` and runs these in order; the run
directory's files are described in its docstring.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agents.training_envs import REFERENCE_BATCH, TrainingEnvs, precompute_references, should_precompute_references
from envs.config import EnvConfig
from generator.weights_io import atomic_write_json


@dataclass
class RunPlan:
    """What a run is, from the flags (a new run) or from its config.json (``resume_plan``).

    total_timesteps, eval_freq, checkpoint_freq: environment steps of all ``n_envs`` envs together;
    eval_episodes: validation episodes per evaluation (None: every validation prompt once);
    done_steps / checkpoint: where a resumed run continues (0 / None for a new run)."""

    run: Path
    algo: str
    hp: dict
    seed: int
    env_cfg: EnvConfig
    total_timesteps: int
    n_envs: int
    vec_env: str
    workers: int | None
    eval_freq: int
    checkpoint_freq: int
    val_prompts: str
    eval_episodes: int | None
    done_steps: int = 0
    checkpoint: Path | None = None
    residual: dict | None = None  # {"frontier": file in the run dir, "reward_mode": ...} for a residual agent

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None


def resume_plan(run_dir: Path) -> RunPlan:
    """The run of ``run_dir`` at its last checkpoint, with the settings it was started with. Raises
    ``agents.schedule.RunError`` when it is not a run directory or has no checkpoint yet."""
    from agents.callbacks import latest_checkpoint
    from agents.schedule import RunError, read_run_config

    saved = read_run_config(run_dir)
    run = Path(run_dir)
    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        raise RunError(f"--resume: no checkpoint in {run / 'checkpoints'}")
    done_steps, ckpt_path = ckpt
    return RunPlan(run, saved["algo"], saved["hyperparams"], saved["seed"], EnvConfig.from_dict(saved["env"]),
                   saved["total_timesteps"], saved["n_envs"],
                   saved.get("vec_env", "dummy"),  # runs from before batching used DummyVecEnv
                   saved.get("workers"), saved["eval_freq"], saved["checkpoint_freq"], saved["val_prompts"],
                   saved["eval_episodes"], done_steps, ckpt_path, saved.get("residual"))


def build_new_model(plan: RunPlan, envs: TrainingEnvs, device: str):
    """The SB3 model of a new run, or None after saying why the hyperparameters were rejected (the
    empty run directory is removed). Built before the baselines: a bad hyperparameter fails in seconds."""
    import shutil

    from agents.algos import build_model, per_env_hyperparams

    try:
        return build_model(plan.algo, per_env_hyperparams(plan.algo, plan.hp, plan.n_envs), envs.venv, plan.seed,
                           tensorboard_log=str(plan.run / "tb"), device=device)
    except (TypeError, ValueError, AssertionError) as e:
        shutil.rmtree(plan.run, ignore_errors=True)  # nothing was written to it yet
        print(f"error: {plan.algo} rejected the hyperparameters {sorted(k for k in plan.hp)} "
              f"(agents/hyperparams/{plan.algo}.yml + --hp): {type(e).__name__}: {e}", file=sys.stderr)
        return None


def write_baselines_and_config(plan: RunPlan, envs: TrainingEnvs, command: list[str]) -> None:
    """A new run's baselines.json (FastVAR and the original on the validation episodes), config.json
    (everything resolved, and the ``command`` that started it) and its opening line."""
    from agents.baselines import evaluate_baselines

    generator = envs.generator
    baselines = evaluate_baselines(envs.baseline_env, generator.num_scales, envs.eval_episodes)
    atomic_write_json(plan.run / "baselines.json", baselines)
    config = {"algo": plan.algo, "hyperparams": plan.hp, "seed": plan.seed, "total_timesteps": plan.total_timesteps,
              "n_envs": plan.n_envs, "vec_env": plan.vec_env, "workers": plan.workers,
              "eval_freq": plan.eval_freq, "checkpoint_freq": plan.checkpoint_freq, "val_prompts": plan.val_prompts,
              "eval_episodes": envs.eval_episodes, "env": plan.env_cfg.to_dict(), "observation_layout": envs.layout,
              "generator_fingerprint": generator.fingerprint(), "command": command}
    if plan.residual is not None:
        config["residual"] = plan.residual
    atomic_write_json(plan.run / "config.json", config)
    print(f"run {plan.run}: {plan.algo}, {plan.total_timesteps} steps; FastVAR on validation: reward "
          f"{baselines['fastvar']['mean_reward']:.4f} at {baselines['fastvar']['flops_fraction']:.3f} of full FLOPs")


def prepare_model(plan: RunPlan, envs: TrainingEnvs, device: str, command: list[str]):
    """A resumed run's checkpointed model, or a new run's model after its baselines and config (None:
    the hyperparameters were rejected). device: the policy network's."""
    from agents.algos import algo_class
    from agents.callbacks import load_checkpoint

    if plan.resumed:
        model = load_checkpoint(algo_class(plan.algo), plan.checkpoint, plan.done_steps, envs.venv, device)
        print(f"resuming {plan.run} at step {plan.done_steps} of {plan.total_timesteps}")
        return model
    model = build_new_model(plan, envs, device)
    if model is not None:
        write_baselines_and_config(plan, envs, command)
    return model


def prepare_references(plan: RunPlan, envs: TrainingEnvs, mode: str) -> None:
    """Every training (prompt, image seed) reference made ahead in batches when ``mode`` ("auto" | "on"
    | "off", see ``should_precompute_references``) asks for it. After the model is built: a bad
    hyperparameter fails in seconds, before minutes of these."""
    cfg = plan.env_cfg
    if not should_precompute_references(mode, plan.total_timesteps, cfg, len(envs.train_prompts),
                                        envs.generator.num_scales):
        return
    t0 = time.time()
    precompute_references(envs.generator, envs.refs, envs.clip if cfg.reward.clip_weight > 0 else None,
                          envs.train_prompts, cfg.image_seeds)
    print(f"references: {len(envs.train_prompts) * cfg.image_seeds} (prompt, seed) pairs ready in "
          f"{time.time() - t0:.1f} s ({envs.refs.misses} made in batches of {REFERENCE_BATCH}, {envs.refs.hits} from "
          f"{cfg.reference_cache_dir or 'memory'})")


def make_callbacks(plan: RunPlan, envs: TrainingEnvs, progress_every: int | None) -> list:
    """Checkpoints, validation evaluations (eval_curve.csv, best_model.zip; a resumed run keeps its best
    so far) and, with ``progress_every`` (environment steps), progress lines."""
    from agents.callbacks import PruningEvalCallback, ResumableCheckpoint, maskable_eval_callback_class

    cls = PruningEvalCallback if plan.residual is None else maskable_eval_callback_class()
    eval_cb = cls(envs.eval_env, plan.run, n_eval_episodes=envs.eval_episodes,
                                  eval_freq=max(1, plan.eval_freq // plan.n_envs), deterministic=True, verbose=0)
    if plan.resumed:
        eval_cb.restore_from_curve()
    ckpt_cb = ResumableCheckpoint(max(1, plan.checkpoint_freq // plan.n_envs), plan.run / "checkpoints")
    callbacks = [ckpt_cb, eval_cb]
    if progress_every is not None:
        from agents.progress import ProgressLog

        callbacks.append(ProgressLog(progress_every, plan.total_timesteps, eval_cb))
    return callbacks


def learn(plan: RunPlan, envs: TrainingEnvs, model, callbacks: list, progress_bar: bool) -> int:
    """Train up to the plan's total steps and close the envs; 0, or 1 after saying where to resume
    when a Ray worker died."""
    from agents.callbacks import latest_checkpoint

    remaining = plan.total_timesteps - plan.done_steps
    if remaining > 0:
        try:
            model.learn(total_timesteps=remaining, callback=callbacks, progress_bar=progress_bar,
                        reset_num_timesteps=not plan.resumed, tb_log_name="tb")
        except Exception as e:
            if not is_worker_error(e):
                raise
            last = latest_checkpoint(plan.run / "checkpoints")
            where = f"its last checkpoint (step {last[0]})" if last else "the start (no checkpoint was written yet)"
            print(f"error: {e}\nthe run stopped at step {model.num_timesteps}; continue it from {where} with "
                  f"`python train.py --resume {plan.run}`", file=sys.stderr)
            envs.venv.close()
            return 1
    envs.venv.close()
    return 0


def load_frontier(spec: str | Path):
    """The static frontier a residual run starts from, from ``train.py --frontier SPEC``: the path of a
    frontier.json (``envs.frontier.Frontier``). The one place that turns the flag into a frontier (so that
    a later ``--frontier auto`` builds it here)."""
    from envs.frontier import Frontier

    return Frontier.load(spec)


def residual_envs_arg(plan: RunPlan) -> dict | None:
    """``build_training_envs``' ``residual`` argument of a plan: the run's own copy of the frontier."""
    if plan.residual is None:
        return None
    return {"frontier": load_frontier(plan.run / plan.residual["frontier"]), "reward_mode": plan.residual["reward_mode"]}


def is_worker_error(e: BaseException) -> bool:
    """A Ray worker died or raised (``envs.ray_vec.WorkerError``, matched by name: Ray may be absent)."""
    return type(e).__name__ == "WorkerError"
