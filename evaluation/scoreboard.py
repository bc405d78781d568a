"""The compare mode's scoreboard: items and their checks, DomainEval through the independent judge,
per-image records, prompt-clustered summaries and paired tests, and the static baselines (best static
schedule per FLOPs target with the compared agent's levers, the static Pareto frontier, and the three
oracles of ``evaluation.oracles``: in-sample, cross-validated and per-image, see ``ORACLE_KINDS``).

Statistics: every CI and test is clustered by prompt — each prompt's seeds are averaged first, then a
t interval / one-sample t test (and Wilcoxon signed-rank) runs over the prompt means
(``rewards.stats.clustered_mean_ci`` / ``clustered_paired``). "n" in tables = prompts.

FLOPs: ``flops_fraction`` is the TRANSFORMER fraction (what the env's reward and FastVAR's 0.347 count);
``total_flops_fraction`` adds the VQ decoder and the text encoder (an image's whole compute). Claims
about an image's cost use the total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generator.protocol import total_fraction_of_used
from evaluation.grid_evaluation import validation_pass
from rewards.stats import clustered_mean_ci, clustered_paired

DOMAIN_METRICS = ("domain_attribute", "domain_scene")  # the headline columns (DomainEval)


# ---- items ------------------------------------------------------------------------------------------

# ---- DomainEval -------------------------------------------------------------------------------------

@dataclass
class DomainEval:
    """The independent judge (``judge.DomainJudge``: its own architecture and weights, trained
    on rendered scenes only, never on generated images, not the reward's CLIP) as a per-image scorer:
    ``domain_attribute`` (fraction of the prompt's attributes that hold), ``domain_scene`` (1 if every
    object and the background are right), ``domain_<attribute>`` breakdowns. ``judge`` None = unavailable
    (``why`` says why); it is never used to select anything."""

    judge: object | None
    why: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None, enabled: bool = True) -> "DomainEval":
        if not enabled:
            return cls(None, "not applicable (prompts outside the procedural domain)")
        try:
            import judge as judge_mod
        except ImportError as e:
            return cls(None, f"unavailable: the judge module is not installed here ({e})")
        from generator.weights_io import WeightsError

        try:
            weights = path if path is not None else judge_mod.JUDGE_WEIGHTS
            return cls(judge_mod.DomainJudge.load(weights, device="cpu"), "")
        except (FileNotFoundError, WeightsError) as e:
            if path is not None:  # an explicit path that does not work is an error, not a silent gap
                raise
            return cls(None, f"unavailable: {e}")

    @property
    def available(self) -> bool:
        return self.judge is not None

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, prompts: list[str]) -> dict[str, np.ndarray]:
        """Per image: domain_attribute, domain_scene and domain_<attribute> (NaN where a prompt names
        no such attribute), as float64 arrays of length B."""
        from generator.images import to_uint8

        scores = []
        for lo in range(0, images_B3HW.shape[0], 256):
            scores += self.judge.score(to_uint8(images_B3HW[lo:lo + 256]), list(prompts[lo:lo + 256]))
        if len(scores) != images_B3HW.shape[0]:
            raise RuntimeError(f"the judge returned {len(scores)} scores for {images_B3HW.shape[0]} images")
        out = {"domain_attribute": np.asarray([s.attribute_accuracy for s in scores], dtype=np.float64),
               "domain_scene": np.asarray([s.scene_accuracy for s in scores], dtype=np.float64)}
        for name in sorted({k for s in scores for k in s.per_attribute}):
            out[f"domain_{name}"] = np.asarray([s.per_attribute.get(name, np.nan) for s in scores], dtype=np.float64)
        return out


class TestPassScorer:
    """Per-image DomainEval scorer for the grid's test pass (``GridEvaluator`` scorer signature).
    (Not a test: ``__test__`` keeps pytest from collecting it.)"""

    __test__ = False

    def __init__(self, domain: DomainEval, prompts: list[str]) -> None:
        self.domain, self.prompts = domain, prompts

    def __call__(self, images_B3HW: torch.Tensor, sl: slice) -> dict[str, np.ndarray]:
        return self.domain(images_B3HW, self.prompts[sl])


# ---- per-image records ------------------------------------------------------------------------------

def state_record(generator, state, latency_s: float | None, b: int = 0) -> dict:
    """FLOPs (transformer and total) and decisions of image ``b`` of a generated state."""
    reps = state.image_reports(b)
    used = state.flops_used_per_image[b]
    return {"ratios": [r.ratio for r in reps],
            "dropped_cfg": [(not r.unconditional) and (not r.skipped) and bool(generator.uses_unconditional(r.scale_index))
                            for r in reps],
            "flops": used, "flops_fraction": used / generator.flops_full(),
            "total_flops_fraction": total_fraction_of_used(generator, used),
            "latency_ms": None if latency_s is None else 1000 * latency_s}


def reward_of(reward_config, quality: float, transformer_fraction: float, budget: float | None) -> float:
    """The run's episode reward from its quality terms: FLOPs bonus + quality - budget penalty, computed by
    the reward itself (``RewardConfig.episode_reward``, the formula the env's step and terminal rewards
    use; budget = the reward's fixed budget, or the episode budget of a budget-conditioned run)."""
    return reward_config.episode_reward(quality, transformer_fraction, budget)


# ---- summaries --------------------------------------------------------------------------------------

SUMMARY_METRICS = ("domain_attribute", "domain_scene", "flops_fraction", "total_flops_fraction", "flops", "latency_ms",
                   "psnr", "ssim", "lpips", "clip_score", "image_reward", "hpsv2", "quality", "reward")
HIGHER_IS_BETTER = {"domain_attribute": True, "domain_scene": True, "psnr": True, "ssim": True, "lpips": False,
                    "clip_score": True, "image_reward": True, "hpsv2": True, "quality": True, "reward": True,
                    "flops_fraction": False, "total_flops_fraction": False, "latency_ms": False}


def summarize_rows(rows: list[dict], metrics: tuple[str, ...] = SUMMARY_METRICS) -> dict:
    """Per metric: prompt-clustered mean, 95% CI half-width, n (prompts), n_images."""
    prompts = [r["prompt"] for r in rows]
    out = {}
    for m in metrics:
        vals = [r.get(m) for r in rows]
        if any(v is not None for v in vals):
            out[m] = clustered_mean_ci([None if v is None else float(v) for v in vals], prompts)
    attrs = sorted({k for r in rows for k in r if k.startswith("domain_") and k not in DOMAIN_METRICS})
    for k in attrs:
        out[k] = clustered_mean_ci([r.get(k) for r in rows], prompts)
    return out


def paired_rows(a: list[dict], b: list[dict], metrics: tuple[str, ...]) -> dict:
    """Prompt-clustered paired comparison a - b on the same items (wins = prompts where a is better)."""
    if [(r["prompt"], r["seed"]) for r in a] != [(r["prompt"], r["seed"]) for r in b]:
        raise ValueError("paired comparison needs the same items in the same order")
    prompts = [r["prompt"] for r in a]
    out = {}
    for m in metrics:
        x = [r.get(m) for r in a]
        y = [r.get(m) for r in b]
        if all(v is None for v in x) or all(v is None for v in y):
            continue
        sign = 1.0 if HIGHER_IS_BETTER.get(m, True) else -1.0
        c = clustered_paired([None if v is None else sign * float(v) for v in x],
                             [None if v is None else sign * float(v) for v in y], prompts)
        c["mean_diff"] *= sign  # the raw difference; wins count prompts where a is better
        out[m] = c
    return out


def finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---- static baselines -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Levers:
    """What a static schedule compared with an agent may change: exactly that agent's levers.
    ``first``: its first controllable scale (earlier scales run unpruned); ``drop_cfg``: whether it may
    drop the unconditional CFG branch (its run's ``allow_drop_unconditional``); ``skip_threshold``: the
    ratio from which its actions skip a scale (refinement turns such a ratio into a skip)."""

    first: int
    drop_cfg: bool
    skip_threshold: float = 0.9

    def describe(self, num_scales: int) -> str:
        return (f"scales {self.first}..{num_scales - 1}, CFG branch "
                + ("kept or dropped" if self.drop_cfg else "always kept (the agent may not drop it)"))

    def allows(self, schedule) -> bool:
        """Whether ``schedule`` (a ``StaticSchedule``) uses only these levers."""
        return (self.drop_cfg or not any(schedule.drop_uncond)) and not any(
            r > 0 or d for r, d in zip(schedule.ratios[:self.first], schedule.drop_uncond[:self.first]))


#: the oracles over one target's candidates: what each is chosen on, and what it bounds
ORACLE_KINDS = {
    "oracle": ("per test prompt, the candidate best on that prompt's own test images, scored on the same images "
               "(in-sample)", "UPPER BOUND that includes seed noise (the maximum of noisy estimates): no method can "
               "reach all of it"),
    "oracle_cv": ("for the image of prompt p at seed k, the candidate best on prompt p's other seeds, scored on seed k "
                  "(leave one seed out, rotating): its choice never sees the image it is scored on",
                  "UPPER BOUND on what a per-prompt controller choosing among these candidates can reach"),
    "oracle_image": ("per test image, the candidate best on that image itself",
                     "UPPER BOUND on choosing per image among these candidates; includes seed noise"),
}
#: the oracles over a frontier-based run's neighbourhood (``evaluation.frontier_build.neighbourhood``: the
#: run's frontier schedule for the budget and its grid one-move neighbours that fit it), the go / no-go of #25
NEIGHBOURHOOD_KINDS = {
    "nb_oracle_cv": ("for the image of prompt p at seed k, the neighbourhood candidate best on prompt p's other seeds, "
                     "scored on seed k (leave one seed out, rotating)",
                     "CEILING of a residual policy choosing one move away from the frontier per prompt"),
    "nb_oracle_image": ("per test image, the neighbourhood candidate best on that image itself",
                        "CEILING of a residual policy choosing one move away from the frontier per image, with perfect "
                        "knowledge of the image; includes seed noise"),
}
#: every oracle kind a scoreboard row may have: (what it is chosen on, what it bounds)
ALL_ORACLE_KINDS = {**ORACLE_KINDS, **NEIGHBOURHOOD_KINDS}
#: above this many grid schedules within the largest target the static search uses the frontier pool
EXHAUSTIVE_LIMIT = 600
ONE_SEED_NOTE = "left out: the cross-validated oracle needs >= 2 seeds per prompt (run with --seeds 0 1 ...)"


def oracle_choices(quality: dict, items: list[tuple[str, int]], candidates: list,
                   kinds: tuple[str, ...] = tuple(ORACLE_KINDS)) -> tuple[dict, dict]:
    """Each oracle of ``kinds`` (keys of ``ORACLE_KINDS``) over ``candidates`` ranked by ``quality[schedule]``
    (per test item): ({kind: {item: schedule}}, {kind: why it is left out}). With one seed per prompt the
    cross-validated oracle is left out (not an error)."""
    from evaluation.oracles import ORACLES

    seeds_per_prompt = min(sum(1 for q, _ in items if q == p) for p, _ in items)
    chosen, left_out = {}, {}
    for kind in kinds:
        if kind == "oracle_cv" and seeds_per_prompt < 2:
            left_out[kind] = ONE_SEED_NOTE
            continue
        chosen[kind] = ORACLES[kind](quality, items, candidates)
    return chosen, left_out


@dataclass
class StaticBaselines:
    """Best static schedule per total-FLOPs target (chosen on validation by QUALITY, with the levers of
    the agent it is compared with), the static Pareto frontier (chosen on validation, evaluated on test)
    and the oracles of ``ORACLE_KINDS`` (chosen with test images: upper bounds), all over one grid
    (``evaluation.static_search``, generated by ``evaluation.grid_evaluation``).

    targets: {label: total FLOPs fraction}; the grid is evaluated on validation up to the largest target
    (schedules above it are never generated) and, for the oracles, on the test items up to it too.
    """

    search: dict            # label -> StaticSearchResult
    frontier: list          # [(schedule, total fraction, val quality)] sorted by FLOPs
    oracles: dict           # label -> {kind: {(prompt, seed): schedule}}
    test_results: dict      # schedule -> {metric: per-test-item array} (the test pass)
    info: dict              # sizes, timings, levers and left-out oracles for the summary
    levers: dict            # label -> Levers


def _test_evaluator(generator, test_items: list[tuple[str, int]], test_refs_B3HW: torch.Tensor, reward_fn,
                    domain: DomainEval, cache_dir: Path | None, batch_size: int):
    """The test pass: QUALITY and (where the judge is available) DomainEval of schedules on the test items."""
    from evaluation.grid_evaluation import GridCache, GridEvaluator, QualityScorer, module_fingerprint

    test_prompts = [p for p, _ in test_items]
    scorers = [QualityScorer(reward_fn, test_refs_B3HW, test_prompts)]
    scorer_id = scorers[0].identity()
    if domain.available:
        scorers.append(TestPassScorer(domain, test_prompts))
        scorer_id = {**scorer_id, "domain": module_fingerprint(getattr(domain.judge, "net", domain.judge))}
    return GridEvaluator(generator, test_items, scorers, batch_size=batch_size,
                         cache=GridCache(cache_dir, generator.fingerprint(), test_items, scorer_id))


def _oracle_pools(targets: dict[str, float], levers: dict[str, Levers], fits: list, total, val_q: dict,
                  searches: dict, oracle_candidates: int) -> dict[str, list]:
    """Per target, the oracles' candidates: the grid schedules within the target that its levers allow
    (the ``oracle_candidates`` best on validation where that is > 0), plus the best static schedule."""
    pools = {}
    for label, target in targets.items():
        pool = [s for s in fits if total(s) <= target + 1e-12 and levers[label].allows(s)]
        if oracle_candidates and len(pool) > oracle_candidates:
            pool = sorted(pool, key=lambda s: -val_q[s])[:oracle_candidates]
        best = searches[label].schedule
        pools[label] = list(dict.fromkeys(pool + ([best] if total(best) <= target + 1e-12 else [])))
    return pools


def build_static_baselines(generator, targets: dict[str, float], levers: dict[str, Levers],
                           val_items: list[tuple[str, int]], test_items: list[tuple[str, int]],
                           test_refs_B3HW: torch.Tensor, reward_fn, domain: DomainEval, refine_rounds: int, oracle: bool,
                           cache_dir: Path | None, grid_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
                           batch_size: int = 100, oracle_candidates: int = 0, log=print) -> StaticBaselines:
    """The static baselines of every target, each searched with ``levers[label]`` (the compared agent's:
    no CFG-dropping schedule where that agent may not drop the branch). One grid serves every target:
    the CFG-drop options are in it only if some target's levers allow them."""
    import time

    from evaluation.static_search import (GRID_RATIOS, FlopsTable, grid_schedules, guided_scales, pareto_frontier,
                                          search_best_static)

    if set(levers) != set(targets):
        raise ValueError(f"need levers for every target: targets {sorted(targets)}, levers {sorted(levers)}")
    firsts = {lv.first for lv in levers.values()}
    if len(firsts) != 1:
        raise ValueError(f"the compared agents control different scales (first controllable {sorted(firsts)}): "
                         "one static grid cannot give each its own levers; evaluate them separately")
    first, drop_any = firsts.pop(), any(lv.drop_cfg for lv in levers.values())
    t0 = time.time()
    flops = FlopsTable(generator)
    grid = grid_schedules(generator, first, ratios=grid_ratios, allow_drop=drop_any)
    top = max(targets.values())
    fits = [s for s in grid if flops.total(s) <= top + 1e-12]
    log(f"static grid: {len(grid)} schedules on scales {first}..{generator.num_scales - 1} "
        f"({{{', '.join(f'{r:g}' for r in grid_ratios)}}} x CFG {'kept/dropped' if drop_any else 'kept'} + skip); "
        f"{len(fits)} within the largest target ({top:.3f} of the total FLOPs)")
    if len(fits) > EXHAUSTIVE_LIMIT and tuple(grid_ratios) == GRID_RATIOS:
        # near-lossless targets let most of the grid through: search the frontier's shared pool instead
        # (exhaustive where few schedules fit, a greedy descent above; evaluation.frontier_build)
        from evaluation.frontier_build import FrontierSettings, build_pool

        val_eval, val_q, covers = build_pool(generator, reward_fn, first, val_items,
                                             FrontierSettings(allow_drop=drop_any, cache_dir=cache_dir,
                                                              batch_size=batch_size), log)
        fits = [s for s in val_q if flops.total(s) <= top + 1e-12]
        grid, space = list(val_q), f"the frontier pool ({covers['covers']})"
        log(f"static grid: over {EXHAUSTIVE_LIMIT} fit, so the frontier pool is searched: {covers['covers']} "
            f"({len(fits)} schedules within the largest target)")
    else:
        val_eval, val_q = validation_pass(generator, fits, val_items, reward_fn, cache_dir, batch_size)
        space = "the exhaustive grid"
    guided = guided_scales(generator)
    searches = {label: search_best_static(grid, flops.total, val_eval.mean_quality, target, first, guided,
                                          max_ratio=levers[label].skip_threshold, refine_rounds=refine_rounds,
                                          transformer_fraction=flops.transformer, known=val_q,
                                          allow_drop=levers[label].drop_cfg)
                for label, target in targets.items()}
    t_val = time.time() - t0
    pts = [(s, flops.total(s), q) for s, q in val_q.items()] + [(r.schedule, r.total_fraction, r.quality)
                                                                for r in searches.values()]
    frontier = pareto_frontier(list({p[0]: p for p in pts}.values()))

    test_eval = _test_evaluator(generator, test_items, test_refs_B3HW, reward_fn, domain, cache_dir, batch_size)
    t1 = time.time()
    pools = _oracle_pools(targets, levers, fits, flops.total, val_q, searches, oracle_candidates) if oracle else {}
    wanted = [s for pool in pools.values() for s in pool] + [f[0] for f in frontier] + [r.schedule for r in searches.values()]
    test_results = test_eval.evaluate(list(dict.fromkeys(wanted)), label="static schedules on the test items")
    oracles, left_out = {}, {}
    for label, pool in pools.items():
        oracles[label], left_out = oracle_choices({s: test_results[s]["quality"] for s in pool}, test_items, pool)
    n = generator.num_scales
    info = {"search_space": space, "grid_ratios": list(grid_ratios), "grid_size": len(grid), "grid_drops_cfg": drop_any,
            "grid_fitting_largest_target": len(fits), "largest_target_total_fraction": top,
            "levers": {label: lv.describe(n) for label, lv in levers.items()},
            "val_items": len(val_items), "val_schedules_generated": val_eval.generated, "val_seconds": round(t_val, 1),
            "test_schedules": len(set(wanted)), "test_schedules_generated": test_eval.generated,
            "test_seconds": round(time.time() - t1, 1), "oracle_candidates": {k: len(v) for k, v in pools.items()},
            "oracle_candidate_rule": ("every grid schedule within the target that the agent's levers allow"
                                      if not oracle_candidates else
                                      f"the {oracle_candidates} grid schedules within the target (and the agent's "
                                      "levers) that are best on validation, plus the best static schedule"),
            "oracles_left_out": left_out, "cache": None if cache_dir is None else str(cache_dir)}
    return StaticBaselines(searches, frontier, oracles, test_results, info, dict(levers))


QUALITY_METRICS = ("ssim", "psnr", "clip_score", "lpips", "quality")  # what the grid's QualityScorer records
