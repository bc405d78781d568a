"""The GenEval table (``evaluate_agent.py --geneval``): GenEval's scores per method, overall and per tag,
side by side with FLOPs, latency and preference scores, each with a 95% CI, and paired comparisons
against the first method.

Images of one prompt are not independent (same prompt, one detector verdict pattern), so every CI here is
a bootstrap over prompts (stratified by tag, as the tag sizes are fixed by design) and every paired test
a sign-flip randomisation test over prompts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from evaluation.geneval import GENEVAL_TAGS, GenEvalError
from evaluation.geneval_results import GenEvalImage, GenEvalMethod, load_method, score_images
from generator.weights_io import atomic_write_bytes, atomic_write_json

N_BOOTSTRAP = 2000
N_SIGNFLIP = 20000
EXACT_SIGNFLIP_MAX = 16  # up to this many prompts that differ, the sign-flip p-value is enumerated exactly


# ---- statistics -----------------------------------------------------------------------------------
def signflip_p(d_P: np.ndarray, w_P: np.ndarray, n_random: int = N_SIGNFLIP, seed: int = 0) -> float:
    """Two-sided p of ``sum(w * d)`` under independent sign flips of each prompt's difference ``d``.

    Exact (all 2^K sign patterns) when K <= EXACT_SIGNFLIP_MAX prompts differ, else ``n_random`` random
    patterns with the (1 + hits) / (1 + n) estimate. Prompts with d = 0 do not move the statistic.
    """
    nz = d_P != 0
    x = (d_P * w_P)[nz]
    if x.size == 0:
        return 1.0
    obs = abs(float(x.sum()))
    tol = 1e-12 * max(1.0, float(np.abs(x).sum()))
    if x.size <= EXACT_SIGNFLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=x.size)))
        return float(np.mean(np.abs(signs @ x) >= obs - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_random, 2000):  # in chunks: 553 GenEval prompts x 20,000 patterns would be 88 MB
        signs = rng.choice(np.array([1.0, -1.0]), size=(min(2000, n_random - start), x.size))
        hits += int(np.sum(np.abs(signs @ x) >= obs - tol))
    return float((1 + hits) / (1 + n_random))


def _interval(samples: np.ndarray, defined: bool = True) -> list[float] | None:
    """2.5th and 97.5th percentiles; None where resampling cannot vary (a tag with a single prompt)."""
    if not defined:
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass
class _Design:
    """Prompts (shared by every method) grouped by tag, and one set of stratified bootstrap resamples."""

    keys: list[str]
    tags: list[str]  # tags in table order
    groups: list[np.ndarray]  # prompt indices of each tag
    n_P: np.ndarray  # images per prompt
    resamples: list[np.ndarray]  # per tag: (B, P_t) prompt indices

    @property
    def all_resampled(self) -> np.ndarray:
        return np.concatenate(self.resamples, axis=1)


def _design(reference: GenEvalMethod, n_boot: int, seed: int) -> _Design:
    order: dict[str, str] = {}
    counts: dict[str, int] = {}
    for img in reference.images:
        order.setdefault(img.key, img.tag)
        counts[img.key] = counts.get(img.key, 0) + 1
    present = list(dict.fromkeys(order.values()))
    tags = [t for t in GENEVAL_TAGS if t in present] + [t for t in present if t not in GENEVAL_TAGS]
    first_seen = {k: i for i, k in enumerate(order)}
    keys = sorted(order, key=lambda k: (tags.index(order[k]), first_seen[k]))
    groups = [np.array([i for i, k in enumerate(keys) if order[k] == t]) for t in tags]
    rng = np.random.default_rng(seed)
    resamples = [g[rng.integers(0, len(g), size=(n_boot, len(g)))] for g in groups]
    return _Design(keys, tags, groups, np.array([counts[k] for k in keys], dtype=np.float64), resamples)


def _check_same_prompts(reference: GenEvalMethod, other: GenEvalMethod) -> None:
    def per_prompt(m: GenEvalMethod) -> dict[str, tuple[str, set[int]]]:
        out: dict[str, tuple[str, set[int]]] = {}
        for img in m.images:
            out.setdefault(img.key, (img.prompt, set()))[1].add(img.sample)
        return out

    a, b = per_prompt(reference), per_prompt(other)
    only_a, only_b = [a[k][0] for k in a if k not in b], [b[k][0] for k in b if k not in a]
    if only_a or only_b:
        raise GenEvalError(f"methods {reference.name!r} and {other.name!r} were scored on different prompts: "
                           f"{len(only_a)} only in {reference.name!r} (e.g. {only_a[:2]}), {len(only_b)} only in "
                           f"{other.name!r} (e.g. {only_b[:2]}); generate both from the same metadata file")
    for k, (prompt, samples) in a.items():
        if b[k][1] != samples:
            raise GenEvalError(f"prompt {prompt!r}: {reference.name!r} has images {sorted(samples)}, {other.name!r} "
                               f"has {sorted(b[k][1])}; generate both with the same --images-per-prompt")


def _per_prompt_sums(method: GenEvalMethod, design: _Design, value: Callable[[GenEvalImage], float | None]) -> np.ndarray | None:
    index = {k: i for i, k in enumerate(design.keys)}
    s_P = np.zeros(len(design.keys))
    for img in method.images:
        v = value(img)
        if v is None:
            return None
        s_P[index[img.key]] += v
    return s_P


def _tag_stats(c_P: np.ndarray, design: _Design) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    """Per-tag accuracy, overall (mean over tags), and their bootstrap samples (tags x B) and (B,)."""
    acc = {t: float(c_P[g].sum() / design.n_P[g].sum()) for t, g in zip(design.tags, design.groups)}
    boot_TB = np.stack([c_P[r].sum(-1) / design.n_P[r].sum(-1) for r in design.resamples])
    return acc, float(np.mean(list(acc.values()))), boot_TB, boot_TB.mean(0)


def _mean_stats(s_P: np.ndarray, design: _Design) -> tuple[float, np.ndarray]:
    """Mean over images of a per-image value (from per-prompt sums) and its bootstrap samples (B,)."""
    r = design.all_resampled
    return float(s_P.sum() / design.n_P.sum()), s_P[r].sum(-1) / design.n_P[r].sum(-1)


def tabulate(methods: list[GenEvalMethod], scores: dict[str, dict[str, dict[tuple[str, int], float]]] | None = None,
             n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """The GenEval table: per method overall + per tag with 95% CIs, costs, extra per-image scores, and
    paired comparisons against ``methods[0]``. ``scores[method][metric][(key, sample)]`` adds e.g. HPSv2."""
    if not methods:
        raise GenEvalError("no --geneval methods given")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise GenEvalError(f"--geneval names must differ, got {names}")
    ref = methods[0]
    for m in methods[1:]:
        _check_same_prompts(ref, m)
    scores = scores or {}
    design = _design(ref, n_boot, seed)
    summary: dict = {"reference": ref.name, "tags": design.tags, "num_prompts": len(design.keys),
                     "num_images": int(design.n_P.sum()),
                     "prompts_per_tag": {t: int(len(g)) for t, g in zip(design.tags, design.groups)},
                     "ci": f"95% percentile bootstrap over prompts, stratified by tag, {n_boot} resamples",
                     "test": "two-sided sign-flip randomisation test over prompts (exact up to "
                             f"{EXACT_SIGNFLIP_MAX} differing prompts, else {N_SIGNFLIP} random flips)",
                     "methods": {}, "paired": {}, "notes": [n for m in methods for n in m.notes]}
    tag_ok = {t: len(g) >= 2 for t, g in zip(design.tags, design.groups)}
    all_ok = all(tag_ok.values())
    if not all_ok:
        summary["notes"].append("no CI where a tag has a single prompt (resampling one prompt cannot vary): "
                                + ", ".join(t for t, ok in tag_ok.items() if not ok))
    fingerprints = {m.fingerprint for m in methods if m.fingerprint}
    if len(fingerprints) > 1:
        summary["notes"].append(f"the methods' images come from {len(fingerprints)} different generator weights "
                                f"(config.json generator_fingerprint): is that intended?")
    boots: dict[str, dict] = {}
    for m in methods:
        c_P = _per_prompt_sums(m, design, lambda img: float(img.correct))
        acc, overall, tag_boot, overall_boot = _tag_stats(c_P, design)
        entry = {"results": str(m.results), "schedule": m.schedule, "overall": overall, "overall_ci": _interval(overall_boot, all_ok),
                 "tags": {t: {"score": acc[t], "ci": _interval(b, tag_ok[t]), "correct": int(c_P[g].sum()), "images": int(design.n_P[g].sum())}
                          for t, b, g in zip(design.tags, tag_boot, design.groups)},
                 "images_correct": float(c_P.sum() / design.n_P.sum()),
                 "prompts_any_correct": float(np.mean(c_P > 0)), "costs": {}, "scores": {}}
        boots[m.name] = {"c_P": c_P, "tag": tag_boot, "overall": overall_boot, "means": {}}
        measures = [(k, lambda img, m=m, k=k: m.costs.get((img.key, img.sample), {}).get(k)) for k in ("flops_fraction", "flops", "latency_ms")]
        measures += [(k, lambda img, v=v: v.get((img.key, img.sample))) for k, v in scores.get(m.name, {}).items()]
        for k, fn in measures:
            s_P = _per_prompt_sums(m, design, fn)
            if s_P is None:
                continue
            mean, b = _mean_stats(s_P, design)
            (entry["costs"] if k in ("flops_fraction", "flops", "latency_ms") else entry["scores"])[k] = {"mean": mean, "ci": _interval(b, all_ok)}
            boots[m.name]["means"][k] = (s_P, b)
        summary["methods"][m.name] = entry
    ref_costs = summary["methods"][ref.name]["costs"]
    for m in methods:
        c = summary["methods"][m.name]["costs"]
        for k, speed in (("flops", "flops_speedup"), ("latency_ms", "latency_speedup")):
            if k in c and k in ref_costs:
                c[speed] = ref_costs[k]["mean"] / c[k]["mean"]
    rb = boots[ref.name]
    total_images = design.n_P.sum()
    for m in methods[1:]:
        mb = boots[m.name]
        d_P = mb["c_P"] - rb["c_P"]
        w_overall = np.zeros(len(design.keys))
        for g in design.groups:
            w_overall[g] = 1.0 / (len(design.groups) * design.n_P[g].sum())
        rows = {"overall": {"diff": summary["methods"][m.name]["overall"] - summary["methods"][ref.name]["overall"],
                            "ci": _interval(mb["overall"] - rb["overall"], all_ok), "p": signflip_p(d_P, w_overall),
                            "prompts_better": int((d_P > 0).sum()), "prompts_worse": int((d_P < 0).sum())}}
        for t, g, bm, br in zip(design.tags, design.groups, mb["tag"], rb["tag"]):
            w = np.zeros(len(design.keys))
            w[g] = 1.0 / design.n_P[g].sum()
            rows[t] = {"diff": summary["methods"][m.name]["tags"][t]["score"] - summary["methods"][ref.name]["tags"][t]["score"],
                       "ci": _interval(bm - br, tag_ok[t]), "p": signflip_p(d_P * (w > 0), w),
                       "prompts_better": int((d_P[g] > 0).sum()), "prompts_worse": int((d_P[g] < 0).sum())}
        for k in mb["means"]:
            if k not in rb["means"]:
                continue
            (s_m, b_m), (s_r, b_r) = mb["means"][k], rb["means"][k]
            rows[k] = {"diff": float((s_m - s_r).sum() / total_images), "ci": _interval(b_m - b_r, all_ok),
                       "p": signflip_p(s_m - s_r, np.full(len(design.keys), 1.0 / total_images))}
        summary["paired"][f"{m.name} vs {ref.name}"] = rows
    return summary


# ---- the table ------------------------------------------------------------------------------------
def _f(x: float | None, nd: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def _ci(ci: list[float] | None, nd: int = 3) -> str:
    if ci is None:
        return "[n/a]"
    return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


SCORE_LABELS = {"hpsv2": "HPSv2", "image_reward": "ImageReward"}
MEASURE_LABELS = {**GENEVAL_TAGS, **SCORE_LABELS, "flops_fraction": "FLOPs fraction", "latency_ms": "latency ms"}


def geneval_markdown(summary: dict) -> str:
    """The side-by-side table and the paired comparisons, as Markdown."""
    tags = summary["tags"]
    score_names = list(dict.fromkeys(k for m in summary["methods"].values() for k in m["scores"]))
    head = (["method", "schedule", "overall"] + [GENEVAL_TAGS.get(t, t) for t in tags]
            + ["FLOPs frac", "FLOPs ×", "latency ms", "latency ×"] + [SCORE_LABELS.get(s, s) for s in score_names])
    lines = [f"GenEval: {summary['num_prompts']} prompts, {summary['num_images']} images per method; "
             f"{summary['ci']}; reference for × and Δ: {summary['reference']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        c = m["costs"]
        cells = [name, m["schedule"] or "?", f"**{_f(m['overall'])}** {_ci(m['overall_ci'], 2)}"]
        cells += [f"{_f(m['tags'][t]['score'])} {_ci(m['tags'][t]['ci'], 2)}" for t in tags]
        cells += [f"{_f(c['flops_fraction']['mean'])} {_ci(c['flops_fraction']['ci'])}" if "flops_fraction" in c else "n/a",
                  _f(c.get("flops_speedup"), 2), f"{_f(c['latency_ms']['mean'], 1)} {_ci(c['latency_ms']['ci'], 1)}"
                  if "latency_ms" in c else "n/a", _f(c.get("latency_speedup"), 2)]
        cells += [f"{_f(m['scores'][s]['mean'], 4)} {_ci(m['scores'][s]['ci'], 4)}" if s in m["scores"] else "n/a"
                  for s in score_names]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["paired"]:
        lines += ["", f"Paired against {summary['reference']} (same prompts and seeds): difference, 95% CI "
                      f"(bootstrap over prompts), p ({summary['test']}), prompts where it scores more / fewer images correct:", "",
                  "| comparison | measure | Δ | 95% CI | p | prompts better / worse |", "|---|---|---|---|---|---|"]
        for comp, rows in summary["paired"].items():
            for measure, r in rows.items():
                nd = 1 if measure == "latency_ms" else 4 if measure in SCORE_LABELS else 3
                label = MEASURE_LABELS.get(measure, measure)
                bw = f"{r['prompts_better']} / {r['prompts_worse']}" if "prompts_better" in r else ""
                if measure == "flops":
                    continue  # the fraction says the same, in readable units
                lines.append(f"| {comp} | {label} | {_f(r['diff'], nd, True)} | {_ci(r['ci'], nd)} | {_p(r['p'])} | {bw} |")
    lines += [""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines).rstrip() + "\n"


# ---- evaluate_agent.py --geneval ------------------------------------------------------------------
def geneval_mode(specs: list[str], out: Path | None = None, json_path: Path | None = None,
                 scorers: dict[str, Callable] | None = None, notes: list[str] | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Read every ``NAME=RESULTS[@IMAGES_DIR]``, print the table, write it (``out``/geneval_table.md and
    geneval_summary.json, and/or ``json_path``) atomically; returns the summary."""
    methods = [load_method(s) for s in specs]
    summary = tabulate(methods, score_images(methods, scorers or {}))
    summary["notes"] += list(notes or [])
    table = geneval_markdown(summary)
    log(table)
    if out is not None:
        atomic_write_bytes(Path(out) / "geneval_table.md", table.encode("utf-8"))
        atomic_write_json(Path(out) / "geneval_summary.json", summary)
        log(f"wrote {out}/geneval_table.md and {out}/geneval_summary.json")
    if json_path is not None:
        atomic_write_json(json_path, summary)
        log(f"wrote {json_path}")
    return summary


def run_geneval_mode(args, other_modes: bool) -> int:
    """``evaluate_agent.py --geneval ...``: reads ``args.geneval``, ``out``, ``json``, ``hpsv2_checkpoint``,
    ``image_reward``; errors are GenEvalError / HPSv2Unavailable (ValueError: the CLI exits 2)."""
    import sys

    if other_modes:
        raise GenEvalError("--geneval (GenEval mode) cannot be combined with --run or --orig/--fast/--rl/--method")
    scorers: dict[str, Callable] = {}
    notes = []
    if args.hpsv2_checkpoint is not None:
        from evaluation.preference import HPSv2Scorer

        scorers["hpsv2"] = HPSv2Scorer(args.hpsv2_checkpoint)
    if args.image_reward:
        from evaluation.metrics import load_image_reward

        ir, why = load_image_reward()
        if ir is None:
            notes.append(f"ImageReward {why}")
            print(f"note: ImageReward {why}; continuing without it", file=sys.stderr)
        else:
            scorers["image_reward"] = ir
    geneval_mode(args.geneval, args.out, args.json, scorers, notes=notes)
    return 0
