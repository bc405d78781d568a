"""A trained run as a pruning schedule: same protocol as the fixed schedules.

    schedule = load_agent_schedule("runs/ppo_seed0", generator)
    images, state = generator.generate(prompts, seeds, schedule=schedule)

A residual run (``ppo-residual``) loads as a ``ResidualAgentSchedule`` (same protocol).
``AgentSchedule.get_pruning_ratio(scale, num_scales)`` is the user's hook signature (>= 1.0 skips),
for code that calls exactly that; bind the current generation state first with ``bind(state)``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from agents.algos import algo_class
from agents.normalization import ObsNormalizer


class RunError(RuntimeError):
    """A run directory is missing, incomplete, corrupt or does not fit the generator."""


def read_run_config(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    if not run.is_dir():
        raise RunError(f"run directory {run} does not exist (train one with `python train.py --out {run.parent}`)")
    from generator.weights_io import read_json_file

    path = run / "config.json"
    cfg = read_json_file(path, RunError, f"{path} is missing: {run} is not a train.py run directory")
    for key in ("algo", "env", "observation_layout"):
        if key not in cfg:
            raise RunError(f"{path} has no {key!r} entry: not a train.py run config")
    return cfg


SERVED_FILES = ("best_model.zip", "selector.safetensors")


def served_file(run: str | Path) -> Path | None:
    """The file a finished run serves its agent from (``best_model.zip``, or a selector's
    ``selector.safetensors``); None while the run has not finished."""
    for name in SERVED_FILES:
        if (Path(run) / name).is_file():
            return Path(run) / name
    return None


def finished_runs(runs_dir: str | Path) -> list[Path]:
    """Every finished train.py run directly under ``runs_dir``, oldest first (by its served file's time)."""
    runs = [p.parent for p in Path(runs_dir).glob("*/config.json") if served_file(p.parent) is not None]
    return sorted(runs, key=lambda p: served_file(p).stat().st_mtime)


def check_layout(layout: dict, generator, observer_dim: int | None = None) -> None:
    """Raise if the generator is not the kind of generator the run was trained on."""
    problems = []
    if layout["num_scales"] != generator.num_scales:
        problems.append(f"num_scales {layout['num_scales']} (run) vs {generator.num_scales} (generator)")
    if list(layout["scale_widths"]) != list(generator.scale_widths):
        problems.append(f"scale widths {layout['scale_widths']} (run) vs {list(generator.scale_widths)} (generator)")
    if layout.get("backend") != getattr(generator, "backend", None):
        problems.append(f"backend {layout.get('backend')!r} (run) vs {getattr(generator, 'backend', None)!r} (generator)")
    if observer_dim is not None and observer_dim != layout["observation_dim"]:
        problems.append(f"observation size {layout['observation_dim']} (run) vs {observer_dim} (built here)")
    if problems:
        raise RunError("trained agent does not fit this generator: " + "; ".join(problems))


def _differing_span(a: str, b: str, context: int = 24) -> tuple[str, str]:
    """The part where two strings differ, with ``context`` characters on each side ('...' where cut)."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[len(a) - 1 - j] == b[len(b) - 1 - j]:
        j += 1
    start = max(0, i - context)

    def span(s: str) -> str:
        end = min(len(s), len(s) - j + context)
        return ("..." if start > 0 else "") + s[start:end] + ("..." if end < len(s) else "")

    return span(a), span(b)


def check_same_generator(cfg: dict, generator, run: Path) -> None:
    """Raise if ``generator`` makes other images than the one the run was trained on: another guidance
    (``--cfg``, ``--cfg-scales``), sampling (``--temperature``, ``--top-k``) or model. The agent's
    observations (entropy, code statistics) and the FLOPs it learned to spend depend on all of them.
    How the images are computed is not checked (the device, the decoder's arithmetic version: a run
    trained on the CPU serves on a GPU). Runs written before the
    fingerprint was recorded are not checked."""
    from generator.protocol import model_part

    trained = cfg.get("generator_fingerprint")
    if trained is None or not hasattr(generator, "fingerprint"):
        return
    trained, here = model_part(trained), model_part(generator.fingerprint())
    if here != trained:
        a, b = _differing_span(trained, here)
        raise RunError(f"run {run} was trained on another generator configuration: {a} (run) vs {b} (here). "
                       f"The run was trained with cfg_scale {cfg.get('env', {}).get('cfg_scale')}; generate.py "
                       f"and evaluate_agent.py use the run's settings when --cfg, --cfg-scales, --temperature and "
                       f"--top-k are not given")


def predict_rows(model, obs, masks=None) -> list:
    """The policy's deterministic action for each row of ``obs``, one row at a time: a policy network
    evaluated on a batch rounds differently (~1e-7) from the same rows alone, which can flip a threshold
    or an argmax, and an image's decisions must not depend on the batch it is generated in. (An MLP call
    is ~0.1 ms; a scale of the generator is tens of ms.)"""
    out = []
    for i in range(len(obs)):
        kw = {} if masks is None else {"action_masks": masks[i:i + 1]}
        a, _ = model.predict(obs[i:i + 1], deterministic=True, **kw)
        out.append(np.asarray(a)[0])
    return out


class AgentSchedule:
    """Queries a trained SB3 policy (deterministically) for each controllable scale's ratio.

    On a batch it decides per image (one policy call per image, ``predict_rows``): ``ratio``
    and ``drop_unconditional`` then return one value per image (a list), which
    ``generator.schedules.run_schedule`` passes to ``generator.step``. On a one-image state they
    return a float / bool, as the fixed schedules do. Each image's decision is the one it gets
    generated alone (its observation is its own: ``ObservationBuilder.observe_batch``).
    """

    name = "rl"

    def __init__(self, model, observer, actions, normalizer: ObsNormalizer | None, layout: dict,
                 budget: float | None = None, guard=None) -> None:
        self.model, self.observer, self.actions, self.normalizer, self.layout = model, observer, actions, normalizer, layout
        self.budget, self.guard = budget, guard  # budget-conditioned runs: the FLOPs budget and its guard
        self._bound = None
        self._last = (None, None)

    def decide(self, state) -> tuple[list[float], list[bool]]:
        """Per image of ``state``: (ratios, drop-unconditional flags) for the scale it is about to run."""
        key = (id(state), state.scale_index, len(state.reports))
        if self._last[0] == key:
            return self._last[1]
        obs = self.observer.observe_batch(state, self.budget)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        actions = predict_rows(self.model, obs)
        decisions = [self.actions.to_ratio(a) for a in actions]
        if self.guard is not None:  # each image kept within the budget on its own spend so far
            guarded = self.guard.decide_batch(state, [r for r, _ in decisions], [d for _, d in decisions],
                                              [self.budget] * len(decisions))
            decisions = [(d.ratio, d.drop_unconditional) for d in guarded]
        decision = ([r for r, _ in decisions], [d for _, d in decisions])
        self._last = (key, decision)
        return decision

    def _check(self, scale_index: int, num_scales: int, state) -> bool:
        """True if the agent decides this scale (False: an uncontrolled scale that runs unpruned)."""
        if num_scales != self.layout["num_scales"]:
            raise RunError(f"agent was trained for {self.layout['num_scales']} scales, asked about {num_scales}")
        if not 0 <= scale_index < num_scales:
            raise IndexError(f"scale index {scale_index} is outside 0..{num_scales - 1}")
        if scale_index < self.layout["first_controllable_scale"]:
            return False
        if state is None:
            raise ValueError("the agent observes the generation: pass the state (or bind(state) first)")
        if state.scale_index != scale_index:
            raise ValueError(f"state is at scale {state.scale_index}, asked about scale {scale_index}")
        return True

    def ratio(self, scale_index: int, num_scales: int, state=None) -> float | list[float]:
        """The ratio for this scale: a float for a one-image state, one per image for a batch."""
        if not self._check(scale_index, num_scales, state):
            return 0.0
        ratios = self.decide(state)[0]
        return ratios[0] if state.batch == 1 else ratios

    def drop_unconditional(self, scale_index: int, num_scales: int, state=None) -> bool | list[bool]:
        if state is None or scale_index < self.layout["first_controllable_scale"]:
            return False
        self._check(scale_index, num_scales, state)
        drops = self.decide(state)[1]
        return drops[0] if state.batch == 1 else drops

    def describe(self, widths) -> str:
        budget = "" if self.budget is None else f"@{self.budget:g}"
        return f"rl:{self.layout.get('run', '?')}{budget}"

    # the user's hook ------------------------------------------------------------------------------
    def bind(self, state) -> "AgentSchedule":
        self._bound = state
        return self

    def get_pruning_ratio(self, scale: int, num_scales: int) -> float | list[float]:
        """Drop-in for the seed's ``get_pruning_ratio``: needs ``bind(state)`` of the live generation
        (one ratio per image when that generation is a batch)."""
        if self._bound is None:
            raise RuntimeError("call bind(state) with the current generation state before get_pruning_ratio")
        return self.ratio(scale, num_scales, self._bound)


def default_agent_budget(run: str | Path, generator) -> float | None:
    """The budget a budget-conditioned run serves when none is given: FastVAR's transformer FLOPs fraction
    on ``generator`` (0.347 on the embedded model), the compute the hand-made schedule spends. None for a
    run trained without ``--budget-range`` (it takes no budget)."""
    from envs.config import EnvConfig
    from generator.schedules import FastVARSchedule, schedule_ratios

    if EnvConfig.from_dict(read_run_config(run)["env"]).budget_range is None:
        return None
    return float(generator.flops_fraction(schedule_ratios(FastVARSchedule(), generator.num_scales)))


def load_agent_schedule(run_dir: str | Path, generator, which: str = "best", clip=None,
                        budget: float | None = None, tolerance: float | None = None) -> AgentSchedule:
    """A run directory from train.py -> schedule for ``generator`` (checked to fit). A budget-conditioned
    run needs ``budget`` (fraction of the unpruned transformer FLOPs) inside its trained range; a lossless
    selector (``--objective iso-quality``) takes no budget but an optional ``tolerance`` (the mean QUALITY
    loss of its operating point; default: the run's --epsilon)."""
    from envs.actions import ActionMapper
    from envs.config import EnvConfig
    from envs.factory import make_clip
    from envs.observation import ObservationBuilder

    run = Path(run_dir)
    cfg = read_run_config(run)
    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got {which!r}")
    lossless = cfg["observation_layout"].get("objective") == "iso-quality"
    if tolerance is not None and not lossless:
        raise RunError(f"{run} is not a lossless selector (--algo selector --objective iso-quality): it takes no tolerance")
    if cfg["algo"] == "selector":  # no SB3 model: candidates and gain (or loss) models (agents.selector)
        return _load_selector(run, cfg, generator, clip, budget, tolerance)
    model_path = run / f"{which}_model.zip"
    if not model_path.is_file():
        raise RunError(f"{model_path} is missing (did training finish? checkpoints are in {run / 'checkpoints'})")
    if cfg.get("residual"):  # moves relative to the run's frontier (ResidualAgentSchedule, below)
        return load_residual_schedule(run, cfg, generator, which, clip=clip, budget=budget)
    layout = dict(cfg["observation_layout"], run=run.name)
    env_cfg = EnvConfig.from_dict(cfg["env"])
    check_layout(layout, generator)
    check_same_generator(cfg, generator, run)
    if clip is None and env_cfg.prompt_embedding_dim > 0:
        clip = make_clip(env_cfg)
    guard = None
    if env_cfg.budget_range is None:
        if budget is not None:
            raise RunError(f"{run} is not budget-conditioned (trained without --budget-range): it takes no budget")
    else:
        from envs.budget import BudgetGuard, check_budget

        if budget is None:
            raise RunError(f"{run} is budget-conditioned: give a FLOPs budget in its trained range "
                           f"[{env_cfg.budget_range[0]:g}, {env_cfg.budget_range[1]:g}] (e.g. --budget)")
        try:
            budget = check_budget(budget, env_cfg.budget_range)
        except ValueError as e:
            raise RunError(str(e)) from None
        guard = BudgetGuard(generator)
    observer = ObservationBuilder(generator, layout["first_controllable_scale"], env_cfg.prompt_embedding_dim, clip,
                                  budget_conditioned=env_cfg.budget_range is not None)
    check_layout(layout, generator, observer.dim)
    model, normalizer = load_model_and_normalizer(run, cfg, which)
    return AgentSchedule(model, observer, ActionMapper(env_cfg), normalizer, layout, budget=budget, guard=guard)


def load_model_and_normalizer(run: Path, cfg: dict, which: str):
    """(the run's SB3 model ``which`` on the CPU, its observation normaliser or None)."""
    model_path = run / f"{which}_model.zip"
    try:
        model = algo_class(cfg["algo"]).load(str(model_path), device="cpu")
    except (zipfile.BadZipFile, ValueError, KeyError, RuntimeError, EOFError) as e:
        raise RunError(f"cannot load {model_path}: corrupt or not a {cfg['algo']} model ({type(e).__name__}: {e})") from None
    stats = run / f"{which}_obs_stats.json"
    normalizer = ObsNormalizer(stats) if stats.is_file() else None
    if cfg.get("hyperparams", {}).get("normalize_observations") and normalizer is None:
        raise RunError(f"{stats} is missing but the run normalised observations")
    return model, normalizer


# ---- residual runs (ppo-residual): the frontier's decision plus the policy's move ------------------------

class ResidualAgentSchedule(AgentSchedule):
    """``AgentSchedule`` whose decisions are frontier decisions moved by a masked discrete policy.

    Per image and controllable scale it observes what ``VarPruneResidual-v0`` observes
    (``ObservationBuilder`` plus ``envs.residual_core.ResidualCore.extras``), takes the masked argmax of
    the policy (the env's action masks: invalid and over-budget moves are never chosen, so every image
    stays within the budget) and applies that move to the frontier's decision for the budget. The
    policy is called per image (``predict_rows``); an image's observation and masks do not depend on its
    batch, so its moves are the ones it gets generated alone.

    ``moves(state)``: the moves (indices into ``envs.residual_core.MOVES``) it makes for each image of
    ``state`` at the scale about to run; ``ratio`` / ``drop_unconditional`` return their decisions."""

    name = "rl-residual"

    def __init__(self, model, observer, core, normalizer, layout: dict, budget: float) -> None:
        super().__init__(model, observer, None, normalizer, layout, budget=budget, guard=None)
        self.core = core
        self.schedule = core.schedule_for(budget)

    def moves(self, state) -> list[int]:
        schedules = [self.schedule] * state.batch
        obs = np.concatenate([self.observer.observe_batch(state, self.budget), self.core.extras(state, schedules)],
                             axis=1).astype(np.float32)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        masks = self.core.masks(state, schedules, [self.budget] * state.batch)
        actions = predict_rows(self.model, obs, masks)
        return [int(a) for a in np.asarray(actions).reshape(-1)]

    def decide(self, state) -> tuple[list[float], list[bool]]:
        key = (id(state), state.scale_index, len(state.reports))
        if self._last[0] == key:
            return self._last[1]
        k = state.scale_index
        decisions = [self.core.decision(self.schedule, k, m) for m in self.moves(state)]
        decision = ([r for r, _ in decisions], [d for _, d in decisions])
        self._last = (key, decision)
        return decision

    def describe(self, widths) -> str:
        return f"rl-residual:{self.layout.get('run', '?')}@{self.budget:g}"


def load_residual_schedule(run: Path, cfg: dict, generator, which: str, clip=None,
                           budget: float | None = None) -> ResidualAgentSchedule:
    """``load_agent_schedule`` for a residual run: its frontier (``RUN/frontier.json``), a budget in its
    trained range, its observation layout checked against the generator."""
    from envs.budget import check_budget
    from envs.config import EnvConfig
    from envs.factory import make_clip
    from envs.frontier import FrontierError
    from envs.observation import ObservationBuilder
    from envs.residual import FRONTIER_FILE, as_frontier
    from envs.residual_core import ResidualCore

    layout = dict(cfg["observation_layout"], run=run.name)
    env_cfg = EnvConfig.from_dict(cfg["env"])
    check_layout(layout, generator)
    check_same_generator(cfg, generator, run)
    if budget is None:
        raise RunError(f"{run} is budget-conditioned: give a FLOPs budget in its trained range "
                       f"[{env_cfg.budget_range[0]:g}, {env_cfg.budget_range[1]:g}] (e.g. --budget)")
    try:
        budget = check_budget(budget, env_cfg.budget_range)
        core = ResidualCore(generator, as_frontier(run / cfg["residual"].get("frontier", FRONTIER_FILE)),
                            layout["first_controllable_scale"], allow_drop=env_cfg.allow_drop_unconditional)
    except (ValueError, FrontierError) as e:
        raise RunError(str(e)) from None
    if clip is None and env_cfg.prompt_embedding_dim > 0:
        clip = make_clip(env_cfg)
    observer = ObservationBuilder(generator, layout["first_controllable_scale"], env_cfg.prompt_embedding_dim, clip,
                                  budget_conditioned=True)
    check_layout(layout, generator, observer.dim + core.extra_dim)
    model, normalizer = load_model_and_normalizer(run, cfg, which)
    return ResidualAgentSchedule(model, observer, core, normalizer, layout, budget)


def _load_selector(run: Path, cfg: dict, generator, clip, budget: float | None, tolerance: float | None = None):
    """A ``train.py --algo selector`` run as a schedule at ``budget`` (required, as for every
    budget-conditioned run; the selector of the largest trained budget <= it serves); a lossless one at
    ``tolerance`` (its operating point of the largest epsilon <= it; default the run's epsilon)."""
    from agents.selector import SELECTOR_FILE, SelectorSchedule, load_lossless, load_selectors, selector_for
    from envs.config import EnvConfig
    from envs.factory import make_clip
    from envs.observation import ObservationBuilder
    from generator.weights_io import WeightsError

    layout = dict(cfg["observation_layout"], run=run.name)
    env_cfg = EnvConfig.from_dict(cfg["env"])
    check_layout(layout, generator)
    check_same_generator(cfg, generator, run)
    lossless = layout.get("objective") == "iso-quality"
    if lossless and budget is not None:
        raise RunError(f"{run} is a lossless selector (--objective iso-quality): it takes a tolerance (e.g. --tolerance "
                       f"among {layout.get('epsilons')}), not a budget")
    if budget is None and not lossless:
        lo, hi = env_cfg.budget_range
        raise RunError(f"{run} is a selector trained at budgets {lo:g} .. {hi:g}: give a FLOPs budget (e.g. --budget)")
    try:
        if lossless:
            selector = load_lossless(run / SELECTOR_FILE)[0].at(
                env_cfg.reward.epsilon if tolerance is None else float(tolerance))
        else:
            selector = selector_for(load_selectors(run / SELECTOR_FILE)[0], float(budget))
    except (WeightsError, ValueError) as e:
        raise RunError(f"{run}: {e}") from None
    if clip is None and env_cfg.prompt_embedding_dim > 0:
        clip = make_clip(env_cfg)
    observer = ObservationBuilder(generator, layout["first_controllable_scale"], env_cfg.prompt_embedding_dim, clip,
                                  budget_conditioned=False)
    check_layout(layout, generator, observer.dim)
    return SelectorSchedule(selector, observer, layout["first_controllable_scale"], label=f"selector:{run.name}")
