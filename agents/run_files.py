"""The files of a training run directory that ``train.py`` writes at its start and end: a fresh run
name, the final and fallback best models, and summary.json with the closing lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from agents.normalization import save_obs_stats
from generator.weights_io import atomic_write_json


def unique_run_dir(out: Path, name: str) -> Path:
    """``out / name``, or ``out / name_2``, ``name_3``... the first that does not exist yet."""
    run = out / name
    i = 2
    while run.exists():
        run = out / f"{name}_{i}"
        i += 1
    return run


def save_final_models(model, run: Path) -> None:
    """final_model.zip and final_obs_stats.json; best_model.zip (+ stats) too when no evaluation ran
    (a very short run) and so none was selected."""
    model.save(str(run / "final_model.zip"))
    if model.get_vec_normalize_env() is not None:
        save_obs_stats(model.get_vec_normalize_env(), run / "final_obs_stats.json")
    if not (run / "best_model.zip").exists():
        model.save(str(run / "best_model.zip"))
        if model.get_vec_normalize_env() is not None:
            save_obs_stats(model.get_vec_normalize_env(), run / "best_obs_stats.json")


def summarize(run: Path, seconds: float) -> dict:
    """summary.json and the closing lines: the selected model's VALIDATION score next to FastVAR's on the
    same validation episodes. The model was selected on these episodes (the best of every evaluation),
    so its figure is optimistic; it is not a comparison on held-out prompts (evaluate_agent.py makes
    that one, on the test prompts, with prompt-clustered CIs). seconds: the run's wall-clock time."""
    base = json.loads((run / "baselines.json").read_text())
    rows = list(csv.DictReader(open(run / "eval_curve.csv"))) if (run / "eval_curve.csv").exists() else []
    best = max(rows, key=lambda r: float(r["mean_reward"])) if rows else None
    fv = base["fastvar"]
    note = _validation_note(run, len(rows))
    residual = _is_residual(run)
    served = json.loads((run / "served.json").read_text()) if (run / "served.json").is_file() else None
    if served is not None and not served["untrained"]:
        best = next((r for r in rows if int(r["timesteps"]) == served["served_step"]), best)
    if residual and (served is None or served["untrained"]):
        best = None  # nothing replaced the untrained policy: the run serves the frontier (agents.callbacks)
        note += ("; no evaluation's paired validation gain was surely positive, so best_model.zip is the untrained "
                 "policy, whose masked argmax keeps the frontier schedule everywhere")
        print(f"served model: the untrained policy (the static frontier); {len(rows)} validation evaluations, none "
              f"with a paired gain whose one-sided 95 % lower bound is above 0")
    summary = {"run": str(run), "wall_clock_s": round(seconds, 1), "fastvar": fv, "original": base["original"],
               "best_eval": best, "evaluations": len(rows), "validation_note": note}
    if residual:
        summary["served"] = "trained policy" if best is not None else "untrained policy (the static frontier)"
    if best is not None:
        print(f"selected model (step {best['timesteps']}, best of {len(rows)} validation evaluations): reward "
              f"{_num(best['mean_reward']):.4f} at {_num(best['flops_fraction']):.3f} of the transformer FLOPs, SSIM "
              f"{_num(best['ssim']):.3f}, CLIP change {_num(best['clip_delta']):+.2f}")
        print(f"FastVAR on the same validation episodes: reward {fv['mean_reward']:.4f} at {fv['flops_fraction']:.3f}, "
              f"SSIM {_num(fv.get('ssim')):.3f}, CLIP change {_num(fv.get('clip_delta')):+.2f}")
        print(f"({note})")
    atomic_write_json(run / "summary.json", summary)
    return summary


def _is_residual(run: Path) -> bool:
    cfg_path = run / "config.json"
    return cfg_path.is_file() and bool(json.loads(cfg_path.read_text()).get("residual"))


def _validation_note(run: Path, evaluations: int) -> str:
    """What the validation figures of summary.json are and are not."""
    note = ("validation figures: the selected model is the best of {n} evaluations on these same validation "
            "episodes (selection-biased upwards), FastVAR is evaluated once on them; test figures come only from "
            "`python evaluate_agent.py`").format(n=evaluations)
    cfg_path = run / "config.json"
    budget_range = json.loads(cfg_path.read_text())["env"].get("budget_range") if cfg_path.is_file() else None
    if budget_range is not None:  # the agent's episodes spend their own budgets, FastVAR its fixed 0.347
        note += (f"; the agent's validation episodes have budgets spread over [{budget_range[0]:g}, {budget_range[1]:g}] "
                 "while FastVAR runs at its own FLOPs, so the two are not at matched FLOPs (evaluate_agent.py "
                 "compares them at matched budgets)")
    residual = json.loads(cfg_path.read_text()).get("residual") if cfg_path.is_file() else None
    if residual and residual.get("reward_mode") == "paired":
        note += ("; the residual agent's reward is its quality minus the frontier schedule's on the same image seed "
                 "(0 = the frontier's quality), FastVAR's is its quality alone: the two rewards are not on one scale")
    return note


def _num(x) -> float:
    """A CSV / JSON figure as a float (NaN when missing or not a number)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")
