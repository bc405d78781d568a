"""Scale-out on Ray: K actors, each holding its own generator and a ``BatchedVarPruneEnv``, behind one
Stable-Baselines3 ``VecEnv``.

    venv = RayVecEnv(EnvConfig(), num_envs=16, workers=2)       # 2 actors x 8 episodes in lockstep

Each actor builds its generator, CLIP (and LPIPS) from the ``EnvConfig`` itself and keeps its own
reference cache (sharing ``reference_cache_dir`` on disk when set), so images, references and rewards
stay in the actor that makes them: only actions go out and observations, rewards and ``info`` dicts
come back. Slot j of the whole vector env is slot j mod n of actor j // n (n = num_envs / workers),
seeded ``seed + j``: the episodes are those of one ``BatchedVarPruneEnv`` with ``num_envs`` slots.

Ray is an optional extra (``pip install -e ".[ray]"``). Without ``RAY_ADDRESS`` a local Ray instance is
started; with it (``RAY_ADDRESS=ray://head:10001`` or ``auto``) the actors run on that cluster, one GPU
each when the cluster has ``workers`` GPUs. An actor that dies (or raises) surfaces as
:class:`WorkerError` naming the worker and its error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from envs.config import EnvConfig

RAY_INSTALL = 'pip install -e ".[ray]"'


class RayUnavailable(RuntimeError):
    """Ray is not installed."""


class WorkerError(RuntimeError):
    """A Ray worker died or raised; the message names the worker and its error."""


def require_ray():
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"scale-out on Ray needs the ray package: {RAY_INSTALL}") from None
    return ray


def init_ray(num_cpus: int | None = None):
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray (``num_cpus`` logical CPUs); reuses a
    running one (e.g. the tests' ``ray.init(num_cpus=2)``)."""
    ray = require_ray()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


class EnvWorker:
    """The body of one Ray actor: a generator and a batched env built from an ``EnvConfig`` dict."""

    def __init__(self, config: dict, num_envs: int, prompts: list[str] | None, threads: int) -> None:
        import torch

        from envs.batched import BatchedVarPruneEnv
        from envs.factory import make_clip, make_generator, make_lpips
        from rewards import ReferenceCache

        torch.set_num_threads(max(1, threads))
        cfg = EnvConfig.from_dict(config)
        need_clip = cfg.reward.clip_weight > 0 or cfg.prompt_embedding_dim > 0
        self.env = BatchedVarPruneEnv(
            cfg, num_envs, generator=make_generator(cfg), clip=make_clip(cfg) if need_clip else None,
            lpips=make_lpips(cfg) if cfg.reward.lpips_weight > 0 else None, prompts=prompts,
            reference_cache=ReferenceCache(max_items=cfg.reference_cache_size, directory=cfg.reference_cache_dir))

    def pid(self) -> int:
        return os.getpid()

    def spaces(self):
        return self.env.observation_space, self.env.action_space

    def reset(self, seeds: list, options: list) -> tuple[np.ndarray, list]:
        self.env._seeds, self.env._options = list(seeds), list(options)
        obs = self.env.reset()
        return obs, self.env.reset_infos

    def step(self, actions: np.ndarray):
        return self.env.step(actions)

    def get(self, name: str):
        return getattr(self.env, name)

    def set(self, name: str, value) -> None:
        setattr(self.env, name, value)

    def call(self, name: str, args: tuple, kwargs: dict):
        return getattr(self.env, name)(*args, **kwargs)


