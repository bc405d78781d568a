"""Compare mode's pipeline: Original vs FastVAR vs the seed's tail pattern vs trained agents vs the best
static schedule, the three oracles and a random schedule at each agent's FLOPs, on the same items.

    resolve_plan (evaluation.compare_plan: every argument checked, no model built)
    -> build_models      the generator, DomainEval, the reward's quality terms; the agent rows
    -> generate_baselines / generate_agents      each method's images and per-image records
    -> static_baselines  grid on the search items, best static schedule per target (each with its agent's
                         levers), the oracles (in-sample, cross-validated, per-image) on test
    -> generate_random   a random schedule per image with each agent's levers, at most its transformer FLOPs
                         (an agent row that is n/a, its budget outside the run's trained range, has no
                         images: its static, oracle and random rows are at the budget itself)
    -> score_methods     per-image metrics, QUALITY and the run's reward
    -> distribution_measures   Fréchet distance to Original's images and seed diversity (CLIP features)
    -> build_summary     prompt-clustered statistics and paired comparisons (evaluation.compare_summary)
    -> write_report      table.md, per_image.csv, summary.json, pareto.png, grid.png

``run_comparison`` runs them in that order. Every random draw is seeded per image (generation) or
per agent (``np.random.default_rng(0)`` for its random schedules), so the numbers do not depend on
how the stages are grouped.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.compare_plan import (
    AgentRow, BudgetRequest, ComparePlan, GenerationSettings, RunInfo, StaticSearchSettings, agent_suffix,
)
from evaluation.generation import MethodSpec


class ProgressLog:
    """Progress lines on stderr, each with the seconds since the comparison started."""

    def __init__(self) -> None:
        self.t_start = time.time()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.time() - self.t_start

    def __call__(self, msg: str) -> None:
        print(f"[{self.elapsed():6.0f} s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Models:
    """What the comparison is computed with: the runs' generator, the independent judge, the reward
    whose quality terms define QUALITY (the runs share them: checked by ``resolve_runs``), and the
    agent rows (a budget-conditioned run once per budget)."""

    generator: object
    domain: object              # evaluation.scoreboard.DomainEval
    reward_fn: object           # rewards.RewardFunction
    agents: list[AgentRow]


@dataclass
class MethodRun:
    """One compared method: its images (3, H, W) and per-image records (ratios, FLOPs, latency) in item
    order, with the kind and note the summary shows. ``budget``: an agent's FLOPs budget (for the
    reward column); ``static_label``: the target a best-static / oracle row was chosen for."""

    name: str
    kind: str
    note: str
    images: list[torch.Tensor]
    records: list[dict]
    budget: float | None = None
    static_label: str | None = None
    oracle_kind: str | None = None      # an oracle row's kind (a key of evaluation.scoreboard.ORACLE_KINDS)


def clip_for_agent(env_cfg, clip_model: str | None, clip_pretrained: str | None, suite):
    """The metric suite's CLIP where it is the model *and* weights the run observes prompts with, else None
    (``load_agent_schedule`` then builds the run's own)."""
    same = (env_cfg.clip_model, env_cfg.clip_pretrained) == (clip_model, clip_pretrained)
    return suite.clip if same else None


# ---- models -----------------------------------------------------------------------------------------

def build_models(runs: tuple[RunInfo, ...], budgets: BudgetRequest, domain_prompts: bool, judge_weights: Path | None,
                 suite) -> Models:
    """The runs' generator, the agent rows (budgets as multiples of FastVAR's need its FLOPs model: checked
    here, before any image), every run checked to fit the generator, DomainEval and the reward."""
    from agents.schedule import check_layout, check_same_generator
    from envs.factory import make_generator
    from evaluation.compare_plan import agent_rows, check_rows_reachable
    from evaluation.random_schedules import cheapest_schedule
    from evaluation.scoreboard import DomainEval
    from generator.schedules import FastVARSchedule, schedule_ratios
    from rewards import RewardFunction

    generator = make_generator(runs[0].env)
    fastvar_fraction = generator.flops_fraction(schedule_ratios(FastVARSchedule(), generator.num_scales))
    agents = agent_rows(runs, budgets, fastvar_fraction)
    check_rows_reachable(agents, lambda run: generator.flops_fraction(
        list(cheapest_schedule(generator.num_scales, run.first_controllable).ratios)))
    for run in runs:  # what load_agent_schedule checks, before the first image rather than after the baselines
        check_layout(dict(run.config["observation_layout"], run=run.path.name), generator)
        check_same_generator(run.config, generator, run.path)
    domain = DomainEval.load(judge_weights, enabled=domain_prompts)
    # QUALITY under the budget objective for every run (an iso-quality run's capped CLIP term is its training
    # signal, not the scoreboard's): the same column and the same static-search cache whatever the runs' objectives
    reward_fns = [RewardFunction(r.env.reward.budget_quality(), clip=suite.clip if r.env.reward.clip_weight > 0 else None,
                                 lpips=suite.lpips if r.env.reward.lpips_weight > 0 else None) for r in runs]
    return Models(generator, domain, reward_fns[0], agents)


def start_pool(env_cfg, workers: int | None, log: Callable[[str], None]):
    """K Ray actors, each with its own generator (None: generate locally)."""
    if not workers:
        return None
    from evaluation.generation import GenerationPool

    pool = GenerationPool(env_cfg.to_dict(), workers, threads_per_worker=max(1, (os.cpu_count() or 1) // workers))
    log(f"{workers} Ray workers up")
    return pool


# ---- generation -------------------------------------------------------------------------------------

def generate_method(generator, spec: MethodSpec, items: list[tuple[str, int]], settings: GenerationSettings,
                    pool=None, schedule=None) -> tuple[list[torch.Tensor], list[dict]]:
    """Every (prompt, seed) in batches of ``settings.batch_size`` (per-image decisions where the method
    has them: a trained agent, a per-prompt oracle, random schedules), locally or sharded over a Ray
    ``GenerationPool``; then the first ``settings.latency_images`` items timed again alone at batch 1 (as
    deployed) for the latency column (milliseconds). ``schedule``: the agent already loaded here."""
    from evaluation.generation import generate_items, time_alone

    if pool is not None:
        images, recs = pool.generate(spec, items, settings.batch_size)
    else:
        images, recs = generate_items(generator, spec, items, settings.batch_size, schedule=schedule)
    for i in range(min(settings.latency_images, len(items))):
        sched = schedule if schedule is not None else (spec.per_item[i] if spec.per_item is not None else spec.schedule)
        if hasattr(sched, "bind"):
            sched.bind(None)
        recs[i]["latency_ms"] = 1000 * time_alone(generator, sched, items[i][0], items[i][1])
    return images, recs


def generate_baselines(generator, items: list[tuple[str, int]], settings: GenerationSettings, pool,
                       log: Callable[[str], None]) -> dict[str, MethodRun]:
    """Original (no pruning), FastVAR and the seed's tail pattern."""
    from generator.schedules import FastVARSchedule, OriginalSchedule, TailPatternSchedule

    widths = tuple(generator.scale_widths)
    out = {}
    for name, schedule, note in (("original", OriginalSchedule(), "no pruning"),
                                 ("fastvar", FastVARSchedule(), FastVARSchedule().describe(widths)),
                                 ("tail", TailPatternSchedule(), TailPatternSchedule().describe(widths))):
        images, recs = generate_method(generator, MethodSpec(schedule=schedule), items, settings, pool)
        out[name] = MethodRun(name, "baseline", note, images, recs)
    log(f"original, fastvar, tail: {len(items)} images each")
    return out


def generate_agents(generator, agents: list[AgentRow], items: list[tuple[str, int]], settings: GenerationSettings,
                    pool, clip_of: Callable[[object], object], log: Callable[[str], None]) -> dict[str, MethodRun]:
    """Each agent row's images (none for an n/a row: its budget is outside the run's trained range);
    ``clip_of(env_config)``: a CLIP to share with the run, or None."""
    from agents.schedule import load_agent_schedule

    out = {}
    for row in agents:
        if row.na is not None:
            log(f"{row.name}: n/a ({row.na}), no images")
            continue
        agent = load_agent_schedule(row.run.path, generator, clip=clip_of(row.run.env), budget=row.budget)
        spec = MethodSpec(agent_run=str(row.run.path), agent_budget=row.budget)
        images, recs = generate_method(generator, spec, items, settings, pool, schedule=agent)
        note, rate = row.note, frontier_deviation(row, recs)
        if rate is not None:
            note += f"; its images deviate from the run's frontier schedule at this budget on {rate:.1%} of images"
        out[row.name] = MethodRun(row.name, "rl", note, images, recs, budget=row.budget)
        mean_total = float(np.mean([r["total_flops_fraction"] for r in recs]))
        log(f"{row.name}: {len(items)} images, mean total FLOPs fraction {mean_total:.4f}"
            + ("" if rate is None else f", {rate:.1%} off the frontier"))
    return out


def frontier_deviation(row: AgentRow, records: list[dict]) -> float | None:
    """Share of an agent's images whose schedule (ratios, dropped CFG flags) is not its run's frontier
    schedule for the row's budget; None for a run without a frontier (``RUN/frontier.json``)."""
    from envs.frontier import Frontier

    path = row.run.path / "frontier.json"
    if row.budget is None or not path.is_file():
        return None
    s = Frontier.load(path).schedule_for(row.budget)
    same = [list(r["ratios"]) == list(s.ratios) and list(r["dropped_cfg"]) == list(s.drop_uncond) for r in records]
    return 1.0 - float(np.mean(same)) if same else None


def static_targets(generator, agents: list[AgentRow], agent_runs: dict[str, MethodRun]) -> dict[str, float]:
    """The total-FLOPs targets of the static search, per agent row: the agent's mean total FLOPs; for an
    n/a row (no images) its budget, a transformer fraction, as the total fraction of an image that spends
    it (decoder and text encoder added, as FastVAR's target is computed); then FastVAR's."""
    from generator.protocol import total_flops_fraction, total_fraction_of_used
    from generator.schedules import FastVARSchedule, schedule_ratios

    targets = {}
    for row in agents:
        if row.na is not None:
            targets[row.name] = total_fraction_of_used(generator, row.budget * generator.flops_full())
        else:
            targets[row.name] = float(np.mean([r["total_flops_fraction"] for r in agent_runs[row.name].records]))
    targets["fastvar"] = total_flops_fraction(generator, schedule_ratios(FastVARSchedule(), generator.num_scales))
    return targets


def random_target(row: AgentRow, agent_runs: dict[str, MethodRun]) -> tuple[float, str]:
    """The transformer FLOPs a row's random schedules may spend, and what it is: the agent's mean, or the
    budget itself where the agent is n/a."""
    if row.na is not None:
        return float(row.budget), f"the budget; {row.name} is n/a there"
    return float(np.mean([r["flops_fraction"] for r in agent_runs[row.name].records])), f"{row.name}'s mean: never above"


def static_levers(agents: list[AgentRow], first: int) -> dict:
    """Per static target, the levers its schedules may use: each agent row's own (its run's controllable
    scales, CFG-drop flag and skip threshold); at FastVAR's FLOPs, the CFG drop if any compared run may
    drop the branch (and the first run's skip threshold)."""
    from evaluation.scoreboard import Levers

    out = {row.name: Levers(row.run.first_controllable, bool(row.run.env.allow_drop_unconditional),
                            float(row.run.env.skip_threshold)) for row in agents}
    out["fastvar"] = Levers(first, any(lv.drop_cfg for lv in out.values()), float(agents[0].run.env.skip_threshold))
    return out


def static_baselines(models: Models, first: int, targets: dict[str, float], val_items: list[tuple[str, int]],
                     items: list[tuple[str, int]], refs_B3HW: torch.Tensor, static: StaticSearchSettings,
                     settings: GenerationSettings, pool, log: Callable[[str], None]):
    """The static grid searched on ``val_items`` with each agent's levers (best static schedule per
    target, frontier, the oracles on the test items), then the images of each best static schedule and
    oracle: (StaticBaselines, runs)."""
    from evaluation.scoreboard import ORACLE_KINDS, build_static_baselines

    generator = models.generator
    found = build_static_baselines(generator, targets, static_levers(models.agents, first), val_items, items, refs_B3HW,
                                   models.reward_fn, models.domain, refine_rounds=static.refine_rounds,
                                   oracle=static.oracle, cache_dir=static.cache_dir, grid_ratios=tuple(static.grid_ratios),
                                   batch_size=settings.batch_size, oracle_candidates=static.oracle_candidates, log=log)
    log(f"static search: {found.info}")
    widths, n = tuple(generator.scale_widths), generator.num_scales
    na = {row.name: row for row in models.agents if row.na is not None}
    out = {}
    for label, res in found.search.items():
        suffix = (agent_suffix(label, len(models.agents)) if label.startswith("rl:") else f"@{label}")
        name = "best_static" + suffix
        whose = f"{label}'s" if label.startswith("rl:") else "the compared runs'"
        target = label if label not in na else f"{label}'s budget {na[label].budget:g}; the agent is n/a there"
        images, recs = generate_method(generator, MethodSpec(schedule=res.schedule), items, settings, pool)
        out[name] = MethodRun(name, "best_static", f"{res.schedule.describe(widths)}; chosen on {len(val_items)} "
                              f"validation images by quality at total FLOPs <= {res.target_total_fraction:.3f} ({target}), "
                              f"with {whose} levers ({found.levers[label].describe(n)})", images, recs, static_label=label)
        for kind, choice in found.oracles.get(label, {}).items():
            oname = kind + suffix
            how, bound = ORACLE_KINDS[kind]
            images, recs = generate_method(generator, MethodSpec(per_item=tuple(choice[it] for it in items)), items,
                                           settings, pool)
            out[oname] = MethodRun(oname, "oracle", f"{bound}: {how}; candidates: the "
                                   f"{found.info['oracle_candidates'][label]} grid schedules with total FLOPs <= "
                                   f"{res.target_total_fraction:.3f} and {whose} levers (by quality)", images, recs,
                                   static_label=label, oracle_kind=kind)
    return found, out


def neighbourhood_oracles(models: Models, items: list[tuple[str, int]], refs_B3HW: torch.Tensor,
                          static: StaticSearchSettings, settings: GenerationSettings, pool,
                          log: Callable[[str], None]) -> dict[str, MethodRun]:
    """Per agent row of a frontier-based run (``RUN/frontier.json``) with images: the neighbourhood oracles
    (``evaluation.scoreboard.NEIGHBOURHOOD_KINDS``) over the run's frontier schedule for the row's budget and
    its grid one-move neighbours that fit it (the run's levers), ranked by QUALITY on the test items through
    the test pass's cache; the cross-validated one needs >= 2 seeds per prompt."""
    from envs.frontier import Frontier
    from evaluation.frontier_build import neighbourhood
    from evaluation.scoreboard import _test_evaluator, oracle_choices
    from evaluation.static_search import FlopsTable, guided_scales

    generator = models.generator
    rows = [r for r in models.agents if r.na is None and r.budget is not None and (r.run.path / "frontier.json").is_file()]
    if not rows:
        return {}
    test_eval = _test_evaluator(generator, items, refs_B3HW, models.reward_fn, models.domain, static.cache_dir,
                                settings.batch_size)
    flops, guided, widths = FlopsTable(generator), guided_scales(generator), tuple(generator.scale_widths)
    out, made = {}, {}  # made: per-item schedules -> (images, records), for runs that share a frontier
    for row in rows:
        base, near = neighbourhood(Frontier.load(row.run.path / "frontier.json"), row.budget, flops, guided,
                                   allow_drop=bool(row.run.env.allow_drop_unconditional))
        cands = [base] + near
        quality = {s: r["quality"] for s, r in test_eval.evaluate(cands, label=f"{row.name}'s neighbourhood").items()}
        chosen, _ = oracle_choices(quality, items, cands, kinds=("oracle_cv", "oracle_image"))  # cv: >= 2 seeds
        for kind, choice in sorted(("nb_" + k, c) for k, c in chosen.items()):
            name = kind + agent_suffix(row.name, len(models.agents))
            per_item = tuple(choice[it] for it in items)
            if per_item not in made:
                made[per_item] = generate_method(generator, MethodSpec(per_item=per_item), items, settings, pool)
            images, recs = made[per_item]
            out[name] = MethodRun(name, "oracle", f"candidates: {row.name}'s frontier schedule "
                                  f"{base.describe(widths)} and its {len(near)} one-move neighbours within the budget "
                                  f"{row.budget:g} (by quality); {len(set(choice.values()))} of them used", images, recs,
                                  oracle_kind=kind)
        log(f"{row.name}: neighbourhood oracle over {len(cands)} candidates")
    return out


def generate_random(generator, agents: list[AgentRow], agent_runs: dict[str, MethodRun], items: list[tuple[str, int]],
                    settings: GenerationSettings, pool) -> dict[str, MethodRun]:
    """Per agent row, a random schedule per image with the agent's levers (its controllable scales, CFG-drop
    flags where it may drop the branch) at transformer FLOPs within ``TOLERANCE`` below the agent's mean (the
    budget, for an n/a row), never above (each row's own ``np.random.default_rng(0)``)."""
    from evaluation.random_schedules import TOLERANCE, random_schedule_at

    out = {}
    for row in agents:
        rng = np.random.default_rng(0)
        target_t, what = random_target(row, agent_runs)
        drop = bool(row.run.env.allow_drop_unconditional)
        rand = tuple(random_schedule_at(generator, target_t, row.run.first_controllable, rng, row.run.env.skip_threshold,
                                        allow_drop=drop) for _ in items)
        name = "random" + agent_suffix(row.name, len(agents))
        images, recs = generate_method(generator, MethodSpec(per_item=rand), items, settings, pool)
        out[name] = MethodRun(name, "random", f"uniform random ratios per image on {row.name}'s controllable scales"
                              + (", and random CFG-drop flags (it may drop the branch)" if drop else "")
                              + f", each at transformer FLOPs <= {target_t:.3f} ({what}), "
                              f"within {TOLERANCE:g} below it wherever a draw gets there", images, recs)
    return out


# ---- scoring ----------------------------------------------------------------------------------------

def score_methods(methods: dict[str, MethodRun], items: list[tuple[str, int]], refs_B3HW: torch.Tensor, suite,
                  domain, reward_fn) -> dict[str, list[dict]]:
    """Per method, one row per image: DomainEval, the metric suite, the record (FLOPs, latency), QUALITY
    (the reward's quality terms) and the run's episode reward."""
    from evaluation.grid_evaluation import QualityScorer
    from evaluation.scoreboard import reward_of

    prompts = [p for p, _ in items]
    quality = QualityScorer(reward_fn, refs_B3HW, prompts)
    per_method: dict[str, list[dict]] = {}
    for name, m in methods.items():
        x = torch.stack(m.images)
        scores = suite.score(x, prompts, refs_B3HW)
        # QUALITY from the suite's own SSIM / PSNR / CLIP (/ LPIPS) values: the same functions and models
        # as the reward's, so the images are not scored twice
        q = quality.quality_of({k: [sc[k] for sc in scores] for k in ("ssim", "psnr", "clip_score", "lpips")
                                if k in scores[0]}, slice(0, len(items)))
        dom = domain(x, prompts) if domain.available else {}
        rows = []
        for k, ((p, s), rec, sc) in enumerate(zip(items, m.records, scores)):
            rows.append({"method": name, "prompt": p, "seed": s, **{d: float(v[k]) for d, v in dom.items()}, **sc,
                         **{k2: v for k2, v in rec.items() if k2 not in ("ratios", "dropped_cfg")},
                         "quality": float(q[k]), "reward": reward_of(reward_fn.config, float(q[k]), rec["flops_fraction"],
                                                                     m.budget),
                         "ratios": " ".join(f"{r:g}" + ("d" if d else "") for r, d in zip(rec["ratios"], rec["dropped_cfg"]))})
        per_method[name] = rows
    return per_method


def distribution_measures(methods: dict[str, MethodRun], items: list[tuple[str, int]], clip,
                          batch: int = 256) -> dict:
    """Per method, on ``clip``'s unit-norm image embeddings (the metric suite's CLIP): the Fréchet
    distance between its images' features and Original's, and the mean cosine distance between the
    seeds of one prompt (``evaluation.distribution``; None with one seed per prompt)."""
    from evaluation.distribution import frechet_distance, seed_diversity

    def features(images: list[torch.Tensor]) -> np.ndarray:
        return torch.cat([clip.image_embedding(torch.stack(images[i:i + batch])).cpu()
                          for i in range(0, len(images), batch)]).double().numpy()

    several_seeds = len({s for _, s in items}) >= 2
    reference = features(methods["original"].images)
    out = {}
    for name, m in methods.items():
        f = reference if name == "original" else features(m.images)
        out[name] = {"frechet_distance_to_original": frechet_distance(f, reference) if len(items) >= 2 else None,
                     "seed_diversity": seed_diversity(f, items) if several_seeds else None}
    return out


# ---- the pipeline -----------------------------------------------------------------------------------

def generate_all(plan: ComparePlan, models: Models, suite, pool, log: Callable[[str], None]):
    """Every method's images, in the table's order: (methods, the references (N, 3, H, W) = Original's
    images, the static baselines or None)."""
    req, items = plan.request, plan.items.test
    log(f"generating: {len(items)} items ({len(plan.items.test_prompts)} prompts x seeds {plan.items.seeds}) "
        f"per method, batch {req.generation.batch_size}")
    methods = generate_baselines(models.generator, items, req.generation, pool, log)
    refs = torch.stack(methods["original"].images)
    agent_runs = generate_agents(models.generator, models.agents, items, req.generation, pool,
                                 lambda env: clip_for_agent(env, req.clip_model, req.clip_pretrained, suite), log)
    methods.update(agent_runs)
    static = None
    if req.static.enabled:
        static, static_runs = static_baselines(models, plan.first_controllable, static_targets(models.generator, models.agents, agent_runs),
                                               plan.items.search, items, refs, req.static, req.generation, pool, log)
        methods.update(static_runs)
        if req.static.oracle:
            methods.update(neighbourhood_oracles(models, items, refs, req.static, req.generation, pool, log))
    methods.update(generate_random(models.generator, models.agents, agent_runs, items, req.generation, pool))
    log("all methods generated")
    return methods, refs, static


def run_comparison(plan: ComparePlan, suite, log: ProgressLog) -> dict:
    """The whole comparison of a resolved plan; writes the report to ``plan.out`` and returns the summary."""
    from evaluation.compare_summary import build_summary, write_report

    req, items = plan.request, plan.items.test
    models = build_models(plan.runs, plan.budgets, plan.domain_prompts, req.judge_weights, suite)
    pool = start_pool(plan.runs[0].env, req.generation.workers, log)
    try:
        methods, refs, static = generate_all(plan, models, suite, pool, log)
        per_method = score_methods(methods, items, refs, suite, models.domain, models.reward_fn)
        distribution = distribution_measures(methods, items, suite.clip)
        summary = build_summary(plan, models, suite, methods, per_method, static, distribution)
    finally:
        if pool is not None:
            pool.close()
    summary["wall_clock_s"] = round(log.elapsed(), 1)
    write_report(summary, per_method, methods, items, plan.out, req.json, req.grid_prompts)
    return summary
