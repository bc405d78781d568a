"""The lossless selector on held-out items, in its own training signal (QUALITY loss and transformer FLOPs):

    python -m evaluation.lossless_test --run runs/selector_s0 [--prompts test --num-prompts 100 --seeds 0 1 2]

Per operating point epsilon: the selector's mean transformer FLOPs and QUALITY loss on the test items,
against the best static schedule at the same epsilon (the cheapest candidate whose VALIDATION mean loss
is within epsilon: the selector's own static option, from its fit report), with prompt-clustered 95 %
intervals of the paired differences (FLOPs saving, loss). Whether the saving holds on the judge is
``python -m evaluation.iso_quality``'s question; this one is whether what the selector learned generalises.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def lossless_test(run: Path, prompts: str, num_prompts: int, seeds: list[int], cache_dir: Path | None,
                  batch_size: int = 100) -> dict:
    """The comparison of the module docstring as a JSON-able dict."""
    from agents.schedule import read_run_config
    from agents.selector import SELECTOR_FILE, load_lossless
    from domain import load_prompts
    from envs.config import EnvConfig
    from envs.observation import ObservationBuilder
    from evaluation.grid_evaluation import check_items, items_quality
    from evaluation.selector_fit import first_scale_features
    from evaluation.selector_iso import quality_loss
    from evaluation.selector_run import run_models
    from rewards.stats import clustered_paired

    cfg = read_run_config(run)
    if cfg["observation_layout"].get("objective") != "iso-quality":
        raise ValueError(f"{run} is not a lossless selector (train.py --algo selector --objective iso-quality)")
    env = EnvConfig.from_dict(cfg["env"])
    generator, clip, reward_fn = run_models(env)
    sel, info = load_lossless(Path(run) / SELECTOR_FILE)
    items = check_items(load_prompts(prompts)[:num_prompts], seeds, f"--prompts {prompts}", env.generator == "tiny")
    q = items_quality(generator, reward_fn, items, sel.candidates, batch_size, cache_dir,
                      "lossless candidates on the test items")
    L = np.stack([quality_loss(q[c]) for c in sel.candidates], axis=1)
    first = cfg["observation_layout"]["first_controllable_scale"]
    observer = ObservationBuilder(generator, first, env.prompt_embedding_dim, clip, budget_conditioned=False)
    X = first_scale_features(generator, observer, items, first, batch_size)
    val_loss = np.asarray([c["val_loss"] for c in info["fit"]["candidates"]])
    rows, p = np.arange(len(items)), [q for q, _ in items]
    out = {"run": str(run), "items": f"{prompts}: {len(dict.fromkeys(p))} prompts x seeds {seeds}", "levels": []}
    for lv in sel.levels:
        static = min(np.flatnonzero(val_loss <= lv.epsilon + 1e-12), key=lambda i: (sel.flops[i], val_loss[i]))
        idx = sel.choose_at(X, lv.rule, lv.value)
        f_sel, l_sel = sel.flops[idx], L[rows, idx]
        f_st, l_st = np.full(len(items), sel.flops[static]), L[:, static]
        saving = clustered_paired(list(f_st), list(f_sel), p)
        loss = clustered_paired(list(l_sel), list(l_st), p)
        out["levels"].append({"epsilon": lv.epsilon, "rule": lv.rule, "flops": float(f_sel.mean()),
                              "loss": float(l_sel.mean()), "static_flops": float(sel.flops[static]),
                              "static_loss": float(l_st.mean()), "deviation_rate": float((idx != static).mean()),
                              "flops_saving_vs_static": {k: saving[k] for k in ("mean_diff", "ci95", "n")},
                              "loss_minus_static": {k: loss[k] for k in ("mean_diff", "ci95", "n")}})
    return out


def markdown(summary: dict) -> str:
    lines = [f"Lossless selector {summary['run']} on {summary['items']} (QUALITY loss, transformer FLOPs; paired "
             "differences with prompt-clustered 95 % CIs)", "",
             "| epsilon | rule | FLOPs | loss | best static FLOPs | its loss | FLOPs saving vs static | loss − static's |"
             " off the static |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["levels"]:
        s, d = r["flops_saving_vs_static"], r["loss_minus_static"]
        lines.append(f"| {r['epsilon']:g} | {r['rule']} | {r['flops']:.3f} | {r['loss']:.3f} | {r['static_flops']:.3f} | "
                     f"{r['static_loss']:.3f} | {s['mean_diff']:+.3f} ± {s['ci95']:.3f} | {d['mean_diff']:+.3f} ± "
                     f"{d['ci95']:.3f} | {r['deviation_rate']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.lossless_test", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--prompts", default="test")
    ap.add_argument("--num-prompts", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", type=Path, default=Path("results") / "cache")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from agents.schedule import RunError
    from generator.weights_io import WeightsError

    try:
        summary = lossless_test(a.run, a.prompts, a.num_prompts, a.seeds, a.cache_dir)
    except (ValueError, FileNotFoundError, RunError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(summary))
    if a.json is not None:
        from generator.weights_io import atomic_write_json

        atomic_write_json(a.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
