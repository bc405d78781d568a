"""Reward <-> judge agreement: does the reward's QUALITY rank static schedules the way the DomainEval
judge does, and what does choosing by QUALITY cost in DomainEval?

For each FLOPs budget (a fraction of the unpruned TRANSFORMER FLOPs, as an agent's budget is), over the
static grid schedules whose transformer FLOPs fit it (``evaluation.static_search.grid_schedules`` with
the agent's levers; a documented subset where more than ``max_schedules`` fit, see
``select_schedules``), on the validation items:

- QUALITY per schedule: the mean over the items of the reward's quality terms, from the static
  search's own ``GridEvaluator`` / ``QualityScorer`` / on-disk ``GridCache`` (the same numbers, the
  same cache file as ``evaluate_agent.py``'s search on the same items);
- DomainEval attribute and scene accuracy per schedule: the judge on the same images, cached on disk
  in a separate file (``<cache>/domaineval/``, keyed like ``GridCache`` plus the judge's weights), so
  the judge never enters the static search's cache;
- Kendall tau-b (``scipy.stats.kendalltau``) between mean QUALITY and mean DomainEval attribute over
  the schedules, its p-value and the number of schedules;
- the reward's choice (best QUALITY on validation) and the judge's choice (best DomainEval attribute on
  validation, ties by scene accuracy, then grid order), both judged on the TEST items; the regret is
  judge's choice minus reward's choice in DomainEval attribute, a prompt-clustered paired 95 % CI
  (``rewards.stats.clustered_paired``): > 0 = choosing by the reward loses that much attribute accuracy.

The judge enters no choice the search or an agent makes: this module only reads it, and nothing that
chooses imports this module (tests/test_layout.py). The command is scripts/reward_judge_agreement.py;
``disagreement_examples`` picks what its figure shows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.compare_plan import DEFAULT_GRID_RATIOS, read_budget
from evaluation.grid_evaluation import (GridCache, GridEvaluator, QualityScorer, check_items, generate_references,
                                       module_fingerprint)
from evaluation.scoreboard import DomainEval, TestPassScorer
from evaluation.static_search import FlopsTable, grid_schedules, schedule_key
from generator.schedules import FastVARSchedule, StaticSchedule, schedule_ratios
from generator.weights_io import jsonable
from rewards.stats import check_unique, clustered_paired

#: FastVAR's transformer FLOPs and 0.8x, 0.6x of it (the scoreboard's budgets), then the near-lossless regime
DEFAULT_BUDGETS = ("fastvar", "0.8fastvar", "0.6fastvar", "0.95", "0.9", "0.8")
SUBSET_RULES = ("closest", "random")
JUDGE_CACHE_FOLDER = "domaineval"   # under the cache folder: the judge's per-item scores, never the grid's file
JUDGE_PREFIX = "domain_"            # DomainEval's metric names (``evaluation.scoreboard.DomainEval``)
CALIBRATION_SCHEDULES = 3           # schedules evaluated (and cached) first, timed, for the estimate
GENERATION_SHARE = 0.8              # one grid schedule's prefix-shared generation + scores / an unpruned image's (measured)


@dataclass(frozen=True)
class AgreementSettings:
    """What the analysis runs on. Budgets: tokens as ``evaluate_agent.py --budgets`` reads them
    (``0.9``, ``fastvar``, ``0.8fastvar``), fractions of the unpruned transformer FLOPs. Items: the first
    ``num_prompts`` validation prompts x ``val_seeds`` (the static search's items by default) and the
    first ``test_num_prompts`` test prompts x ``test_seeds``. ``max_schedules``: per budget, at most this
    many fitting schedules (0 = all), chosen by ``subset`` (see ``select_schedules``)."""

    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    num_prompts: int = 100
    val_seeds: tuple[int, ...] = (0,)
    test_num_prompts: int = 100
    test_seeds: tuple[int, ...] = (0, 1, 2)
    max_schedules: int = 12
    subset: str = "closest"
    sample_seed: int = 0
    grid_ratios: tuple[float, ...] = DEFAULT_GRID_RATIOS
    batch_size: int = 100
    cache_dir: Path | None = Path("results") / "cache"
    out: Path = Path("results") / "agreement"
    figure_budget: str | None = None    # None = the first budget
    figure_pairs: int = 3
    figure_items: int = 4

    def check(self) -> "AgreementSettings":
        """ValueError naming the flag, the bad value and what is allowed."""
        for flag, v, low in (("--num-prompts", self.num_prompts, 1), ("--test-num-prompts", self.test_num_prompts, 1),
                             ("--max-schedules", self.max_schedules, 0), ("--batch-size", self.batch_size, 1),
                             ("--figure-pairs", self.figure_pairs, 0), ("--figure-items", self.figure_items, 1)):
            if int(v) != v or v < low:
                raise ValueError(f"{flag} must be an integer >= {low}, got {v}")
        if self.subset not in SUBSET_RULES:
            raise ValueError(f"--subset must be one of {', '.join(SUBSET_RULES)}, got {self.subset!r}")
        if not self.budgets:
            raise ValueError("--budgets needs at least one budget")
        check_unique(f"budgets in --budgets {' '.join(self.budgets)}", [b.strip().lower() for b in self.budgets])
        for b in self.budgets:
            read_budget(b)
        for flag, seeds in (("--val-seeds", self.val_seeds), ("--test-seeds", self.test_seeds)):
            if not seeds:
                raise ValueError(f"{flag} needs at least one seed")
            check_unique(f"seeds in {flag} {' '.join(map(str, seeds))}", list(seeds))
        for r in self.grid_ratios:
            if not 0.0 <= r < 0.9:
                raise ValueError(f"--grid-ratios must be pruning ratios in [0, 0.9) (skip is always in the grid), got {r:g}")
        check_unique(f"ratios in --grid-ratios {' '.join(f'{r:g}' for r in self.grid_ratios)}", list(self.grid_ratios))
        if self.figure_budget is not None and self.figure_budget not in self.budgets:
            raise ValueError(f"--figure-budget {self.figure_budget!r} is not one of --budgets {' '.join(self.budgets)}")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise ValueError(f"--cache-dir {self.cache_dir} is a file; it must be a folder (or not exist yet)")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out} is a file; it must be a folder (or not exist yet)")
        return self


@dataclass(frozen=True)
class Levers:
    """The compared agent's levers, which the grid gets too: the first scale it controls (earlier scales
    run unpruned with CFG) and whether it may drop the CFG branch."""

    first: int
    allow_drop: bool


@dataclass
class BudgetPlan:
    """One budget: its token, its transformer fraction, how many grid schedules fit it and the ones
    evaluated (all of them, or the subset ``select_schedules`` keeps)."""

    token: str
    fraction: float
    n_fit: int
    schedules: list[StaticSchedule] = field(default_factory=list)


# ---- the pure analysis ------------------------------------------------------------------------------

def rank_agreement(quality: np.ndarray, judge: np.ndarray) -> dict:
    """Kendall tau-b between per-schedule mean QUALITY and mean DomainEval (scipy's, ties handled), its
    two-sided p-value and n = schedules; tau and p are NaN below two schedules (or when either is constant)."""
    from scipy.stats import kendalltau

    q, j = np.asarray(quality, np.float64), np.asarray(judge, np.float64)
    if q.shape != j.shape or q.ndim != 1:
        raise ValueError(f"need one QUALITY and one DomainEval value per schedule, got shapes {q.shape} and {j.shape}")
    if q.size < 2:
        return {"tau": math.nan, "p": math.nan, "n": int(q.size)}
    res = kendalltau(q, j)
    return {"tau": float(res.statistic), "p": float(res.pvalue), "n": int(q.size)}


def choices(quality: np.ndarray, attribute: np.ndarray, scene: np.ndarray) -> tuple[int, int]:
    """(reward's choice, judge's choice) as indices: the highest mean QUALITY, and the highest mean
    DomainEval attribute accuracy (ties by scene accuracy); remaining ties go to the first index."""
    q, a, s = (np.asarray(x, np.float64) for x in (quality, attribute, scene))
    if not q.size or not q.shape == a.shape == s.shape:
        raise ValueError(f"need the same non-zero number of schedules in each array, got {q.shape}, {a.shape}, {s.shape}")
    order = np.lexsort((np.arange(a.size), -s, -a))  # the last key sorts first
    return int(np.argmax(q)), int(order[0])


def regret(judge_choice_test: np.ndarray, reward_choice_test: np.ndarray, prompts: list[str]) -> dict:
    """DomainEval regret of the reward's choice on the test items: judge's choice minus reward's choice,
    per image, averaged within each prompt first (``rewards.stats.clustered_paired``: mean_diff, ci95,
    n prompts, p-values, wins)."""
    return clustered_paired([float(x) for x in judge_choice_test], [float(x) for x in reward_choice_test], list(prompts))


def discordant_pairs(quality: np.ndarray, judge: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """Up to ``k`` pairs (i, j, discordance) that QUALITY and DomainEval order oppositely: i is above j in
    QUALITY and below it in DomainEval; discordance = the product of the two rank gaps (ranks 0 = best,
    ties averaged), largest first. Each schedule appears in at most one pair (a greedy pick)."""
    from scipy.stats import rankdata

    rq, rj = rankdata(-np.asarray(quality, np.float64)), rankdata(-np.asarray(judge, np.float64))
    scored = []
    for i in range(rq.size):
        for j in range(rq.size):
            if rq[i] < rq[j] and rj[i] > rj[j]:
                scored.append((float((rq[j] - rq[i]) * (rj[i] - rj[j])), i, j))
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    out, used = [], set()
    for d, i, j in scored:
        if len(out) == k:
            break
        if i not in used and j not in used:
            out.append((i, j, d))
            used.update((i, j))
    return out


def select_schedules(fitting: list[StaticSchedule], transformer: Callable[[StaticSchedule], float], k: int, rule: str,
                     permutation_rank: dict[StaticSchedule, int] | None = None) -> list[StaticSchedule]:
    """At most ``k`` of the fitting schedules (``k`` = 0: all), in grid order.

    ``closest``: the ``k`` that spend the most transformer FLOPs (ties in grid order): a budget's choice
    is between schedules that use most of it, and these are where both instruments rank them.
    ``random``: the first ``k`` fitting schedules in one fixed random order of the whole grid
    (``permutation_rank``: schedule -> its place in that order), so budgets that fit nearly the whole grid
    share their sample and it is generated once.
    """
    if rule not in SUBSET_RULES:
        raise ValueError(f"subset rule must be one of {', '.join(SUBSET_RULES)}, got {rule!r}")
    if not k or len(fitting) <= k:
        return list(fitting)
    if rule == "closest":
        keep = set(sorted(fitting, key=lambda s: -transformer(s))[:k])  # sorted is stable: ties in grid order
    else:
        if permutation_rank is None:
            raise ValueError("the random subset needs the grid's random order (permutation_rank)")
        keep = set(sorted(fitting, key=lambda s: permutation_rank[s])[:k])
    return [s for s in fitting if s in keep]


def plan_budgets(grid: list[StaticSchedule], flops: FlopsTable, tokens: tuple[str, ...], fastvar_fraction: float,
                 k: int, rule: str, sample_seed: int) -> list[BudgetPlan]:
    """Each budget's fitting grid schedules (transformer FLOPs <= budget) and the subset evaluated. A
    budget no grid schedule fits, or two tokens for one budget, is a ValueError naming them."""
    rank = {s: int(i) for i, s in zip(np.random.default_rng(sample_seed).permutation(len(grid)), grid)}
    plans = []
    for token in tokens:
        frac = read_budget(token).fraction(fastvar_fraction)
        if any(abs(frac - p.fraction) < 1e-9 for p in plans):
            raise ValueError(f"--budgets lists the budget {frac:.4f} twice ({token!r})")
        fitting = [s for s in grid if flops.transformer(s) <= frac + 1e-12]
        if not fitting:
            cheapest = min(flops.transformer(s) for s in grid)
            raise ValueError(f"budget {token!r} ({frac:.4f} of the transformer FLOPs): no grid schedule fits; the "
                             f"cheapest costs {cheapest:.4f}")
        plans.append(BudgetPlan(token, frac, len(fitting), select_schedules(fitting, flops.transformer, k, rule, rank)))
    return plans


# ---- caches and evaluation --------------------------------------------------------------------------

def judge_cache(cache_dir: Path | None, generator, items: list[tuple[str, int]], domain: DomainEval) -> GridCache:
    """The judge's per-item scores of static schedules on ``items``: a ``GridCache`` in its own folder,
    keyed by the generator, the items and the judge's weights (never the static search's file)."""
    where = None if cache_dir is None else Path(cache_dir) / JUDGE_CACHE_FOLDER
    ident = {"scorer": "DomainEval", "judge": module_fingerprint(getattr(domain.judge, "net", domain.judge))}
    return GridCache(where, generator.fingerprint(), items, ident)


class SplitCache:
    """What a ``GridEvaluator`` scoring QUALITY and DomainEval in one generation pass reads and writes:
    QUALITY's metrics go to the static search's ``GridCache`` (a row already there is kept as it is), the
    judge's (``domain_*``) to the judge's own; a schedule is cached when both hold it."""

    def __init__(self, quality: GridCache, judge: GridCache) -> None:
        self.quality, self.judge = quality, judge

    def get(self, schedule: StaticSchedule) -> dict[str, np.ndarray] | None:
        q, j = self.quality.get(schedule), self.judge.get(schedule)
        return None if q is None or j is None else {**q, **j}

    def put(self, schedule: StaticSchedule, metrics: dict[str, np.ndarray]) -> None:
        if self.quality.get(schedule) is None:
            self.quality.put(schedule, {m: v for m, v in metrics.items() if not m.startswith(JUDGE_PREFIX)})
        self.judge.put(schedule, {m: v for m, v in metrics.items() if m.startswith(JUDGE_PREFIX)})

    def save(self) -> None:
        self.quality.save()
        self.judge.save()


def evaluate_validation(generator, items: list[tuple[str, int]], schedules: list[StaticSchedule], scorer: QualityScorer,
                        grid: GridCache, judged: GridCache, domain: DomainEval, batch_size: int) -> dict:
    """Per schedule, per item: QUALITY (from the static search's cache, else generated and scored by its
    ``QualityScorer`` and written there) and DomainEval (from the judge's cache, else judged and written
    there). One generation per schedule missing QUALITY (both scored); a schedule missing only the judge's
    scores is generated for the judge alone. Values are read back from the caches, so they are the
    cached numbers the static search reads. Returns {schedule: {metric: (n_items,) array}}."""
    judge_scorer = TestPassScorer(domain, [p for p, _ in items])
    need_quality = [s for s in schedules if grid.get(s) is None]
    if need_quality:
        GridEvaluator(generator, items, [scorer, judge_scorer], cache=SplitCache(grid, judged),
                      batch_size=batch_size).evaluate(need_quality, label="schedules on the validation items")
    need_judge = [s for s in schedules if judged.get(s) is None]
    if need_judge:
        GridEvaluator(generator, items, [judge_scorer], cache=judged,
                      batch_size=batch_size).evaluate(need_judge, label="judging cached schedules")
    return {s: {**grid.get(s), **judged.get(s)} for s in schedules}


def estimate_seconds(seconds_per_schedule: float, val_schedules_left: int, n_val: int, test_schedules: int,
                     n_test: int) -> float:
    """Rough wall time (s) of what is left: the validation schedules still to generate at the measured
    seconds per schedule (on ``n_val`` items), and the test pass, each schedule scaled to ``n_test`` items
    (generation dominates: the reward's quality terms and the judge cost a few percent of it)."""
    return seconds_per_schedule * (val_schedules_left + test_schedules * n_test / n_val)


def load_items(settings: AgreementSettings) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(validation items, test items) from the prompt splits; a prompt in both is an error naming it."""
    from domain import load_prompts

    val = check_items(load_prompts("val")[: settings.num_prompts], list(settings.val_seeds), "val", grammar=True)
    test = check_items(load_prompts("test")[: settings.test_num_prompts], list(settings.test_seeds), "test", grammar=True)
    overlap = sorted({p for p, _ in val} & {p for p, _ in test})
    if overlap:
        raise ValueError(f"{len(overlap)} prompt(s) are both validation and test prompts (e.g. {overlap[0]!r})")
    return val, test


# ---- per budget -------------------------------------------------------------------------------------

def means(val_res: dict, schedules: list[StaticSchedule], metric: str) -> np.ndarray:
    """Per schedule, the mean of ``metric`` over the items (NaN items left out)."""
    return np.asarray([float(np.nanmean(val_res[s][metric])) for s in schedules])


def schedule_row(schedule: StaticSchedule, flops: FlopsTable, widths: tuple[int, ...], quality: float, attribute: float,
                 scene: float) -> dict:
    """One schedule's record: its description, key, FLOPs fractions and validation means."""
    return {"schedule": schedule.describe(widths), "key": schedule_key(schedule),
            "transformer_fraction": flops.transformer(schedule), "total_fraction": flops.total(schedule),
            "val_quality": quality, "val_attribute": attribute, "val_scene": scene}


def summarise_budget(plan: BudgetPlan, val_res: dict, flops: FlopsTable, widths: tuple[int, ...]) -> dict:
    """A budget's agreement on validation: tau (QUALITY vs attribute, and vs scene), both choices and every
    evaluated schedule's record (the test scores and the regret are added by ``add_test_scores``)."""
    q, a, sc = (means(val_res, plan.schedules, m) for m in ("quality", "domain_attribute", "domain_scene"))
    ri, ji = choices(q, a, sc)
    rows = [schedule_row(s, flops, widths, float(q[i]), float(a[i]), float(sc[i])) for i, s in enumerate(plan.schedules)]
    by_attr, by_scene = rank_agreement(q, a), rank_agreement(q, sc)
    return {"budget": plan.token, "transformer_fraction": plan.fraction, "n_fit": plan.n_fit,
            "n_schedules": len(plan.schedules), "tau": by_attr["tau"], "p": by_attr["p"],
            "tau_scene": by_scene["tau"], "p_scene": by_scene["p"], "same_choice": ri == ji,
            "reward_choice": dict(rows[ri]), "judge_choice": dict(rows[ji]), "schedules": rows,
            "_choice_schedules": (plan.schedules[ri], plan.schedules[ji])}


def add_test_scores(summary: dict, test_res: dict, prompts: list[str]) -> None:
    """The two choices' DomainEval on the test items and the regret (attribute, and scene beside it)."""
    reward_s, judge_s = summary.pop("_choice_schedules")
    for who, s in (("reward_choice", reward_s), ("judge_choice", judge_s)):
        summary[who]["test_attribute"] = float(np.nanmean(test_res[s]["domain_attribute"]))
        summary[who]["test_scene"] = float(np.nanmean(test_res[s]["domain_scene"]))
    summary["regret"] = regret(test_res[judge_s]["domain_attribute"], test_res[reward_s]["domain_attribute"], prompts)
    summary["regret_scene"] = regret(test_res[judge_s]["domain_scene"], test_res[reward_s]["domain_scene"], prompts)


def disagreement_examples(generator, domain: DomainEval, plan: BudgetPlan, val_res: dict, flops: FlopsTable,
                          refs_B3HW: torch.Tensor, items: list[tuple[str, int]], n_pairs: int, n_items: int) -> list[dict]:
    """For the figure: the ``n_pairs`` most discordant pairs of the budget's schedules (``discordant_pairs``),
    each with the ``n_items`` validation items on which the two differ most in DomainEval attribute: the
    Original images (with the judge's attribute accuracy), each schedule's images (generated again, the same
    seeds) and per-image scores."""
    q, a = means(val_res, plan.schedules, "quality"), means(val_res, plan.schedules, "domain_attribute")
    out = []
    for i, j, d in discordant_pairs(q, a, n_pairs):
        si, sj = plan.schedules[i], plan.schedules[j]
        gap = np.abs(np.nan_to_num(val_res[si]["domain_attribute"] - val_res[sj]["domain_attribute"]))
        idx = sorted(int(k) for k in np.argsort(-gap, kind="stable")[:n_items])
        prompts, seeds = [items[k][0] for k in idx], [items[k][1] for k in idx]
        shown = []
        for s, mq, ma in ((si, q[i], a[i]), (sj, q[j], a[j])):
            with torch.no_grad():
                images = generator.generate(prompts, seeds, schedule=s)[0]
            shown.append({"schedule": s, "transformer_fraction": flops.transformer(s), "val_quality": float(mq),
                          "val_attribute": float(ma), "images": images,
                          "quality": [float(val_res[s]["quality"][k]) for k in idx],
                          "attribute": [float(val_res[s]["domain_attribute"][k]) for k in idx]})
        out.append({"discordance": d, "items": [items[k] for k in idx], "original": refs_B3HW[idx], "shown": shown,
                    "original_attribute": domain(refs_B3HW[idx], prompts)["domain_attribute"].tolist()})
    return out


# ---- the run ----------------------------------------------------------------------------------------

def run_agreement(generator, reward_fn, domain: DomainEval, levers: Levers, settings: AgreementSettings,
                  log: Callable[[str], None] = print, estimate_only: bool = False) -> dict:
    """The whole analysis (see the module docstring). Returns the result: ``budgets`` (one summary per
    budget), ``examples`` (the figure's pairs, with images; not JSON) and the run's facts; with
    ``estimate_only`` it stops after the estimate (the references are generated to time this CPU)."""
    if not domain.available:
        raise ValueError(f"DomainEval is {domain.why}: the agreement needs the judge")
    t0 = time.time()
    val_items, test_items = load_items(settings.check())
    flops = FlopsTable(generator)
    grid = grid_schedules(generator, levers.first, settings.grid_ratios, allow_drop=levers.allow_drop)
    fastvar = generator.flops_fraction(schedule_ratios(FastVARSchedule(), generator.num_scales))
    plans = plan_budgets(grid, flops, tuple(settings.budgets), fastvar, settings.max_schedules, settings.subset,
                         settings.sample_seed)
    union = list(dict.fromkeys(s for p in plans for s in p.schedules))
    for p in plans:
        log(f"budget {p.token} ({p.fraction:.3f} of the transformer FLOPs): {p.n_fit} of {len(grid)} grid schedules "
            f"fit, {len(p.schedules)} evaluated" + (f" ({settings.subset} subset)" if len(p.schedules) < p.n_fit else ""))
    generate_references(generator, val_items[:1], 1)  # warm-up: the first call's set-up is not a per-image cost
    t = time.time()
    refs = generate_references(generator, val_items, settings.batch_size)
    per_image = (time.time() - t) / len(val_items)
    scorer = QualityScorer(reward_fn, refs, [p for p, _ in val_items])
    grid_cache = GridCache(settings.cache_dir, generator.fingerprint(), val_items, scorer.identity())
    val_judge, test_judge = (judge_cache(settings.cache_dir, generator, it, domain) for it in (val_items, test_items))
    miss_q = sum(grid_cache.get(s) is None for s in union)
    todo = [s for s in union if grid_cache.get(s) is None or val_judge.get(s) is None]
    probe, t = todo[:CALIBRATION_SCHEDULES], time.time()
    evaluate_validation(generator, val_items, probe, scorer, grid_cache, val_judge, domain, settings.batch_size)
    per_schedule = (time.time() - t) / len(probe) if probe else GENERATION_SHARE * per_image * len(val_items)
    n_test_upper = min(2 * len(plans), sum(test_judge.get(s) is None for s in union))  # the choices are not known yet
    est = estimate_seconds(per_schedule, len(todo) - len(probe), len(val_items), n_test_upper, len(test_items))
    log(f"{len(union)} distinct schedules on {len(val_items)} validation items: {miss_q} need generation and QUALITY, "
        f"{len(todo) - miss_q} only the judge, {len(union) - len(todo)} are cached; {per_schedule:.1f} s per schedule "
        f"(measured on {len(probe) or 'no'} schedules{'' if probe else ', from the references'}): estimate "
        f"~{est / 60:.1f} min more (at most {n_test_upper} new schedules on the {len(test_items)} test items)")
    facts = {"grid_size": len(grid), "fastvar_transformer_fraction": fastvar, "val_items": len(val_items),
             "test_items": len(test_items), "distinct_schedules": len(union), "estimate_s": round(est, 1),
             "seconds_per_schedule": per_schedule, "val_missing_quality": miss_q, "val_missing": len(todo)}
    if estimate_only:
        return {"facts": facts, "budgets": [], "examples": []}
    val_res = evaluate_validation(generator, val_items, union, scorer, grid_cache, val_judge, domain, settings.batch_size)
    widths = tuple(generator.scale_widths)
    budgets = [summarise_budget(p, val_res, flops, widths) for p in plans]
    chosen = list(dict.fromkeys(s for b in budgets for s in b["_choice_schedules"]))
    test_res = GridEvaluator(generator, test_items, [TestPassScorer(domain, [p for p, _ in test_items])], cache=test_judge,
                             batch_size=settings.batch_size).evaluate(chosen, label="choices on the test items")
    for b in budgets:
        add_test_scores(b, test_res, [p for p, _ in test_items])
    fig_token = settings.figure_budget or settings.budgets[0]
    fig_plan = next(p for p in plans if p.token == fig_token)
    examples = disagreement_examples(generator, domain, fig_plan, val_res, flops, refs, val_items, settings.figure_pairs,
                                     settings.figure_items)
    facts.update(wall_clock_s=round(time.time() - t0, 1), figure_budget=fig_token, figure_fraction=fig_plan.fraction,
                 test_schedules=len(chosen))
    return {"facts": facts, "budgets": budgets, "examples": examples}


# ---- outputs ----------------------------------------------------------------------------------------

def result_json(result: dict, settings: AgreementSettings, levers: Levers, generator_fingerprint: str) -> dict:
    """The JSON record: settings, levers, facts, every budget's summary and the figure's pairs (no images)."""
    pairs = [{"discordance": e["discordance"], "items": [list(it) for it in e["items"]],
              "schedules": [schedule_key(x["schedule"]) for x in e["shown"]],
              "val_quality": [x["val_quality"] for x in e["shown"]],
              "val_attribute": [x["val_attribute"] for x in e["shown"]]} for e in result["examples"]]
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()}
    return jsonable({"what": "Kendall tau between the reward's QUALITY and DomainEval attribute accuracy over static grid "
                            "schedules within each transformer-FLOPs budget (validation), and the DomainEval regret "
                            "(test) of choosing by QUALITY: judge's choice minus reward's choice, prompt-clustered",
                    "settings": cfg, "levers": levers.__dict__, "generator": generator_fingerprint,
                    "facts": result["facts"], "budgets": result["budgets"], "figure_pairs": pairs})


