"""The judge's training labels and loss (used by ``scripts/train_judge.py``): a rendered scene's
annotation turned into per-cell and per-image targets for ``judge.model.JudgeNet``'s heads."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from domain import BACKGROUNDS, Scene
from judge.heads import BACKGROUND_HEADS, CELLS, OBJECT_HEADS

IGNORE = -100  # label of an attribute in an empty cell (cross_entropy's ignore_index)


def scene_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Training labels: presence (B, 9) float, object heads (B, 9) long (IGNORE where empty), bg (B,) long."""
    B = len(scenes)
    t = {"presence": torch.zeros(B, len(CELLS))}
    for name in OBJECT_HEADS:
        t[name] = torch.full((B, len(CELLS)), IGNORE, dtype=torch.long)
    cell_index = {c: i for i, c in enumerate(CELLS)}
    for b, sc in enumerate(scenes):
        for o in sc.objects:
            j = cell_index[o.position]
            t["presence"][b, j] = 1.0
            for name, classes in OBJECT_HEADS.items():
                t[name][b, j] = classes.index(getattr(o, name))
    t["bg_kind"] = torch.tensor([BACKGROUNDS.index(s.background) for s in scenes])
    t["bg_colour"] = torch.tensor([BACKGROUND_HEADS["bg_colour"].index(s.background_colour) for s in scenes])
    return t


def judge_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of presence BCE, the object heads' cross-entropy on occupied cells, and the background heads'."""
    parts = {"presence": F.binary_cross_entropy_with_logits(logits["presence"], targets["presence"])}
    for name in OBJECT_HEADS:
        parts[name] = F.cross_entropy(logits[name].flatten(0, 1), targets[name].flatten(), ignore_index=IGNORE)
    for name in BACKGROUND_HEADS:
        parts[name] = F.cross_entropy(logits[name], targets[name])
    loss = sum(parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}
