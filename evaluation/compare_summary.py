"""Compare mode's last stages: the summary (prompt-clustered statistics per method, the static search's
evidence next to the rows it supports, paired comparisons) and the report files.

The summary is ``summary.json``; ``evaluation.report`` renders its tables and the Pareto plot.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluation.compare_plan import AgentRow, ComparePlan, GenerationSettings, agent_suffix

#: the metrics every paired comparison reports (a - b, prompt-clustered)
PAIRED_METRICS = ("domain_attribute", "domain_scene", "ssim", "clip_score", "lpips", "psnr", "quality", "reward",
                  "flops_fraction", "total_flops_fraction")

STATISTICS_NOTE = ("mean over the seeds of each prompt, then a t interval (95%) / one-sample t test and Wilcoxon "
                   "signed-rank over the prompt means; n = prompts")
FLOPS_NOTE = ("flops_fraction = transformer FLOPs / unpruned transformer FLOPs (what the env's reward counts); "
              "total_flops_fraction adds the VQ decoder and the text encoder (the image's whole compute) to both")
DOMAIN_ATTRIBUTE_NOTE = ("per image, the fraction of the prompt's checks of that attribute that hold (scene: 1 iff "
                         "every check holds and nothing extra is seen); the mean of each prompt's seeds, then the mean and a 95% "
                         "t interval over prompts")
DISTRIBUTION_NOTE = ("on the metric suite's CLIP image embeddings (unit norm): frechet_distance_to_original = Fréchet "
                     "distance between the method's images and Original's on the same items; seed_diversity = mean "
                     "over prompts of the mean cosine distance (1 - cos) between the images of that prompt's seeds "
                     "(None with one seed). With a few hundred images the covariances are rank-deficient, so the "
                     "distance is RELATIVE at this sample size: compare the methods with each other, not with "
                     "published FIDs")
QUALITY_NOTE = ("quality = the reward's quality terms only (CLIP-score change, 1 - SSIM, LPIPS, PSNR with the run's "
                "weights): no FLOPs bonus, no budget penalty; reward = the run's episode reward (FLOPs bonus + "
                "quality - budget penalty), shown for reference")


def summary_header(plan: ComparePlan, generator, suite, domain) -> dict:
    """What was compared and how: runs, items, FLOPs constants, what is unavailable, the notes."""
    items = plan.items
    return {"runs": [str(r.path) for r in plan.runs], "prompts": items.test_source,
            "num_prompts": len(items.test_prompts), "seeds": items.seeds, "num_images": len(items.test),
            "latency_images": min(plan.request.generation.latency_images, len(items.test)),
            "search_prompts": items.search_source, "search_items": len(items.search),
            "unavailable": suite.unavailable(), "flops_full": generator.flops_full(),
            "decode_flops": generator.decode_flops(), "text_flops": generator.text_flops(),
            "domain_eval": "available" if domain.available else domain.why,
            "statistics": STATISTICS_NOTE, "flops_note": FLOPS_NOTE, "quality_note": QUALITY_NOTE,
            "methods": {}, "paired": {}, "static_search": {}, "static_frontier": []}


def domain_attribute_keys() -> list[tuple[str, str]]:
    """(attribute, per-image metric) of DomainEval's breakdown: the judge's ATTRIBUTES, then the scene."""
    from judge import ATTRIBUTES

    return [(a, f"domain_{a}") for a in ATTRIBUTES] + [("scene", "domain_scene")]


def method_summaries(methods: dict, per_method: dict[str, list[dict]], distribution: dict | None = None) -> dict:
    """Per method: kind, note, upper-bound flag (and, for an oracle, what it bounds), prompt-clustered
    metrics (Original's PSNR against itself is infinite), DomainEval per attribute (where the judge
    scored the images) and the distribution measures (where computed)."""
    from evaluation.scoreboard import ALL_ORACLE_KINDS, summarize_rows

    out = {}
    for name, rows in per_method.items():
        m = methods[name]
        out[name] = {"kind": m.kind, "note": m.note, "upper_bound": m.kind == "oracle", "metrics": summarize_rows(rows)}
        if m.kind == "oracle" and m.oracle_kind is not None:
            out[name].update(oracle_kind=m.oracle_kind, bounds=ALL_ORACLE_KINDS[m.oracle_kind][1])
        if name == "original" and "psnr" in out[name]["metrics"]:
            out[name]["metrics"]["psnr"].update(mean=float("inf"), ci95=float("nan"))
        if "domain_attribute" in out[name]["metrics"]:
            metrics = out[name]["metrics"]
            out[name]["domain_per_attribute"] = {a: metrics[k] for a, k in domain_attribute_keys() if k in metrics}
        if distribution is not None and name in distribution:
            out[name]["distribution"] = distribution[name]
    return out


def add_static_evidence(summary: dict, static, methods: dict, generator, items: list[tuple[str, int]]) -> None:
    """The static search per target, the evidence inside the best-static / oracle rows it supports, and
    the static frontier with each schedule's test values (where the test pass ran it)."""
    from evaluation.scoreboard import ORACLE_KINDS, QUALITY_METRICS, summarize_rows

    widths = tuple(generator.scale_widths)
    for label, res in static.search.items():
        summary["static_search"][label] = res.to_dict(widths)
    for label, by_kind in static.oracles.items():
        for kind, choice in by_kind.items():
            summary["static_search"][label][f"{kind}_schedules_used"] = len(set(choice.values()))
    for name, m in methods.items():  # the evidence next to the row it supports
        if m.static_label is None:
            continue
        label = m.static_label
        res = static.search[label]
        if m.kind == "best_static":
            summary["methods"][name]["search"] = summary["static_search"][label]
        else:
            how, bound = ORACLE_KINDS[m.oracle_kind]
            summary["methods"][name]["oracle"] = {
                "kind": m.oracle_kind, "target_total_fraction": res.target_total_fraction, "chosen_on": how,
                "bounds": bound, "candidates": static.info["oracle_candidates"][label],
                "levers": static.info["levers"][label],
                "distinct_schedules_used": len(set(static.oracles[label][m.oracle_kind].values())), "upper_bound": True}
    guided = [bool(generator.uses_unconditional(k)) for k in range(generator.num_scales)]
    for s, tot, vq in static.frontier:
        t = static.test_results.get(s)
        tf = generator.flops_fraction(list(s.ratios), s.unconditional_flags(guided))
        entry = {"schedule": s.describe(widths), "transformer_fraction": tf, "total_fraction": tot, "val_quality": vq}
        if t is not None:
            entry["test"] = summarize_rows([{"prompt": p, "seed": sd, **{m: float(v[i]) for m, v in t.items()}}
                                            for i, (p, sd) in enumerate(items)],
                                           QUALITY_METRICS + tuple(k for k in t if k.startswith("domain_")))
        summary["static_frontier"].append(entry)


