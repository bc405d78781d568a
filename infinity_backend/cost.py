"""``python -m infinity_backend cost``: GPU time to budget before starting, from the analytic FLOPs model
and an ASSUMED achieved throughput (``--tflops``, TFLOP/s actually sustained; no GPU measured it here).

Per image: the transformer (``flops_table``), the BSQ VAE decoder and the T5 encoder. The decoder's
FLOPs were counted with ``torch.utils.flop_counter`` on upstream's VAE (base_ch 128, ch_mult
[1, 2, 4, 4, 4], two res-blocks) built on the meta device: 9.85 TFLOPs for a 64x64 latent
(1024x1024 image), 0.62 at 16x16; it scales with the latent's area. T5 (flan-t5-xl encoder, 1.22 B
parameters) runs on the prompt padded to 512 tokens: 2 x 1.22e9 x 512 FLOPs per prompt.

A training run makes ``timesteps / num_controllable`` episode images at a mean transformer FLOPs
fraction ``mean_fraction`` (an agent under the infinity preset's 0.37 budget ends near it; early
episodes spend more), one unpruned reference per (train prompt, image seed), and per validation
evaluation one episode image per validation prompt, plus FastVAR and Original once on them. A static
search (evaluate_agent.py) runs its grid as a prefix tree over the controllable scales (each distinct
prefix generated once per item), only for schedules within the FLOPs target, and decodes every leaf.
"""

from __future__ import annotations

import itertools

from infinity_backend.arch import (InfinityArch, default_prune_layers, infinity_prefill_flops, infinity_schedule_flops,
                                   square_scale_schedule)

VAE_DECODE_TFLOPS_64 = 9.848   # counted: upstream VAE decoder on a (1, 32, 64, 64) latent (meta device)
T5_XL_PARAMS = 1.22e9


def per_image_flops(model_type: str = "infinity_2b", pn: str = "1M") -> dict:
    """Unpruned image with CFG: transformer (prefill included), decoder and text FLOPs."""
    arch = InfinityArch.for_model(model_type)
    hws = [(h, w) for _, h, w in square_scale_schedule(pn)]
    n = len(hws)
    transformer = infinity_prefill_flops(arch, 2) + sum(
        infinity_schedule_flops(arch, hws, [0.0] * n, [True] * n, default_prune_layers(arch.depth)))
    decode = VAE_DECODE_TFLOPS_64 * 1e12 * (hws[-1][0] * hws[-1][1]) / 4096
    return {"arch": arch, "hws": hws, "transformer": transformer, "decode": decode, "text": 2 * T5_XL_PARAMS * 512}


def grid_options(ratios: tuple[float, ...]) -> list[tuple[float, bool]]:
    """(ratio, keeps the CFG branch) per controllable scale, as the static search's grid: each ratio with
    the branch kept and dropped, plus skip."""
    return [(r, keep) for r in ratios for keep in (True, False)] + [(1.0, True)]


def static_search_flops(f: dict, num_controllable: int, ratios: tuple[float, ...], target: float) -> dict:
    """FLOPs per search item of the prefix-tree grid restricted to schedules within ``target`` (total
    FLOPs fraction), and how many schedules fit."""
    arch, hws = f["arch"], f["hws"]
    n, first = len(hws), len(hws) - num_controllable
    prune = default_prune_layers(arch.depth)
    full = f["transformer"] + f["decode"] + f["text"]
    base = infinity_prefill_flops(arch, 2)

    def scale_costs(combo):
        r = [0.0] * first + [o[0] for o in combo] + [0.0] * (n - first - len(combo))
        unc = [True] * first + [o[1] for o in combo] + [True] * (n - first - len(combo))
        return infinity_schedule_flops(arch, hws, r, unc, prune)

    fitting = []
    for combo in itertools.product(grid_options(ratios), repeat=num_controllable):
        total = (base + sum(scale_costs(combo)) + f["decode"] + f["text"]) / full
        if total <= target + 1e-12:
            fitting.append(combo)
    nodes = {combo[:d] for combo in fitting for d in range(1, num_controllable + 1)}
    prefix = base + sum(scale_costs(())[:first]) + f["text"]
    tree = sum(scale_costs(node)[first + len(node) - 1] for node in nodes)
    return {"schedules": len(grid_options(ratios)) ** num_controllable, "fitting": len(fitting),
            "flops_per_item": prefix + tree + len(fitting) * f["decode"]}


def cost_report(tflops: float, model_type: str = "infinity_2b", pn: str = "1M", timesteps: int = 24_000,
                num_controllable: int = 4, train_prompts: int = 1000, image_seeds: int = 2, val_prompts: int = 100,
                eval_freq: int = 2000, mean_fraction: float = 0.6, search_items: int = 100,
                grid_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75), target: float = 0.45) -> str:
    f = per_image_flops(model_type, pn)
    full = f["transformer"] + f["decode"] + f["text"]
    fixed = f["decode"] + f["text"]
    episode = mean_fraction * f["transformer"] + fixed
    fastvar = 0.241 * f["transformer"] + fixed if model_type == "infinity_2b" and pn == "1M" else None
    sec = 1 / (tflops * 1e12)
    train = {"episode images": (timesteps / num_controllable, episode),
             "references (unpruned)": (train_prompts * image_seeds, full),
             "validation episodes": (timesteps // eval_freq * val_prompts, episode),
             "FastVAR + Original on validation": (val_prompts, full + (fastvar or full))}
    search = static_search_flops(f, num_controllable, tuple(grid_ratios), target)
    lines = [f"{model_type} @ {pn}, CFG on, assumed sustained throughput {tflops:g} TFLOP/s (not measured)",
             f"one unpruned image: transformer {f['transformer'] / 1e12:.1f} + VAE decoder {f['decode'] / 1e12:.2f} "
             f"+ T5 {f['text'] / 1e12:.2f} = {full / 1e12:.1f} TFLOPs -> {full * sec:.2f} GPU-s"]
    if fastvar:
        lines.append(f"FastVAR's schedule (24.1% of the transformer): {fastvar / 1e12:.1f} TFLOPs -> {fastvar * sec:.2f} GPU-s")
    lines.append(f"training run ({timesteps:,} timesteps, {num_controllable} decisions per image, mean transformer "
                 f"fraction {mean_fraction:g}, {train_prompts} prompts x {image_seeds} seeds, {val_prompts} validation "
                 f"prompts every {eval_freq:,} steps):")
    total = 0.0
    for name, (count, flops) in train.items():
        total += count * flops
        lines.append(f"  {name:<34} {count:>9,.0f} images x {flops / 1e12:6.1f} TFLOPs = {count * flops * sec / 3600:7.2f} GPU-h")
    lines.append(f"  {'total':<34} {total * sec / 3600:>47.2f} GPU-h")
    s = search["flops_per_item"] * search_items
    lines.append(f"static search (grid {list(grid_ratios)} x CFG kept/dropped + skip on {num_controllable} scales: "
                 f"{search['schedules']:,} schedules, {search['fitting']:,} within total FLOPs {target:g}; prefix tree, "
                 f"{search_items} search items): {search['flops_per_item'] / full:,.0f} unpruned-image equivalents per "
                 f"item -> {s * sec / 3600:.2f} GPU-h")
    return "\n".join(lines)
