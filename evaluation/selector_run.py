"""``train.py --algo selector``: the frontier (built, or read from a frontier.json), the selector fitted on
training prompts with its margin on validation (``evaluation.selector_fit``), and a run directory that
``generate.py --agent`` and ``evaluate_agent.py`` load like any trained agent:

    RUN/config.json          algo "selector", the env config (its budget range = the trained budgets),
                             the observation layout, the generator's fingerprint, the settings
    RUN/frontier.json        the static frontier it falls back to
    RUN/selector.safetensors the candidates, gain models and margins
    RUN/summary.json         the fit: per budget the validation gain, deviation rate, chosen margin

With ``--objective iso-quality`` (``train_lossless_selector``) the selector is the lossless one
(``evaluation.selector_iso``): selector.safetensors holds its candidates, loss models and one operating
point per epsilon; config.json has no budget range and lists the epsilons.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from generator.weights_io import atomic_write_json


def selector_budgets(generator, tokens: list[str]) -> tuple[float, ...]:
    """``--selector-budgets`` tokens (0.3, fastvar, 0.8fastvar) as transformer FLOPs fractions, each in (0, 1]."""
    from evaluation.compare_plan import read_budget
    from generator.schedules import FastVARSchedule, schedule_ratios

    fv = float(generator.flops_fraction(schedule_ratios(FastVARSchedule(), generator.num_scales)))
    out = tuple(read_budget(t).fraction(fv) for t in tokens)
    bad = [t for t, b in zip(tokens, out) if not 0 < b <= 1]
    if bad or not out:
        raise ValueError(f"--selector-budgets {bad or tokens}: each must be a fraction in (0, 1] of the unpruned "
                         "transformer FLOPs (or a multiple of FastVAR's, e.g. 0.8fastvar)")
    return out


def run_models(env_cfg):
    """(generator, CLIP or None, the reward function) of a run's env config: the CLIP where the reward
    or the prompt features need it, LPIPS where the reward weighs it."""
    from envs.factory import make_clip, make_generator, make_lpips
    from rewards import RewardFunction

    r = env_cfg.reward
    clip = make_clip(env_cfg) if (r.clip_weight > 0 or env_cfg.prompt_embedding_dim > 0) else None
    reward_fn = RewardFunction(r, clip=clip if r.clip_weight > 0 else None,
                               lpips=make_lpips(env_cfg) if r.lpips_weight > 0 else None)
    return make_generator(env_cfg), clip, reward_fn


def obtain_frontier(source: str, generator, reward_fn, first: int, settings, log: Callable[[str], None]):
    """``source``: 'auto' (build it with ``settings``, an ``evaluation.frontier_build.FrontierSettings``,
    sharing the static search's cache) or a frontier.json path: the frontier either way."""
    from envs.frontier import Frontier
    from evaluation.frontier_build import build_frontier

    if source == "auto":
        return build_frontier(generator, reward_fn, first, settings, log=log)[0]
    frontier = Frontier.load(source)
    frontier.check_generator(generator)
    if frontier.first_controllable != first:
        raise ValueError(f"frontier {source} controls scales from {frontier.first_controllable}, this run from {first}")
    log(f"frontier: read {source} ({len(frontier.entries)} schedules)")
    return frontier


def _setting_json(settings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()}


def _prepare(run: Path, env_cfg, train_source: str, train_prompts: int, train_seeds, frontier_source: str,
             frontier_settings, log: Callable[[str], None], check: Callable = lambda generator: None):
    """What both selectors start from: the models (``check(generator)`` then fails fast on bad settings),
    the frontier (for the lossless selector searched with the budget objective's QUALITY, so that it is
    evaluate_agent.py's, from the same cache), the run directory with its frontier.json, the observer, the
    training and validation items."""
    from domain import load_prompts
    from envs.observation import ObservationBuilder
    from evaluation.frontier_build import val_items
    from evaluation.grid_evaluation import check_items
    from rewards import RewardFunction

    t0 = time.time()
    generator, clip, reward_fn = run_models(env_cfg)
    first = env_cfg.first_controllable(generator.num_scales)
    grammar = env_cfg.generator == "tiny"
    check(generator)
    search_fn = reward_fn
    if reward_fn.config.objective != "budget":
        search_fn = RewardFunction(reward_fn.config.budget_quality(), clip=reward_fn.clip, lpips=reward_fn.lpips)
    frontier = obtain_frontier(frontier_source, generator, search_fn, first, frontier_settings, log)
    t_frontier = time.time() - t0
    run.mkdir(parents=True, exist_ok=False)
    frontier.save(run / "frontier.json", tuple(generator.scale_widths))
    observer = ObservationBuilder(generator, first, env_cfg.prompt_embedding_dim, clip, budget_conditioned=False)
    train = check_items(load_prompts(train_source)[:train_prompts], list(train_seeds), f"--train-prompts {train_source}",
                        grammar)
    return generator, reward_fn, frontier, t_frontier, observer, train, val_items(frontier_settings, grammar)


def _write_run(run: Path, env_cfg, generator, observer, command: list[str], settings, extra_layout: dict) -> None:
    """config.json of a selector run (``generate.py --agent`` and ``evaluate_agent.py`` read it)."""
    layout = {"num_scales": generator.num_scales, "scale_widths": list(generator.scale_widths),
              "first_controllable_scale": observer.first_controllable, "observation_dim": observer.dim,
              "action_mode": "selector", "allow_drop_unconditional": env_cfg.allow_drop_unconditional,
              "prompt_embedding_dim": env_cfg.prompt_embedding_dim, "backend": generator.backend,
              "budget_range": None if env_cfg.budget_range is None else list(env_cfg.budget_range), **extra_layout}
    atomic_write_json(run / "config.json", {"algo": "selector", "command": command, "env": env_cfg.to_dict(),
                                            "observation_layout": layout, "generator_fingerprint": generator.fingerprint(),
                                            "selector": _setting_json(settings)})


def _summary(run: Path, t0: float, t_frontier: float, report: dict, frontier, log, extra: dict | None = None) -> dict:
    summary = {"run": str(run), "algo": "selector", **(extra or {}), "wall_clock_s": round(time.time() - t0, 1),
               "breakdown_s": {"frontier": round(t_frontier, 1), "fit": report["seconds"]}, "fit": report,
               "frontier": frontier.info,
               "validation_note": "validation figures are of the setting chosen on these same validation items "
                                  "(selection-biased); test figures come only from `python evaluate_agent.py` / "
                                  "`python -m evaluation.iso_quality`"}
    atomic_write_json(run / "summary.json", summary)
    log(f"selector run {run}: {summary['wall_clock_s']} s (frontier {t_frontier:.0f} s, fit {report['seconds']} s)")
    return summary


def train_selector(run: Path, env_cfg, settings, frontier_source: str, frontier_settings, budget_tokens: list[str],
                   command: list[str], log: Callable[[str], None] = print) -> dict:
    """Everything ``--algo selector`` does (module docstring); returns summary.json's content."""
    from agents.selector import SELECTOR_FILE, save_selectors
    from evaluation.selector_fit import fit_selectors

    t0 = time.time()
    generator, reward_fn, frontier, t_frontier, observer, train, val = _prepare(
        run, env_cfg, settings.train_source, settings.train_prompts, settings.train_seeds, frontier_source,
        frontier_settings, log, check=lambda g: replace(settings, budgets=selector_budgets(g, budget_tokens)).check())
    settings = replace(settings, budgets=selector_budgets(generator, budget_tokens))
    selectors, report = fit_selectors(generator, reward_fn, observer, frontier, val, train, settings, log)
    budgets = sorted(s.budget for s in selectors)
    env_cfg.budget_range = (budgets[0], budgets[-1])
    _write_run(run, env_cfg, generator, observer, command, settings, {})
    save_selectors(run / SELECTOR_FILE, selectors, {"fit": report})
    return _summary(run, t0, t_frontier, report, frontier, log)


def train_lossless_selector(run: Path, env_cfg, settings, frontier_source: str, frontier_settings, command: list[str],
                            log: Callable[[str], None] = print) -> dict:
    """``--algo selector --objective iso-quality``: frontier, the lossless fit (``evaluation.selector_iso``),
    the run directory (``selector.safetensors`` holds a ``LosslessSelector``); returns summary.json's content."""
    from agents.selector import SELECTOR_FILE, save_lossless
    from evaluation.selector_iso import fit_lossless

    settings.check()
    t0 = time.time()
    generator, reward_fn, frontier, t_frontier, observer, train, val = _prepare(
        run, env_cfg, settings.train_source, settings.train_prompts, settings.train_seeds, frontier_source,
        frontier_settings, log)
    sel, report = fit_lossless(generator, reward_fn, observer, frontier, val, train, settings,
                               env_cfg.allow_drop_unconditional, log)
    _write_run(run, env_cfg, generator, observer, command, settings,
               {"objective": "iso-quality", "epsilons": [lv.epsilon for lv in sel.levels]})
    save_lossless(run / SELECTOR_FILE, sel, {"fit": report})
    return _summary(run, t0, t_frontier, report, frontier, log, {"objective": "iso-quality"})