def budget_rows(agents: list[AgentRow]) -> list[dict]:
    """Per agent row: its run, budget and the names of its agent (``"n/a: WHY"`` where the budget is outside
    the run's trained range: no images), best-static, oracle (in-sample, cross-validated, per-image) and
    random rows; ``agent_row`` is the agent row's name either way."""
    out = []
    for row in agents:
        suffix = agent_suffix(row.name, len(agents))
        out.append({"agent": row.name if row.na is None else f"n/a: {row.na}", "agent_row": row.name,
                    "run": str(row.run.path), "budget": row.budget,
                    "best_static": "best_static" + suffix, "oracle": "oracle" + suffix, "oracle_cv": "oracle_cv" + suffix,
                    "oracle_image": "oracle_image" + suffix, "nb_oracle_cv": "nb_oracle_cv" + suffix,
                    "nb_oracle_image": "nb_oracle_image" + suffix, "random": "random" + suffix})
    return out


#: the oracles the share of the best-static -> oracle gap is computed against: first the one a per-prompt
#: controller can reach, then the in-sample one (labelled as such in the table)
GAP_ORACLES = ("oracle_cv", "oracle")
GAP_METRICS = ("domain_attribute", "domain_scene", "ssim", "quality")


def gap_captured(methods: dict, entry: dict) -> dict:
    """Per oracle of ``GAP_ORACLES`` present, per metric of ``GAP_METRICS``: the share of the best-static ->
    oracle gap the agent captures, (agent - static) / (oracle - static) on the prompt-clustered means;
    None where the oracle is not above the best static schedule."""
    out = {}
    for ref in GAP_ORACLES:
        rows = [methods.get(entry[x], {}).get("metrics", {}) for x in ("agent", "best_static", ref)]
        if not all(rows):
            continue
        out[ref] = {}
        for k in GAP_METRICS:
            if all(k in r for r in rows):
                a, st, orc = (r[k]["mean"] for r in rows)
                out[ref][k] = (a - st) / (orc - st) if orc - st > 1e-12 else None
    return out


def paired_comparisons(agents: list[AgentRow], per_method: dict[str, list[dict]]) -> dict:
    """Prompt-clustered paired comparisons: each agent vs FastVAR and its static baselines, runs at the same
    budget against each other (ablations), and the static baselines at FastVAR's FLOPs vs FastVAR."""
    from evaluation.scoreboard import paired_rows

    num_rows = len(agents)  # the baselines' names count every agent row, n/a ones included
    agents = [row for row in agents if row.na is None]  # n/a rows have no images to pair
    out = {}
    for row in agents:
        suffix = agent_suffix(row.name, num_rows)
        for other in ("fastvar", "best_static" + suffix, "best_static@fastvar", "oracle_cv" + suffix, "oracle" + suffix,
                      "nb_oracle_cv" + suffix, "nb_oracle_image" + suffix):
            if other in per_method:
                out[f"{row.name} vs {other}"] = paired_rows(per_method[row.name], per_method[other], PAIRED_METRICS)
    for i, a in enumerate(agents):  # ablations: runs at the same budget, paired
        for b in agents[i + 1:]:
            if a.run.path != b.run.path and a.budget == b.budget:
                out[f"{a.name} vs {b.name}"] = paired_rows(per_method[a.name], per_method[b.name], PAIRED_METRICS)
    for other in ("best_static@fastvar", "oracle_cv@fastvar", "oracle@fastvar"):
        if other in per_method:
            out[f"{other} vs fastvar"] = paired_rows(per_method[other], per_method["fastvar"], PAIRED_METRICS)
    return out


