"""The environments of a training run: the shared generator / CLIP / LPIPS / reference cache, the
normalised training vector env, the validation env, and the unpruned references made ahead.

``train.py`` builds them once per run with :func:`build_training_envs`; every env of the run shares
one generator and one reference cache (``TrainingEnvs.shared``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from envs.config import EnvConfig

#: (prompt, seed) references made per generator call, ahead of training and in the batched envs
REFERENCE_BATCH = 32


@dataclass
class TrainingEnvs:
    """What a run trains and evaluates on. venv: the training vector env (VecMonitor + VecNormalize);
    eval_env: the validation one (same normalisation, not updated); baseline_env: a fresh unwrapped
    validation env per call (for fixed schedules); layout: the observation layout of config.json."""

    generator: Any
    clip: Any
    refs: Any
    shared: dict
    train_prompts: list[str]
    eval_episodes: int
    venv: Any
    eval_env: Any
    baseline_env: Callable[[], Any]
    layout: dict


def eval_batch_size(episodes: int, n_envs: int) -> int:
    """Slots of the batched validation env: the largest divisor of ``episodes`` not above ``n_envs``
    (every batch then holds only counted episodes)."""
    return max(d for d in range(1, min(episodes, n_envs) + 1) if episodes % d == 0)


def build_training_envs(env_cfg: EnvConfig, *, val_prompts: str, eval_episodes: int | None, n_envs: int,
                        vec_env: str, workers: int | None, seed: int, normalize_obs: bool,
                        residual: dict | None = None) -> TrainingEnvs:
    """The run's envs. vec_env "batched": one generator call per scale for all ``n_envs`` episodes
    (in ``workers`` Ray actors when set; raises ``envs.ray_vec.WorkerError`` if one fails to start);
    "dummy": SB3's DummyVecEnv of single envs. eval_episodes None = every validation prompt once.
    residual: {"frontier": Frontier, "reward_mode": str} for a residual agent: the training and
    validation envs are ``VarPruneResidual-v0`` ones (the baselines still run through VarPrune-v0)."""
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from envs.factory import load_prompts_for, make_clip, make_generator, make_lpips
    from envs.var_prune import VarPruneEnv
    from rewards import ReferenceCache

    generator = make_generator(env_cfg)
    clip = make_clip(env_cfg) if (env_cfg.reward.clip_weight > 0 or env_cfg.prompt_embedding_dim > 0) else None
    lpips = make_lpips(env_cfg) if env_cfg.reward.lpips_weight > 0 else None
    refs = ReferenceCache(max_items=env_cfg.reference_cache_size, directory=env_cfg.reference_cache_dir)
    shared = dict(generator=generator, clip=clip, lpips=lpips, reference_cache=refs)
    val_prompt_list = load_prompts_for(val_prompts)
    eval_episodes = eval_episodes or len(val_prompt_list)
    val_cfg = EnvConfig.from_dict({**env_cfg.to_dict(), "prompts": val_prompts, "image_seeds": 1,
                                   "prompt_order": "cycle"})
    train_prompts = load_prompts_for(env_cfg.prompts)
    make = _batched_envs if vec_env == "batched" else _dummy_envs
    venv, eval_inner, baseline_env = make(env_cfg, val_cfg, train_prompts, val_prompt_list, shared, n_envs,
                                          eval_episodes, workers, residual)
    venv = VecMonitor(venv)
    venv.seed(seed)
    venv = VecNormalize(venv, norm_obs=normalize_obs, norm_reward=False, clip_obs=10.0)
    eval_env = VecNormalize(VecMonitor(eval_inner), norm_obs=normalize_obs, norm_reward=False, clip_obs=10.0,
                            training=False)
    if residual is None:
        layout = VarPruneEnv(val_cfg, **shared).observation_layout
    else:
        from envs.residual import ResidualPruneEnv

        layout = ResidualPruneEnv(val_cfg, **residual, **shared).observation_layout
    return TrainingEnvs(generator, clip, refs, shared, train_prompts, eval_episodes, venv, eval_env, baseline_env,
                        layout)


def _batched_envs(env_cfg: EnvConfig, val_cfg: EnvConfig, train_prompts: list[str], val_prompts: list[str],
                  shared: dict, n_envs: int, eval_episodes: int, workers: int | None, residual: dict | None = None):
    """(training vec env, validation vec env, baseline env factory) of ``envs.batched`` envs (residual ones,
    ``envs.residual_batched``, for training and validation with ``residual``)."""
    from envs.batched import BatchedVarPruneEnv

    if residual is not None:
        if workers:
            raise ValueError("the residual agent does not run in Ray workers yet: drop --workers")
        from envs.residual_batched import BatchedResidualEnv

        cache: dict = {}  # the frontier's quality terms, shared by the training and validation envs
        venv = BatchedResidualEnv(env_cfg, n_envs, prompts=train_prompts, reference_batch_size=REFERENCE_BATCH,
                                  frontier_cache=cache, **residual, **shared)
        eval_slots = eval_batch_size(eval_episodes, n_envs)
        eval_inner = BatchedResidualEnv(val_cfg, eval_slots, prompts=val_prompts, reference_batch_size=REFERENCE_BATCH,
                                        frontier_cache=cache, **residual, **shared)
        eval_inner.plan_episodes(eval_episodes)

        def baseline_env():
            return BatchedVarPruneEnv(val_cfg, eval_slots, prompts=val_prompts, **shared)

        return venv, eval_inner, baseline_env
    if workers:
        import os

        from envs.ray_vec import RayVecEnv

        venv = RayVecEnv(env_cfg, n_envs, workers, prompts=train_prompts,
                         threads_per_worker=max(1, (os.cpu_count() or 1) // workers))
    else:
        venv = BatchedVarPruneEnv(env_cfg, n_envs, prompts=train_prompts, reference_batch_size=REFERENCE_BATCH,
                                  **shared)
    eval_slots = eval_batch_size(eval_episodes, n_envs)
    eval_inner = BatchedVarPruneEnv(val_cfg, eval_slots, prompts=val_prompts, reference_batch_size=REFERENCE_BATCH,
                                    **shared)
    eval_inner.plan_episodes(eval_episodes)

    def baseline_env():
        return BatchedVarPruneEnv(val_cfg, eval_slots, prompts=val_prompts, **shared)

    return venv, eval_inner, baseline_env


def _dummy_envs(env_cfg: EnvConfig, val_cfg: EnvConfig, train_prompts: list[str], val_prompts: list[str],
                shared: dict, n_envs: int, eval_episodes: int, workers: int | None, residual: dict | None = None):
    """(training vec env, validation vec env, baseline env factory) of single ``VarPruneEnv``s in
    SB3's DummyVecEnv (batch-1 generation; ``ResidualPruneEnv``s for training and validation with
    ``residual``)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.var_prune import VarPruneEnv

    make, extra = VarPruneEnv, {}
    if residual is not None:
        from envs.residual import ResidualPruneEnv

        make, extra = ResidualPruneEnv, dict(residual, frontier_cache={})
    venv = DummyVecEnv([lambda: make(env_cfg, prompts=train_prompts, **extra, **shared) for _ in range(n_envs)])
    eval_inner = DummyVecEnv([lambda: make(val_cfg, **extra, **shared)])

    def baseline_env():
        return VarPruneEnv(val_cfg, **shared)

    return venv, eval_inner, baseline_env


def should_precompute_references(mode: str, total_timesteps: int, env_cfg: EnvConfig, num_prompts: int,
                                 num_scales: int) -> bool:
    """mode "on" / "off", or "auto": when the run has at least as many episodes (steps / controllable
    scales) as there are (train prompt, image seed) pairs."""
    pairs = num_prompts * env_cfg.image_seeds
    episodes_expected = total_timesteps / max(1, min(env_cfg.num_controllable, num_scales))
    return mode == "on" or (mode == "auto" and episodes_expected >= pairs)


def precompute_references(generator, refs, clip, prompts: list[str], image_seeds: int) -> None:
    """Every (prompt, image seed) reference of the training split, made in batches (``REFERENCE_BATCH``)
    and kept in ``refs`` (and its directory, across runs)."""
    items = [(p, s) for p in prompts for s in range(image_seeds)]
    keys = [(p, s, generator.fingerprint()) for p, s in items]

    def make(indices: list[int]):
        img, _ = generator.generate([items[i][0] for i in indices], [items[i][1] for i in indices])
        return img

    refs.get_or_create_many(keys, make, clip=clip, prompts=[p for p, _ in items], batch_size=REFERENCE_BATCH)