def markdown_table(budgets: list[dict]) -> str:
    """budget | n schedules | tau | p | regret +- CI | reward's choice | judge's choice."""
    def choice(c: dict) -> str:
        return (f"`{c['schedule']}` ({c['transformer_fraction']:.3f}; val Q {c['val_quality']:.3f}, attr "
                f"{c['val_attribute']:.3f}; test attr {c['test_attribute']:.3f})")

    def num(x: float, fmt: str) -> str:
        return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)

    lines = ["τ: Kendall τ-b of QUALITY vs DomainEval attribute over the budget's schedules (validation); regret: "
             "DomainEval attribute on test of the judge's choice minus the reward's choice (prompt-clustered 95 % CI; "
             "> 0 = choosing by QUALITY loses attribute accuracy). Budgets: fractions of the transformer FLOPs.", "",
             "| budget | n schedules | τ | p | regret ± CI | reward's choice | judge's choice |",
             "|---|---|---|---|---|---|---|"]
    for b in budgets:
        n = f"{b['n_schedules']}" + ("" if b["n_schedules"] == b["n_fit"] else f" of {b['n_fit']}")
        r = b["regret"]
        reg = f"{num(r['mean_diff'], '+.3f')} ± {num(r['ci95'], '.3f')}"
        lines.append(f"| {b['budget']} ({b['transformer_fraction']:.3f}) | {n} | {num(b['tau'], '+.2f')} | "
                     f"{num(b['p'], '.3g')} | {reg} | {choice(b['reward_choice'])} | {choice(b['judge_choice'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, record: dict, table: str, png: bytes | None) -> list[Path]:
    """agreement.json, agreement.md and disagreement.png (when given) in ``out``, each written atomically."""
    from generator.weights_io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    paths = [out / "agreement.json", out / "agreement.md"]
    atomic_write_json(paths[0], record)
    atomic_write_bytes(paths[1], table.encode())
    if png is not None:
        paths.append(out / "disagreement.png")
        atomic_write_bytes(paths[2], png)
    return paths