def generation_note(settings: GenerationSettings) -> dict:
    """How the images were made and what the latency column measures."""
    batch, workers = settings.batch_size, settings.workers
    note = ("latency_ms per image: batch 1 as deployed" if batch == 1 and not workers
            else f"latency_ms per image: the wall clock of a batch of {batch} divided by its size"
            + (f", measured inside each of {workers} Ray workers" if workers else ""))
    return {"batch_size": batch, "workers": workers, "latency_note": note}


def oracle_header(static) -> dict:
    """What each oracle is chosen on and bounds, and which were left out (with why)."""
    from evaluation.scoreboard import ALL_ORACLE_KINDS

    return {"chosen_on": {k: how for k, (how, _) in ALL_ORACLE_KINDS.items()},
            "bounds": {k: bound for k, (_, bound) in ALL_ORACLE_KINDS.items()},
            "gap_reference": "oracle_cv (the in-sample figure is shown beside it, labelled)",
            "left_out": {} if static is None else static.info.get("oracles_left_out", {})}


def build_summary(plan: ComparePlan, models, suite, methods: dict, per_method: dict[str, list[dict]], static,
                  distribution: dict | None = None) -> dict:
    """``summary.json`` (without the wall clock, which the caller adds last); ``distribution``: per method,
    ``compare.distribution_measures``."""
    summary = summary_header(plan, models.generator, suite, models.domain)
    summary["grid"] = {} if static is None else static.info
    summary["oracles"] = oracle_header(static)
    if models.domain.available:
        summary["domain_per_attribute_note"] = DOMAIN_ATTRIBUTE_NOTE
    if distribution is not None:
        summary["distribution_note"] = DISTRIBUTION_NOTE
        summary["distribution_features"] = f"CLIP image embeddings ({getattr(suite.clip, 'name', 'the suite CLIP')})"
    summary["methods"] = method_summaries(methods, per_method, distribution)
    if static is not None:
        add_static_evidence(summary, static, methods, models.generator, plan.items.test)
        for row in models.agents:  # what each agent row's target is: its images' mean, or its budget where it is n/a
            if row.name in summary["static_search"]:
                summary["static_search"][row.name]["target_from"] = (
                    "the agent's mean total FLOPs" if row.na is None else
                    f"the budget {row.budget:g} (transformer) as a total fraction: the agent is n/a ({row.na})")
    summary["budgets"] = budget_rows(models.agents)
    for entry in summary["budgets"]:
        entry["gap_captured"] = gap_captured(summary["methods"], entry)
    summary["paired"] = paired_comparisons(models.agents, per_method)
    summary["generation"] = generation_note(plan.request.generation)
    return summary


def write_report(summary: dict, per_method: dict[str, list[dict]], methods: dict, items: list[tuple[str, int]],
                 out: Path, json_path: Path | None, grid_prompts: int) -> None:
    """Print the tables; write OUT/table.md, per_image.csv, summary.json (and ``json_path``), pareto.png and
    grid.png (the first ``grid_prompts`` prompts at the first seed, one column per method)."""
    from evaluation.report import (
        budget_table, distribution_table, domain_attribute_table, frontier_table, image_grid, markdown_table, pareto_plot,
        quality_only_table, static_search_lines, write_csv,
    )
    from generator.weights_io import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    table = "\n\n".join(x for x in [markdown_table(summary), domain_attribute_table(summary), distribution_table(summary),
                                     quality_only_table(summary), budget_table(summary), static_search_lines(summary),
                                     frontier_table(summary)] if x)
    print(table)
    atomic_write_bytes(out / "table.md", (table + "\n").encode())
    write_csv([row for rows in per_method.values() for row in rows], out / "per_image.csv")
    atomic_write_json(out / "summary.json", summary)
    if json_path is not None:
        atomic_write_json(json_path, summary)
    pareto_plot(summary, out / "pareto.png")
    first_seed = summary["seeds"][0]
    grid_idx = [i for i, (_, s) in enumerate(items) if s == first_seed][:grid_prompts]
    images: dict[str, list[torch.Tensor]] = {k: [m.images[i] for i in grid_idx] for k, m in methods.items()}
    image_grid(images, [items[i][0] for i in grid_idx], out / "grid.png")
    print(f"\nwrote {out}/table.md, per_image.csv, summary.json, pareto.png, grid.png ({summary['wall_clock_s']} s)")
