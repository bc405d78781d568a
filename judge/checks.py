"""DomainEval's scoring rules: the checks a prompt makes against what the judge saw in an image.

For each object the prompt names, in its grid cell: position (an object is present there), and shape,
colour, texture and size (present and of the named value; an absent object fails all five). For the
background: its kind and its colour (two checks, both under "background"). A prompt with n objects
makes ``5 n + 2`` checks. Per image:

- ``attribute_accuracy`` = checks that hold / all checks (GenEval's per-attribute correctness);
- ``scene_accuracy`` = 1.0 iff every check holds *and* no object is seen in a cell the prompt leaves
  empty (GenEval's "image is correct": right objects, right attributes, nothing extra), else 0.0;
- ``per_attribute[a]`` = fraction of attribute ``a``'s checks that hold (nan if the prompt makes none;
  every prompt makes position/shape/colour/texture/size/background checks, so nan never occurs here).
"""

from __future__ import annotations

from dataclasses import dataclass

from domain import Scene, parse_caption
from judge.heads import ATTRIBUTES, OBJECT_HEADS


@dataclass(frozen=True)
class JudgeScore:
    """One image's DomainEval score for one prompt (every field a fraction in [0, 1])."""

    attribute_accuracy: float        # fraction of the prompt's attribute checks that hold in the image
    scene_accuracy: float            # 1.0 iff every object and the background are fully right, else 0.0
    per_attribute: dict[str, float]  # ATTRIBUTES -> fraction correct of that attribute's checks (nan if none)


def attribute_checks(seen: Scene, prompt: Scene) -> dict[str, list[bool]]:
    """Every check ``prompt`` makes against the scene ``seen`` in an image, by attribute (module docstring)."""
    at = {o.position: o for o in seen.objects}
    checks: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for o in prompt.objects:
        s = at.get(o.position)
        checks["position"].append(s is not None)
        for name in OBJECT_HEADS:
            checks[name].append(s is not None and getattr(s, name) == getattr(o, name))
    checks["background"] += [seen.background == prompt.background, seen.background_colour == prompt.background_colour]
    return checks


def score_scene(seen: Scene, prompt: Scene) -> JudgeScore:
    """The DomainEval score of an image in which ``seen`` was recognised, for ``prompt``."""
    checks = attribute_checks(seen, prompt)
    flat = [c for a in ATTRIBUTES for c in checks[a]]
    extra = {o.position for o in seen.objects} - {o.position for o in prompt.objects}
    per = {a: (sum(v) / len(v) if v else float("nan")) for a, v in checks.items()}
    return JudgeScore(attribute_accuracy=sum(flat) / len(flat), scene_accuracy=float(all(flat) and not extra),
                      per_attribute=per)


def pooled_per_attribute(seen: list[Scene], prompts: list[str]) -> dict[str, float]:
    """Per attribute, the fraction of that attribute's checks that hold, pooled over all images
    (``seen[i]`` read in image i, whose prompt is ``prompts[i]``; nan for an attribute with no check)."""
    if len(seen) != len(prompts):
        raise ValueError(f"{len(seen)} scenes but {len(prompts)} prompts: need one prompt per image")
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    for s, p in zip(seen, prompts):
        for a, v in attribute_checks(s, parse_caption(p)).items():
            correct[a] += sum(v)
            total[a] += len(v)
    return {a: (correct[a] / total[a] if total[a] else float("nan")) for a in ATTRIBUTES}
