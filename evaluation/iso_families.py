"""The iso-quality comparison's families on the validation items: the models, items and caches of a
run (``IsoContext``), Original's images as the QUALITY references and the cost model's calibration,
and each family's candidates judged by DomainEval (see ``evaluation.iso_quality``).

The judge's scores are cached in their own files (``CACHE/judge/``), apart from the static search's
``GridCache`` (QUALITY only): ``QualityThenJudge`` is the cache the static search's pass writes through,
splitting each new result between the two; the frontier is fixed from QUALITY alone before any judge
score is read.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from evaluation.iso_candidates import CostModel, scaled_fastvar, strength_label

DEFAULT_TOLERANCES = (0.01, 0.02)
DEFAULT_STRENGTHS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
DEFAULT_ONE_SCALE_RATIOS = (0.0, 0.125, 0.25, 0.5)
DEFAULT_TWO_SCALE_RATIOS = (0.25,)
DEFAULT_BUDGETS = ("0.95", "0.9", "0.8", "0.7", "0.6", "0.5", "0.4")
ATTR = "domain_attribute"


@dataclass(frozen=True)
class IsoSettings:
    """What to evaluate: items (``*_source``: a split or prompts file, the first ``*_prompts`` prompts,
    each with every seed), tolerances (attribute-accuracy loss), the family's strengths, the static
    candidates' ratios, the agents' budgets (fractions of the unpruned transformer FLOPs or multiples of
    FastVAR's, "0.8fastvar"), the bootstrap, batches and the cache folder (None = no cache)."""

    val_source: str = "val"
    val_prompts: int = 100
    val_seeds: tuple[int, ...] = (0,)
    test_source: str = "test"
    test_prompts: int = 100
    test_seeds: tuple[int, ...] = (0, 1)
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    one_scale_ratios: tuple[float, ...] = DEFAULT_ONE_SCALE_RATIOS
    two_scale_ratios: tuple[float, ...] = DEFAULT_TWO_SCALE_RATIOS
    allow_drop: bool = True          # the static candidates may drop the CFG branch (and only if every agent may)
    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    n_boot: int = 2000
    seed: int = 0
    batch_size: int = 100
    cache_dir: Path | None = Path("results") / "cache"

    def check(self) -> None:
        from generator.checks import check_positive

        for flag, v in (("--val-prompts", self.val_prompts), ("--test-prompts", self.test_prompts),
                        ("--batch-size", self.batch_size), ("--n-boot", self.n_boot)):
            check_positive(flag, v)
        for t in self.tolerances:
            if not 0 <= t < 1:
                raise ValueError(f"--tolerances: {t!r} is not an attribute-accuracy loss in [0, 1)")
        for s in self.strengths:
            scaled_fastvar(2, s)  # the range check, naming the value
        if not self.tolerances or not self.strengths:
            raise ValueError("--tolerances and --strengths need at least one value each")


@dataclass
class Candidate:
    """One setting of a family: its label, mean validation FLOPs fractions (transformer, total), its
    validation scores (None = not evaluated: ``note`` says why) and what makes its images."""

    label: str
    transformer: float
    total: float
    val: dict | None
    schedule: object | None = None     # a StaticSchedule
    budget: float | None = None
    note: str = ""
    tolerance: float | None = None     # a lossless selector's operating point (mean QUALITY loss)


@dataclass
class Family:
    """A method's candidates, in any order (the operating point orders them by FLOPs), and for an agent
    family its run."""

    name: str
    kind: str                          # baseline (FastVAR scaled) | static | rl
    candidates: list[Candidate]
    run: object | None = None          # RunInfo of an agent family
    note: str = ""


@dataclass
class IsoContext:
    """The models, items and caches of one iso-quality run."""

    settings: IsoSettings
    generator: object
    domain: object                     # evaluation.scoreboard.DomainEval
    reward_fn: object
    runs: tuple
    val_items: list
    test_items: list
    first: int
    allow_drop: bool
    flops: object                      # evaluation.static_search.FlopsTable
    judge_caches: dict = field(default_factory=dict)

    def items(self, split: str) -> list:
        return self.val_items if split == "val" else self.test_items

    def judge_cache(self, split: str, rows: str):
        """The judge's cache of ``rows`` ("static" schedules or "agents") on ``split``'s items."""
        key = (split, rows)
        if key not in self.judge_caches:
            from evaluation.grid_evaluation import module_fingerprint

            folder = None if self.settings.cache_dir is None else Path(self.settings.cache_dir) / "judge"
            ident = {"judge": module_fingerprint(getattr(self.domain.judge, "net", self.domain.judge)), "rows": rows}
            self.judge_caches[key] = NamedRows(folder, self.generator.fingerprint(), self.items(split), ident)
        return self.judge_caches[key]

    def judge_static(self, schedules: list, split: str) -> dict:
        """{schedule: per-item DomainEval scores} on ``split``'s items (cached in the judge's own file)."""
        from evaluation.grid_evaluation import GridEvaluator
        from evaluation.scoreboard import TestPassScorer

        items = self.items(split)
        scorer = TestPassScorer(self.domain, [p for p, _ in items])
        ev = GridEvaluator(self.generator, items, [scorer], cache=self.judge_cache(split, "static"),
                           batch_size=self.settings.batch_size)
        return ev.evaluate(schedules, label=f"judging static schedules ({split})")

    def judge_agent(self, run, budget: float | None, split: str, tolerance: float | None = None) -> dict:
        """Per-item DomainEval scores and FLOPs fractions of ``run``'s agent at ``budget`` (a lossless
        selector: at ``tolerance``) (cached)."""
        from agents.schedule import load_agent_schedule
        from evaluation.generation import MethodSpec, generate_items

        cache = self.judge_cache(split, "agents")
        key = f"{run_fingerprint(run.path)}@{'none' if budget is None else f'{budget:.6f}'}"
        key += "" if tolerance is None else f"@eps{tolerance:.6f}"
        if cache.get_named(key) is None:
            items = self.items(split)
            agent = load_agent_schedule(run.path, self.generator, budget=budget, tolerance=tolerance)
            spec = MethodSpec(agent_run=str(run.path), agent_budget=budget)
            images, recs = generate_items(self.generator, spec, items, self.settings.batch_size, schedule=agent)
            row = self.domain(torch.stack(images), [p for p, _ in items])
            for k in ("flops_fraction", "total_flops_fraction"):
                row[k] = np.asarray([r[k] for r in recs], dtype=np.float64)
            cache.put_named(key, row)
            cache.save()
        return cache.get_named(key)


class NamedRows:
    """The judge's per-item scores, one ``.npz`` per (generator, items, judge, row kind) under
    ``CACHE/judge/``: a ``GridCache`` whose rows can also be keyed by name (an agent at a budget)."""

    def __init__(self, folder, fingerprint: str, items: list, ident: dict) -> None:
        from evaluation.grid_evaluation import GridCache

        self.grid = GridCache(folder, fingerprint, items, ident)

    def get(self, schedule):
        return self.grid.get(schedule)

    def put(self, schedule, metrics: dict) -> None:
        self.grid.put(schedule, metrics)

    def get_named(self, name: str):
        return self.grid.rows.get(name)

    def put_named(self, name: str, metrics: dict) -> None:
        self.grid.rows[name] = metrics

    def save(self) -> None:
        self.grid.save()


class QualityThenJudge:
    """The cache the static search's pass writes through: a schedule counts as done when the static
    search's ``GridCache`` holds its QUALITY; new results are split, QUALITY metrics to that cache,
    ``domain_*`` scores to the judge's own."""

    def __init__(self, grid, judge: NamedRows) -> None:
        self.grid, self.judge = grid, judge

    def get(self, schedule):
        return self.grid.get(schedule)

    def put(self, schedule, metrics: dict) -> None:
        self.grid.put(schedule, {k: v for k, v in metrics.items() if not k.startswith("domain_")})
        self.judge.put(schedule, {k: v for k, v in metrics.items() if k.startswith("domain_")})

    def save(self) -> None:
        self.grid.save()
        self.judge.save()


def run_fingerprint(run_dir: Path) -> str:
    """sha256 (24 hex) of the files an agent is loaded from: config, best model, observation statistics."""
    h = hashlib.sha256()
    for name in ("config.json", "best_model.zip", "best_obs_stats.json", "selector.safetensors", "frontier.json"):
        p = Path(run_dir) / name
        h.update(name.encode() + (p.read_bytes() if p.is_file() else b"-"))
    return h.hexdigest()[:24]


# ---- setting up -------------------------------------------------------------------------------------

def find_runs(run_dirs: tuple[Path, ...], runs_dir: Path | None) -> tuple:
    """The agents to compare: ``run_dirs``, or every finished run under ``runs_dir`` (none: no agents)."""
    from evaluation.compare_plan import resolve_runs

    paths = list(run_dirs)
    if not paths and runs_dir is not None and Path(runs_dir).is_dir():
        from agents.schedule import finished_runs

        paths = sorted(finished_runs(runs_dir))
    return resolve_runs(tuple(paths), Path(runs_dir or "runs"), static_search=True, same_quality=False) if paths else ()


def build_context(settings: IsoSettings, runs: tuple, judge_weights: Path | None) -> IsoContext:
    """Generator, judge and QUALITY terms (the runs', or the shipped budget-conditioned preset's), items
    checked against the grammar, the static levers (the agents' first scale and CFG-drop lever)."""
    from domain import load_prompts
    from envs.config import EnvConfig
    from envs.factory import make_clip, make_generator, make_lpips
    from evaluation.grid_evaluation import check_items
    from evaluation.scoreboard import DomainEval
    from evaluation.static_search import FlopsTable
    from rewards import RewardFunction
    from rewards.reward import RewardConfig

    env = runs[0].env if runs else EnvConfig(reward=RewardConfig.embedded_budget())
    generator = make_generator(env)
    domain = DomainEval.load(judge_weights, enabled=env.generator == "tiny")
    if not domain.available:
        raise ValueError(f"iso-quality is defined on DomainEval, which is {domain.why}")
    grammar = env.generator == "tiny"
    val = check_items(load_prompts(settings.val_source)[:settings.val_prompts], list(settings.val_seeds),
                      f"--val-source {settings.val_source}", grammar)
    test = check_items(load_prompts(settings.test_source)[:settings.test_prompts], list(settings.test_seeds),
                       f"--test-source {settings.test_source}", grammar)
    both = sorted({p for p, _ in val} & {p for p, _ in test})
    if both:
        raise ValueError(f"{len(both)} prompt(s) are both validation and test prompts (e.g. {both[0]!r}): the "
                         "operating point must be chosen on prompts it is not reported on")
    r = env.reward.budget_quality()  # static candidates are ranked by the budget objective's QUALITY (shared cache)
    reward_fn = RewardFunction(r, clip=make_clip(env) if r.clip_weight > 0 else None,
                               lpips=make_lpips(env) if r.lpips_weight > 0 else None)
    first = runs[0].first_controllable if runs else env.first_controllable(generator.num_scales)
    allow_drop = settings.allow_drop and all(run.env.allow_drop_unconditional for run in runs)
    return IsoContext(settings, generator, domain, reward_fn, runs, val, test, first, allow_drop, FlopsTable(generator))


def calibrate(ctx: IsoContext) -> tuple[CostModel, torch.Tensor]:
    """Original's validation images (the QUALITY references), judged and cached as the unpruned static
    schedule, with the seconds they took: the cost model of the estimate."""
    from evaluation.grid_evaluation import QualityScorer
    from evaluation.scoreboard import TestPassScorer
    from generator.schedules import StaticSchedule

    g, items, bs = ctx.generator, ctx.val_items, ctx.settings.batch_size
    t_steps = t_dec = 0.0
    chunks = []
    with torch.no_grad():
        for lo in range(0, len(items), bs):
            part = items[lo:lo + bs]
            t0 = time.perf_counter()
            state = g.start([p for p, _ in part], [s for _, s in part])
            while not state.finished:
                g.step(state, 0.0)
            t1 = time.perf_counter()
            chunks.append(g.decode(state))
            t_steps, t_dec = t_steps + t1 - t0, t_dec + time.perf_counter() - t1
    refs = torch.cat(chunks)
    n = len(items)
    t0 = time.perf_counter()
    scores = TestPassScorer(ctx.domain, [p for p, _ in items])(refs, slice(0, n))
    t_judge = time.perf_counter() - t0
    unpruned = StaticSchedule((0.0,) * g.num_scales)
    cache = ctx.judge_cache("val", "static")
    if cache.get(unpruned) is None:
        cache.put(unpruned, scores)
        cache.save()
    k = min(n, 32)
    scorer = QualityScorer(ctx.reward_fn, refs[:k], [p for p, _ in items[:k]])
    scorer(refs[:1], slice(0, 1))  # the first call pays one-off set-up costs
    t0 = time.perf_counter()
    scorer(refs[:k], slice(0, k))
    t_quality = (time.perf_counter() - t0) / k
    return CostModel(t_steps / (n * g.flops_full()), t_dec / n, t_judge / n, t_quality), refs


# ---- the families on validation ---------------------------------------------------------------------

def static_candidate(ctx: IsoContext, schedule, label: str, val: dict | None) -> Candidate:
    t, tot = ctx.flops(schedule)
    return Candidate(label, t, tot, val, schedule=schedule)


def fastvar_family(ctx: IsoContext) -> Family:
    """FastVAR's pattern at each strength, judged on the validation items."""
    scheds = {s: scaled_fastvar(ctx.generator.num_scales, s) for s in ctx.settings.strengths}
    judged = ctx.judge_static(list(scheds.values()), "val")
    cands = [static_candidate(ctx, sch, strength_label(s), judged[sch]) for s, sch in scheds.items()]
    return Family("fastvar_scaled", "baseline", cands, note="FastVAR's ratios (skip = 1) times s; s=1 is FastVAR")


def static_family(ctx: IsoContext, refs_val: torch.Tensor, grid: list) -> tuple[Family, dict]:
    """The near-lossless grid scored by QUALITY on the validation items (the static search's GridCache,
    shared with compare mode's), its Pareto frontier, and the frontier's DomainEval scores."""
    from evaluation.grid_evaluation import GridCache, GridEvaluator, QualityScorer
    from evaluation.scoreboard import TestPassScorer
    from evaluation.static_search import pareto_frontier

    items = ctx.val_items
    prompts = [p for p, _ in items]
    quality = QualityScorer(ctx.reward_fn, refs_val, prompts)
    folder = ctx.settings.cache_dir
    grid_cache = GridCache(folder, ctx.generator.fingerprint(), items, quality.identity())
    ev = GridEvaluator(ctx.generator, items, [quality, TestPassScorer(ctx.domain, prompts)],
                       cache=QualityThenJudge(grid_cache, ctx.judge_cache("val", "static")),
                       batch_size=ctx.settings.batch_size)
    res = ev.evaluate(grid, label="static candidates (validation)")
    val_q = {s: float(np.nanmean(res[s]["quality"])) for s in grid}
    frontier = [s for s, _, _ in pareto_frontier([(s, ctx.flops.total(s), q) for s, q in val_q.items()])]
    judged = ctx.judge_static(frontier, "val")  # from the judge's cache unless the GridCache held them already
    widths = tuple(ctx.generator.scale_widths)
    cands = [static_candidate(ctx, s, s.describe(widths), judged[s]) for s in frontier]
    info = {"grid_size": len(grid), "generated": ev.generated, "frontier_size": len(frontier),
            "val_quality": {s.describe(widths): val_q[s] for s in frontier}}
    return Family("static_frontier", "static", cands, note="the near-lossless grid's Pareto frontier by QUALITY on "
                  "validation"), info


def agent_budgets(ctx: IsoContext) -> list[tuple[str, float]]:
    """``--budgets`` as (token, fraction of the unpruned transformer FLOPs), each in (0, 1], none twice."""
    from evaluation.compare_plan import read_budget
    from generator.schedules import FastVARSchedule, schedule_ratios

    fv = ctx.generator.flops_fraction(schedule_ratios(FastVARSchedule(), ctx.generator.num_scales))
    out = [(t, read_budget(t).fraction(fv)) for t in ctx.settings.budgets]
    for t, b in out:
        if not 0 < b <= 1:
            raise ValueError(f"--budgets: {t!r} is {b:.4f} of the unpruned transformer FLOPs; a budget must be in (0, 1]")
    if len({round(b, 6) for _, b in out}) != len(out):
        raise ValueError(f"--budgets lists a budget twice: {' '.join(ctx.settings.budgets)}")
    return out


def agent_family(ctx: IsoContext, run, budgets: list[tuple[str, float]]) -> Family:
    """One agent at every budget of its trained range (a run that is not budget-conditioned: once);
    budgets outside the range are n/a rows."""
    name = f"rl:{run.label}"
    epsilons = run.config["observation_layout"].get("epsilons")
    if epsilons:  # a lossless selector: one candidate per operating point
        cands = []
        for e in epsilons:
            row = ctx.judge_agent(run, None, "val", tolerance=e)
            cands.append(Candidate(f"eps={e:g}", float(np.mean(row["flops_fraction"])),
                                   float(np.mean(row["total_flops_fraction"])), row, tolerance=e))
        return Family(name, "rl", cands, run=run, note="lossless selector: one operating point per trained epsilon")
    if run.env.budget_range is None:
        row = ctx.judge_agent(run, None, "val")
        return Family(name, "rl", [Candidate("its own budget", float(np.mean(row["flops_fraction"])),
                                             float(np.mean(row["total_flops_fraction"])), row)], run=run)
    lo, hi = run.env.budget_range
    cands = []
    for token, b in budgets:
        label = f"budget {b:.3f}" + ("" if token.replace(".", "", 1).isdigit() else f" ({token})")
        if not lo - 1e-9 <= b <= hi + 1e-9:
            cands.append(Candidate(label, float("nan"), float("nan"), None, budget=b,
                                   note=f"n/a: outside the range [{lo:g}, {hi:g}] the run was trained on"))
            continue
        row = ctx.judge_agent(run, b, "val")
        cands.append(Candidate(label, float(np.mean(row["flops_fraction"])), float(np.mean(row["total_flops_fraction"])),
                               row, budget=b))
    return Family(name, "rl", cands, run=run)


# ---- the estimate -----------------------------------------------------------------------------------

def estimate(ctx: IsoContext, cost: CostModel, refs_val: torch.Tensor, grid: list, budgets: list) -> dict:
    """Seconds the run will take on this machine, from the cost model and what the caches hold (test:
    an upper bound, every operating point counted as unpruned)."""
    from evaluation.grid_evaluation import GridCache, QualityScorer

    g, n_val, n_test = ctx.generator, len(ctx.val_items), len(ctx.test_items)
    judged = ctx.judge_cache("val", "static")
    fv = [scaled_fastvar(g.num_scales, s) for s in ctx.settings.strengths]
    quality_id = QualityScorer(ctx.reward_fn, refs_val[:1], [ctx.val_items[0][0]]).identity()
    grid_cache = GridCache(ctx.settings.cache_dir, g.fingerprint(), ctx.val_items, quality_id)
    todo_grid = [s for s in grid if grid_cache.get(s) is None]
    fam = cost.static_seconds(g, [s for s in fv if judged.get(s) is None], n_val, quality=False)
    static = cost.static_seconds(g, todo_grid, n_val, quality=True)
    agents = test_agents = 0.0
    for run in ctx.runs:
        lo, hi = run.env.budget_range or (0.0, 1.0)
        inside = [b for _, b in budgets if lo - 1e-9 <= b <= hi + 1e-9] if run.env.budget_range else [0.5]
        inside = [0.8] * len(run.config["observation_layout"].get("epsilons") or []) or inside
        agents += sum(cost.images_seconds(g, b, n_val) for b in inside)
        test_agents += sum(cost.images_seconds(g, b, n_test) for b in inside)
    test = cost.images_seconds(g, 1.0, n_test) * (1 + 2 * len(ctx.settings.tolerances)) + test_agents
    total = fam + static + agents + test
    line = (f"estimate on this machine: ~{total / 60:.1f} min (validation: FastVAR family {fam:.0f} s, static "
            f"candidates {static:.0f} s ({len(todo_grid)} of {len(grid)} not in the cache), agents {agents:.0f} s; "
            f"test <= {test:.0f} s); calibrated on Original: {100 * (cost.s_per_flop * g.flops_full() + cost.decode_s):.1f} s "
            f"per 100 unpruned images, QUALITY {100 * cost.quality_s:.1f} s and the judge {100 * cost.judge_s:.2f} s per 100")
    return {"seconds": round(total, 1), "validation_fastvar_s": round(fam, 1), "validation_static_s": round(static, 1),
            "validation_agents_s": round(agents, 1), "test_upper_bound_s": round(test, 1),
            "static_not_cached": len(todo_grid), "line": line}