class RayVecEnv(VecEnv):
    """``num_envs`` episodes over ``workers`` Ray actors (``num_envs / workers`` each, in lockstep inside
    each actor; the actors step in parallel). ``threads_per_worker``: torch threads (and Ray CPUs) per
    actor. ``prompts``: the prompt list (None = the config's split). When the cluster has a GPU per
    worker, each actor holds one and runs its generator and CLIP there (``device='cuda'``: Ray makes
    the actor's own GPU its only visible one); otherwise on the device the config names."""

    def __init__(self, config: EnvConfig, num_envs: int, workers: int, prompts: list[str] | None = None,
                 threads_per_worker: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if num_envs % workers:
            raise ValueError(f"--n-envs {num_envs} must be a multiple of --workers {workers} (each worker runs "
                             f"n-envs / workers episodes together)")
        ray = init_ray(num_cpus=max(workers * threads_per_worker, os.cpu_count() or 1))
        self._ray = ray
        self.per_worker = num_envs // workers
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= workers else 0
        root = str(Path(__file__).resolve().parent.parent)  # this checkout, importable in the actors
        path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        actor = ray.remote(EnvWorker)
        worker_config = {**config.to_dict(), **({"device": "cuda"} if gpus else {})}
        # named (varprune-env-<driver pid>-<k>) so that an operator, or a test, can find and stop one worker
        self.names = [f"varprune-env-{os.getpid()}-{id(self)}-{k}" for k in range(workers)]
        self.workers = [actor.options(num_cpus=threads_per_worker, num_gpus=gpus, max_restarts=0, name=name,
                                      runtime_env={"env_vars": {"PYTHONPATH": path}})
                        .remote(worker_config, self.per_worker, prompts, threads_per_worker) for name in self.names]
        self.worker_pids = self._gather([w.pid.remote() for w in self.workers], "start-up")
        obs_space, act_space = self._gather([self.workers[0].spaces.remote()], "start-up")[0]
        self.config = config
        self._pending = None
        super().__init__(num_envs, obs_space, act_space)

    # ---- errors -----------------------------------------------------------------------------------
    def _gather(self, refs: list, what: str) -> list:
        out = []
        for k, ref in enumerate(refs):
            try:
                out.append(self._ray.get(ref))
            except Exception as e:  # noqa: BLE001 - RayActorError, RayTaskError, ...: all name the worker
                kind = "died" if "ActorDied" in type(e).__name__ or "ActorError" in type(e).__name__ else "failed"
                raise WorkerError(f"Ray worker {k} of {len(self.workers)} {kind} during {what}: "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}") from e
        return out

    def _slices(self):
        n = self.per_worker
        return [slice(k * n, (k + 1) * n) for k in range(len(self.workers))]

    # ---- VecEnv -----------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        refs = [w.reset.remote(self._seeds[s], self._options[s]) for w, s in zip(self.workers, self._slices())]
        parts = self._gather(refs, "reset")
        self.reset_infos = [info for _, infos in parts for info in infos]
        self._reset_seeds()
        self._reset_options()
        return np.concatenate([obs for obs, _ in parts])

    def step_async(self, actions: np.ndarray) -> None:
        if len(actions) != self.num_envs:
            raise ValueError(f"need one action per env ({self.num_envs}), got {len(actions)}")
        self._pending = [w.step.remote(actions[s]) for w, s in zip(self.workers, self._slices())]

    def step_wait(self):
        if self._pending is None:
            raise RuntimeError("step_wait() without step_async()")
        parts, self._pending = self._gather(self._pending, "step"), None
        obs = np.concatenate([p[0] for p in parts])
        rewards = np.concatenate([p[1] for p in parts])
        dones = np.concatenate([p[2] for p in parts])
        infos = [info for p in parts for info in p[3]]
        return obs, rewards, dones, infos

    def close(self) -> None:
        for w in getattr(self, "workers", []):
            try:
                self._ray.kill(w)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []

    def _owners(self, indices) -> list[int]:
        if indices is None:
            idx = list(range(self.num_envs))
        elif isinstance(indices, int):
            idx = [indices]
        else:
            idx = list(indices)
        return [i // self.per_worker for i in idx]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        owners = self._owners(indices)
        values = dict(zip(sorted(set(owners)), self._gather([self.workers[k].get.remote(attr_name)
                                                             for k in sorted(set(owners))], f"get_attr({attr_name})")))
        return [values[k] for k in owners]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        if indices is not None and sorted(set(self._owners(indices))) != list(range(len(self.workers))):
            raise ValueError("each worker's slots share one set of attributes: set them for all slots (indices=None)")
        self._gather([w.set.remote(attr_name, value) for w in self.workers], f"set_attr({attr_name})")

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        owners = self._owners(indices)
        return self._gather([self.workers[k].call.remote(method_name, method_args, method_kwargs) for k in owners],
                            f"env_method({method_name})")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._owners(indices)]
