"""Making a compared method's images: locally in batches of N (per-image decisions in one batch), or
sharded over K Ray workers that each hold their own generator (``evaluate_agent.py --batch-size/--workers``).

A method is described by a :class:`MethodSpec` that a worker can rebuild on its side: one fixed schedule
for every item, one fixed schedule per item (random schedules, the oracle), or a trained run (the worker
loads the agent itself, with the run's own CLIP). Batch 1 is exactly the deployed path of ``generate.py``
(``run_one``); with a batch, an image's latency is the batch's wall clock divided by its size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from generator.schedules import PerImageSchedules


@dataclass(frozen=True)
class MethodSpec:
    """What generates a method's images. Exactly one of: ``schedule`` (shared by every item),
    ``per_item`` (one fixed schedule per item), ``agent_run`` (a train.py run, with ``agent_budget`` for
    budget-conditioned runs)."""

    schedule: object | None = None
    per_item: tuple | None = None
    agent_run: str | None = None
    agent_budget: float | None = None
    agent_which: str = "best"

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.schedule, self.per_item, self.agent_run)) != 1:
            raise ValueError("a MethodSpec needs exactly one of schedule, per_item, agent_run")


def state_records(generator, state, latency_s: float) -> list[dict]:
    """``evaluation.scoreboard.state_record`` for every image of a (possibly mixed) batch; ``latency_s``
    is each image's share."""
    from evaluation.scoreboard import state_record

    return [state_record(generator, state, latency_s, b) for b in range(len(state.flops_used_per_image))]


def build_schedule(spec: MethodSpec, generator, clip=None):
    """The schedule object of a spec on this side (an agent is loaded from its run directory)."""
    if spec.agent_run is not None:
        from agents.schedule import load_agent_schedule

        return load_agent_schedule(spec.agent_run, generator, which=spec.agent_which, clip=clip, budget=spec.agent_budget)
    return spec.schedule


def generate_items(generator, spec: MethodSpec, items: list[tuple[str, int]], batch_size: int = 1,
                   schedule=None) -> tuple[list[torch.Tensor], list[dict]]:
    """Every (prompt, seed) of ``items`` in batches of ``batch_size``; (images (3, H, W), records).
    ``schedule``: an already-built schedule for ``spec`` (else built here)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    shared = schedule if schedule is not None else (build_schedule(spec, generator) if spec.per_item is None else None)
    images, records = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        sched = shared if spec.per_item is None else None
        if sched is None:
            scheds = list(spec.per_item[start:start + len(chunk)])
            sched = scheds[0] if len(chunk) == 1 else PerImageSchedules(tuple(scheds))
        if hasattr(sched, "bind"):
            sched.bind(None)
        imgs, state, latency = _timed_generation(generator, sched, [p for p, _ in chunk], [s for _, s in chunk])
        images += [imgs[b] for b in range(len(chunk))]
        records += state_records(generator, state, latency / len(chunk))
    return images, records


def _timed_generation(generator, schedule, prompts: list[str], seeds: list[int]):
    """(images (B, 3, H, W), state, seconds): start, every scale, decode (as ``generate.py`` times an image)."""
    from generator.schedules import run_schedule

    t0 = time.perf_counter()
    with torch.no_grad():
        state = run_schedule(generator, generator.start(prompts, seeds), schedule)
        images = generator.decode(state)
    return images, state, time.perf_counter() - t0


def time_alone(generator, schedule, prompt: str, seed: int) -> float:
    """Seconds to generate one image alone at batch 1 (start, every scale, decode: the deployed path of
    ``generate.py``), for the latency column."""
    return _timed_generation(generator, schedule, [prompt], [seed])[2]


class GenerationWorker:
    """One Ray actor: a generator built from a run's ``EnvConfig`` dict, generating shards of items."""

    def __init__(self, env_config: dict, threads: int) -> None:
        from envs.config import EnvConfig
        from envs.factory import make_generator

        torch.set_num_threads(max(1, threads))
        self.generator = make_generator(EnvConfig.from_dict(env_config))
        self._schedules: dict = {}

    def generate(self, spec: MethodSpec, items: list, batch_size: int):
        key = (spec.agent_run, spec.agent_budget, spec.agent_which)
        schedule = None
        if spec.agent_run is not None:  # load each agent once per worker
            if key not in self._schedules:
                self._schedules[key] = build_schedule(spec, self.generator)
            schedule = self._schedules[key]
        images, records = generate_items(self.generator, spec, items, batch_size, schedule=schedule)
        return (torch.stack(images) if images else torch.zeros(0)), records


class GenerationPool:
    """K Ray actors generating shards of a method's items in parallel (contiguous shards, results in
    item order). Ray is started as in ``envs.ray_vec.init_ray`` (``RAY_ADDRESS`` or a local instance)."""

    def __init__(self, env_config: dict, workers: int, threads_per_worker: int = 1) -> None:
        from envs.ray_vec import init_ray

        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        ray = init_ray(num_cpus=max(workers * threads_per_worker, os.cpu_count() or 1))
        self._ray = ray
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= workers else 0
        actor = ray.remote(GenerationWorker).options(num_cpus=threads_per_worker, num_gpus=gpus, max_restarts=0,
                                                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        self.workers = [actor.remote(env_config, threads_per_worker) for _ in range(workers)]

    def generate(self, spec: MethodSpec, items: list, batch_size: int) -> tuple[list[torch.Tensor], list[dict]]:
        from envs.ray_vec import WorkerError

        k = len(self.workers)
        bounds = [round(i * len(items) / k) for i in range(k + 1)]
        refs = []
        for w, (a, b) in zip(self.workers, zip(bounds[:-1], bounds[1:])):
            if b > a:
                part = spec if spec.per_item is None else MethodSpec(per_item=spec.per_item[a:b])
                refs.append((len(refs), w.generate.remote(part, items[a:b], batch_size)))
        images, records = [], []
        for i, ref in refs:
            try:
                imgs, recs = self._ray.get(ref)
            except Exception as e:  # noqa: BLE001 - any actor failure names its worker
                raise WorkerError(f"Ray worker {i} of {k} failed while generating: {type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else e!r}") from e
            images += [imgs[j] for j in range(imgs.shape[0])]
            records += recs
        return images, records

    def close(self) -> None:
        for w in self.workers:
            try:
                self._ray.kill(w)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
