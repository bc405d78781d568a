"""Reward <-> judge agreement (issue #24): per FLOPs budget, Kendall tau between the reward's QUALITY and
DomainEval attribute accuracy over the static grid schedules that fit (validation), and the DomainEval
regret of choosing by QUALITY (test). The analysis is ``evaluation.agreement``.

    python scripts/reward_judge_agreement.py                     # the default budgets and items (below)
    python scripts/reward_judge_agreement.py --estimate-only     # counts and a time estimate, then stop
    python scripts/reward_judge_agreement.py --num-prompts 8 --max-schedules 20
    python scripts/reward_judge_agreement.py --run runs/ppo_s0 --budgets fastvar 0.9 --max-schedules 0

Budgets are fractions of the unpruned TRANSFORMER FLOPs (default: FastVAR's 0.347, 0.8x and 0.6x of it,
0.95, 0.9, 0.8); a schedule fits when its transformer FLOPs are within the budget. The grid and the levers
are the static search's (``evaluation.static_search.grid_schedules``; CFG drop and the last four scales
as the default agent has them, or those of ``--run``). Items: the first ``--num-prompts`` validation
prompts x ``--val-seeds`` (QUALITY and the static search's cache file are then the same as
``evaluate_agent.py``'s search), the first ``--test-num-prompts`` test prompts x ``--test-seeds``.

Where more than ``--max-schedules`` schedules fit a budget (0.95, 0.9, 0.8 fit ~6,000 of the 6,561), the
budget is analysed on a subset (``--subset``): ``closest`` (default) keeps the K schedules that spend the
most transformer FLOPs within the budget, ``random`` the first K fitting ones in a fixed random order of
the grid (``--sample-seed``). Tau, the choices and the regret are then over that subset; the table says
"K of N". After the first 3 uncached schedules (timed) an estimate of the remaining wall time is printed;
``--estimate-only`` stops there.

Writes OUT/agreement.json, OUT/agreement.md (the table, also printed) and OUT/disagreement.png (the most
discordant pairs of schedules at ``--figure-budget``: Original and both schedules on the validation
images where their DomainEval differs most), each atomically; OUT defaults to results/agreement. The
judge's scores are cached in CACHE/domaineval/, apart from the static search's CACHE/grid_*.npz.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.agreement import (  # noqa: E402
    DEFAULT_BUDGETS, SUBSET_RULES, AgreementSettings, Levers, markdown_table, result_json, run_agreement, write_outputs,
)
from evaluation.compare_plan import DEFAULT_GRID_RATIOS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = AgreementSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="take the levers (first controllable scale, CFG drop), the "
                    "generator and the quality weights from this train.py run (default: the default agent's: tiny "
                    "generator, last 4 scales, CFG drop allowed, the embedded_budget reward)")
    ap.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS), metavar="B",
                    help="fractions of the unpruned transformer FLOPs, 'fastvar' or multiples such as '0.8fastvar'")
    ap.add_argument("--num-prompts", type=int, default=d.num_prompts, help="validation prompts (and test prompts "
                    "unless --test-num-prompts)")
    ap.add_argument("--test-num-prompts", type=int, default=None)
    ap.add_argument("--val-seeds", type=int, nargs="+", default=list(d.val_seeds))
    ap.add_argument("--test-seeds", type=int, nargs="+", default=list(d.test_seeds))
    ap.add_argument("--max-schedules", type=int, default=d.max_schedules, metavar="K",
                    help="per budget, at most K fitting schedules (0 = every one; default %(default)s)")
    ap.add_argument("--subset", choices=SUBSET_RULES, default=d.subset, help="which K where more fit (see above)")
    ap.add_argument("--sample-seed", type=int, default=d.sample_seed, help="the random subset's seed")
    ap.add_argument("--grid-ratios", type=float, nargs="+", default=list(DEFAULT_GRID_RATIOS))
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="the static search's cache (QUALITY, shared "
                    "with evaluate_agent.py) and, in its domaineval/ folder, the judge's")
    ap.add_argument("--out", type=Path, default=d.out)
    ap.add_argument("--judge-weights", type=Path, default=None, help="DomainEval judge weights (default: the shipped file)")
    ap.add_argument("--clip-model", default=None, help="open_clip model of the reward's CLIP term (default: the shipped "
                    "small CLIP, as evaluate_agent.py)")
    ap.add_argument("--clip-pretrained", default=None)
    ap.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    ap.add_argument("--lpips-backbone", default=None)
    ap.add_argument("--figure-budget", default=None, help="the budget whose discordant pairs are drawn (default: the "
                    "first of --budgets)")
    ap.add_argument("--figure-pairs", type=int, default=d.figure_pairs)
    ap.add_argument("--figure-items", type=int, default=d.figure_items, help="validation images per pair")
    ap.add_argument("--estimate-only", action="store_true", help="print the counts and the estimate and stop (the first "
                    "3 uncached schedules are evaluated to time this CPU; they stay in the caches); no outputs")
    return ap


def settings_from(args: argparse.Namespace) -> AgreementSettings:
    return AgreementSettings(
        budgets=tuple(args.budgets), num_prompts=args.num_prompts,
        test_num_prompts=args.num_prompts if args.test_num_prompts is None else args.test_num_prompts,
        val_seeds=tuple(args.val_seeds), test_seeds=tuple(args.test_seeds), max_schedules=args.max_schedules,
        subset=args.subset, sample_seed=args.sample_seed, grid_ratios=tuple(args.grid_ratios), batch_size=args.batch_size,
        cache_dir=args.cache_dir, out=args.out, figure_budget=args.figure_budget, figure_pairs=args.figure_pairs,
        figure_items=args.figure_items).check()


def env_and_levers(run: Path | None):
    """(EnvConfig, Levers): the run's, or the default agent's (train.py's defaults on the tiny generator)."""
    from envs.config import EnvConfig
    from rewards.reward import RewardConfig

    if run is not None:
        from agents.schedule import read_run_config

        cfg = read_run_config(run)
        env = EnvConfig.from_dict(cfg["env"])
        return env, Levers(int(cfg["observation_layout"]["first_controllable_scale"]), bool(env.allow_drop_unconditional))
    env = EnvConfig(allow_drop_unconditional=True, reward=RewardConfig.embedded_budget(), budget_range=(0.2, 0.6)).validate()
    return env, None


def render_png(examples: list[dict], widths: tuple[int, ...], budget_label: str) -> bytes | None:
    """The discordant pairs: per pair three rows (Original, the schedule QUALITY prefers, the one the judge
    prefers) over the same validation images, each row labelled with schedule, FLOPs, mean QUALITY and
    DomainEval attribute, each image with its own. None when there is no discordant pair."""
    if not examples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from generator.images import to_uint8

    cols = max(len(e["items"]) for e in examples)
    rows = 3 * len(examples)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols + 3.4, 1.75 * rows), squeeze=False)
    for p, e in enumerate(examples):
        labelled = [("Original", e["original"], {"attribute": e["original_attribute"]})]
        labelled += [(tag, x["images"], x) for tag, x in zip(("higher QUALITY", "higher DomainEval"), e["shown"])]
        for r, (tag, images, info) in enumerate(labelled):
            row = 3 * p + r
            pics = to_uint8(images)
            for c in range(cols):
                ax = axes[row][c]
                ax.set_xticks([]), ax.set_yticks([])
                if c >= len(pics):
                    ax.axis("off")
                    continue
                ax.imshow(pics[c], interpolation="nearest")
                if r:
                    ax.set_title(f"Q {info['quality'][c]:+.3f}  attr {info['attribute'][c]:.2f}", fontsize=7)
                else:
                    prompt, seed = e["items"][c]
                    ax.set_title(f"seed {seed}: {prompt[:34]}\nattr {info['attribute'][c]:.2f}", fontsize=5.5)
            if r == 0:
                label = f"pair {p + 1}\nOriginal"
            else:
                s = info["schedule"]
                label = (f"{tag}\n{s.describe(widths)}\nFLOPs {info['transformer_fraction']:.3f}\n"
                         f"val Q {info['val_quality']:+.3f}\nval attr {info['val_attribute']:.3f}")
            axes[row][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center", labelpad=8)
    fig.suptitle(f"Where the reward's QUALITY and DomainEval disagree most (budget {budget_label})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from agents.schedule import RunError
    from envs.factory import make_generator
    from evaluation.compare import ProgressLog
    from evaluation.metrics import MetricSuite
    from evaluation.scoreboard import DomainEval
    from generator.weights_io import WeightsError
    from rewards import ClipWeightsUnavailable, LpipsUnavailable, RewardFunction

    torch.set_num_threads(max(1, torch.get_num_threads()))
    log = ProgressLog()
    try:
        settings = settings_from(args)
        if args.judge_weights is not None and not args.judge_weights.is_file():
            raise FileNotFoundError(f"--judge-weights {args.judge_weights} not found")
        env, levers = env_and_levers(args.run)
        generator = make_generator(env)
        if levers is None:
            levers = Levers(env.first_controllable(generator.num_scales), True)
        suite = MetricSuite.build(args.clip_model, args.clip_pretrained, args.lpips_net, args.lpips_backbone)
        reward_fn = RewardFunction(env.reward, clip=suite.clip if env.reward.clip_weight > 0 else None,
                                   lpips=suite.lpips if env.reward.lpips_weight > 0 else None)
        domain = DomainEval.load(args.judge_weights)
        result = run_agreement(generator, reward_fn, domain, levers, settings, log, estimate_only=args.estimate_only)
    except (ValueError, FileNotFoundError, RunError, WeightsError, ClipWeightsUnavailable, LpipsUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.estimate_only:
        return 0
    fig_budget = result["facts"]["figure_budget"]
    png = render_png(result["examples"], tuple(generator.scale_widths),
                     f"{fig_budget}, {result['facts']['figure_fraction']:.3f} of the transformer FLOPs")
    table = markdown_table(result["budgets"])
    paths = write_outputs(settings.out, result_json(result, settings, levers, generator.fingerprint()), table, png)
    print(table)
    log(f"wrote {', '.join(map(str, paths))}" + ("" if png is not None else f" (no discordant pair at {fig_budget}: no figure)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
