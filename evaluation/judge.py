"""DomainEval: a GenEval-style judge for the procedural domain, independent of the reward.

GenEval judges a text-to-image model by running an object detector on its images and checking every
object the prompt names (present, colour, position, count). Our domain has exact ground truth, so it
gets its own GenEval: a small CNN (its own architecture and weights, *not* the reward's CLIP, never
trained on generated images) trained only on ``domain.render`` images with their scene annotations
(``scripts/train_judge.py``). For every cell of the 3x3 position grid it predicts "empty" or an
object with its shape, colour, texture and size, and for the image the background kind and colour.

Checks a prompt makes (the prompt parsed with ``domain.parse_caption``; a prompt outside the grammar
is a ValueError naming the first bad word):

    for each object the prompt names, in its grid cell:
        position   an object is present in that cell
        shape      present and of the named shape        (an absent object fails all five checks)
        colour     present and of the named colour
        texture    present and of the named texture
        size       present and of the named size
    background     the background kind is the named one  (two checks, both under "background")
                   the background colour is the named one

so a prompt with n objects makes ``5 n + 2`` checks. Per image:

- ``attribute_accuracy`` = checks that hold / all checks (GenEval's per-attribute correctness);
- ``scene_accuracy`` = 1.0 iff every check holds *and* no object is seen in a cell the prompt leaves
  empty (GenEval's "image is correct": right objects, right attributes, nothing extra), else 0.0;
- ``per_attribute[a]`` = fraction of attribute ``a``'s checks that hold (nan if the prompt makes none;
  every prompt makes position/shape/colour/texture/size/background checks, so nan never occurs here).

Over a set of images the CLI reports the mean of the per-image attribute and scene accuracies, and
per attribute the pooled fraction of that attribute's checks over all images. Confidence intervals
are clustered by prompt: the seeds of a prompt are averaged first, then a t-interval over prompts.

    python -m evaluation.judge --json domaineval.json              # 100 test prompts x seeds 0 1 2
    python -m evaluation.judge --json j.json --num-prompts 20 --seeds 0 --num-renders 500
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from domain import BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, ObjectSpec, Scene
from domain import parse_caption
from generator.weights_io import WeightsError, load_module, read_metadata

JUDGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "judge.safetensors"
ATTRIBUTES = ("position", "shape", "colour", "texture", "size", "background")
_HOW = "Reproduce it with `python scripts/train_judge.py` (its docstring has the shipped recipe: 25 min on a shared 2-core CPU)."

CELLS: tuple[str, ...] = tuple(POSITIONS)  # the 3x3 grid, row-major from the top left
#: the object heads: name -> class names (index = class id)
OBJECT_HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES,
                                            "size": tuple(SIZES)}
BACKGROUND_HEADS: dict[str, tuple[str, ...]] = {"bg_kind": BACKGROUNDS, "bg_colour": tuple(BACKGROUND_COLOURS)}
#: fresh seeds for the held-out renders: sample_batch(seed, n) seeds its generator with [seed, n, size],
#: and no training script uses this seed (training: 40_000 + seed, pools: seed * 1_000_003 + i)
HELDOUT_RENDER_SEED = 731_902_467
#: test prompts are rendered with image seeds HELDOUT_RENDER_SEED + 1000 * k for seed k
HELDOUT_PROMPT_SEED = HELDOUT_RENDER_SEED + 1
#: Gaussian blurs (px) the CLI also measures the judge under (not part of the 0.97 target)
BLUR_CHECK_SIGMAS = (0.5, 0.8)


# ---- the model --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeConfig:
    """The judge CNN's shape. The image is first cut into 4x4 patches (``PixelUnshuffle(4)``: 48 channels
    on a 16x16 map; the textures' period is 4 px and in image coordinates, so each texture is one fixed
    pattern per patch), then four conv layers of ``widths`` channels: 1x1, 3x3, 3x3 stride 2, 3x3 (an
    8x8 map, receptive field 36 px: a large object is 36 px across). Small on purpose: it trains on a
    shared 2-core CPU in minutes."""

    widths: tuple[int, ...] = (48, 48, 64, 96)
    hidden: int = 256
    image_size: int = 64

    def to_dict(self) -> dict:
        return {"widths": list(self.widths), "hidden": self.hidden, "image_size": self.image_size}

    @classmethod
    def from_dict(cls, d: dict) -> "JudgeConfig":
        return cls(widths=tuple(d["widths"]), hidden=int(d["hidden"]), image_size=int(d["image_size"]))


_KERNELS_STRIDES = ((1, 1), (3, 1), (3, 2), (3, 1))
_PATCH = 4


def _cell_sample_grid(image_size: int, spacing_px: float, points: int, centre_shift_px: float) -> torch.Tensor:
    """(1, 9, points**2, 2) sample points in grid_sample's [-1, 1] frame (align_corners=False): a
    ``points`` x ``points`` lattice ``spacing_px`` apart around each cell centre (grammar POSITIONS).
    ``centre_shift_px``: where a map's unit centres sit relative to the frame grid_sample assumes (a
    stride-2 conv's output unit j is centred on input unit 2j, not between 2j and 2j + 1)."""
    offsets = (torch.arange(points) - (points - 1) / 2) * spacing_px
    pts = []
    for name in CELLS:
        fx, fy = POSITIONS[name]
        xs = (fx * image_size + offsets + centre_shift_px) * 2 / image_size - 1
        ys = (fy * image_size + offsets + centre_shift_px) * 2 / image_size - 1
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack([xx, yy], -1).reshape(points * points, 2))
    return torch.stack(pts)[None]


class JudgeNet(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> logits per grid cell and for the background.

    Per cell, two views around the cell's centre, both bilinear samples: a 3x3 lattice 8 px apart of
    the 8x8 map (context: a large object is 36 px across) and a 5x5 lattice 4 px apart of the 16x16
    map (detail: a small object is 12 px across). They go through an MLP shared by all cells plus a
    learned cell embedding, then the heads presence (1), shape (7), colour (9), texture (5), size (3).
    Background: the 8x8 map average-pooled to 2x2 (top vs bottom tells a gradient) -> MLP -> kind (3),
    colour (5).
    """

    def __init__(self, cfg: JudgeConfig = JudgeConfig()) -> None:
        super().__init__()
        if len(cfg.widths) != len(_KERNELS_STRIDES) or min(cfg.widths) < 1:
            raise ValueError(f"JudgeConfig.widths needs {len(_KERNELS_STRIDES)} positive entries, got {cfg.widths}")
        if cfg.image_size % (2 * _PATCH):
            raise ValueError(f"JudgeConfig.image_size must be a multiple of {2 * _PATCH}, got {cfg.image_size}")
        self.cfg = cfg
        layers: list[nn.Module] = [nn.PixelUnshuffle(_PATCH)]
        c_in = 3 * _PATCH * _PATCH
        for c, (k, s) in zip(cfg.widths, _KERNELS_STRIDES):
            layers += [nn.Conv2d(c_in, c, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.fine = nn.Sequential(*layers[:7])     # unshuffle, 1x1, 3x3: the 16x16 map
        self.coarse = nn.Sequential(*layers[7:])   # 3x3 stride 2, 3x3: the 8x8 map
        self.register_buffer("coarse_grid", _cell_sample_grid(cfg.image_size, 2 * _PATCH, 3, _PATCH / 2), persistent=False)
        self.register_buffer("fine_grid", _cell_sample_grid(cfg.image_size, _PATCH, 5, 0.0), persistent=False)
        c_fine, c_coarse = cfg.widths[1], cfg.widths[-1]
        self.cell_in = nn.Linear(9 * c_coarse + 25 * c_fine, cfg.hidden)
        self.cell_embedding = nn.Parameter(torch.zeros(len(CELLS), cfg.hidden))
        self.cell_mlp = nn.Sequential(nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.object_out = nn.Linear(cfg.hidden, 1 + sum(map(len, OBJECT_HEADS.values())))
        self.bg_mlp = nn.Sequential(nn.Linear(4 * c_coarse, cfg.hidden), nn.ReLU())
        self.bg_out = nn.Linear(cfg.hidden, sum(map(len, BACKGROUND_HEADS.values())))

    @staticmethod
    def _sample(f_BChw: torch.Tensor, grid_1NP2: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) sampled at (N, P) points -> (B, N, P * C)."""
        B, C = f_BChw.shape[:2]
        s_BCNP = F.grid_sample(f_BChw, grid_1NP2.expand(B, -1, -1, -1), mode="bilinear", align_corners=False)
        return s_BCNP.permute(0, 2, 3, 1).reshape(B, grid_1NP2.shape[1], -1)

    def forward(self, x_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        fine_BChw = self.fine(x_B3HW - 0.5)
        coarse_BChw = self.coarse(fine_BChw)
        cells_BNX = torch.cat([self._sample(coarse_BChw, self.coarse_grid), self._sample(fine_BChw, self.fine_grid)], -1)
        h_BNH = self.cell_mlp(self.cell_in(cells_BNX) + self.cell_embedding)
        obj_BNK = self.object_out(h_BNH)
        out = {"presence": obj_BNK[..., 0]}
        i = 1
        for name, classes in OBJECT_HEADS.items():
            out[name] = obj_BNK[..., i:i + len(classes)]
            i += len(classes)
        bg_BK = self.bg_out(self.bg_mlp(F.adaptive_avg_pool2d(coarse_BChw, 2).flatten(1)))
        i = 0
        for name, classes in BACKGROUND_HEADS.items():
            out[name] = bg_BK[:, i:i + len(classes)]
            i += len(classes)
        return out


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


def images_to_input(images_uint8_BHW3: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(images_uint8_BHW3)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {x.dtype} of shape {tuple(x.shape)}")
    return x.to(device).permute(0, 3, 1, 2).float().div_(255.0)


# ---- scoring ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeScore:
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


class DomainJudge:
    """The trained judge: ``predict`` says what it sees, ``score`` checks images against prompts."""

    def __init__(self, net: JudgeNet, device: str | torch.device = "cpu", batch_size: int = 256) -> None:
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path = JUDGE_WEIGHTS, device: str = "cpu") -> "DomainJudge":
        """The judge in ``path`` (WeightsError naming the file and the script that makes it if missing or corrupt)."""
        meta = read_metadata(path, _HOW)
        if "judge_config" not in meta:
            raise WeightsError(f"weights file {path} has no judge_config in its metadata: not a judge. {_HOW}")
        net = JudgeNet(JudgeConfig.from_dict(meta["judge_config"]))
        load_module(net, path, _HOW)
        return cls(net, device)

    @torch.no_grad()
    def logits(self, images_uint8_BHW3: np.ndarray) -> dict[str, torch.Tensor]:
        """The heads' logits for a batch of images, on the CPU (computed in chunks of ``batch_size``)."""
        x = images_to_input(images_uint8_BHW3)
        size = self.net.cfg.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"the judge reads {size}x{size} images, got {tuple(x.shape[-2:])}")
        parts = [{k: v.cpu() for k, v in self.net(c.to(self.device)).items()} for c in x.split(self.batch_size)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def predict(self, images_uint8_BHW3: np.ndarray) -> list[Scene]:
        """What the judge sees in each image, as a ``domain.Scene``: one ObjectSpec per grid cell it finds
        occupied (presence logit > 0), in grid order, with its most likely shape, colour, texture and
        size, and the most likely background kind and colour. May hold 0 or more than 3 objects."""
        if len(images_uint8_BHW3) == 0:
            return []
        lg = self.logits(images_uint8_BHW3)
        present = (lg["presence"] > 0).numpy()
        best = {k: lg[k].argmax(-1).numpy() for k in (*OBJECT_HEADS, *BACKGROUND_HEADS)}
        scenes = []
        for b in range(present.shape[0]):
            objs = tuple(ObjectSpec(shape=SHAPES[best["shape"][b, j]], colour=OBJECT_HEADS["colour"][best["colour"][b, j]],
                                    size=OBJECT_HEADS["size"][best["size"][b, j]], position=cell,
                                    texture=TEXTURES[best["texture"][b, j]])
                         for j, cell in enumerate(CELLS) if present[b, j])
            scenes.append(Scene(objs, BACKGROUNDS[best["bg_kind"][b]], BACKGROUND_HEADS["bg_colour"][best["bg_colour"][b]]))
        return scenes

    def score(self, images_uint8_BHW3: np.ndarray, prompts: list[str]) -> list[JudgeScore]:
        """One JudgeScore per (image, prompt) pair (batched, no gradients, deterministic)."""
        if len(prompts) != len(images_uint8_BHW3):
            raise ValueError(f"{len(images_uint8_BHW3)} images but {len(prompts)} prompts")
        parsed = [parse_caption(p) for p in prompts]  # before the model runs: a bad prompt fails fast
        return [score_scene(seen, want) for seen, want in zip(self.predict(images_uint8_BHW3), parsed)]


# ---- the DomainEval command -------------------------------------------------------------------------
def skip_after_middle_ratios(num_scales: int) -> list[float]:
    """Everything after the middle scale skipped (the model card's ``heavy_skip_ratios``; evaluation may
    not import the embedded backend, and tests/test_judge.py checks the two agree)."""
    mid = num_scales // 2
    return [0.0] * (mid + 1) + [1.0] * (num_scales - mid - 1)


@torch.no_grad()
def clip_retrieval_hits(model, tokenizer, images_uint8: np.ndarray, captions: list[str], n_distractors: int = 31,
                        seed: int = 0) -> np.ndarray:
    """Per image, whether CLIP ranks its true caption above ``n_distractors`` random other captions of
    the set: exactly ``rewards.clip_model.clip_retrieval_r1``'s protocol (same draws), per image
    instead of averaged (bool (B,))."""
    from rewards.clip_model import images_to_clip_input

    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255)
    img = F.normalize(model.encode_image(images_to_clip_input(x, model)).float(), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(captions)).float(), dim=-1)
    rng = np.random.default_rng(seed)
    n = len(captions)
    hits = np.zeros(n, bool)
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), size=min(n_distractors, n - 1), replace=False)
        sims = img[i] @ txt[torch.from_numpy(np.concatenate([[i], others]))].t()
        hits[i] = int(sims.argmax()) == 0 and captions[i] not in [captions[j] for j in others]
    return hits


def pooled_per_attribute(seen: list[Scene], prompts: list[str]) -> dict[str, float]:
    """Per attribute, the fraction of that attribute's checks that hold, pooled over all images."""
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    for s, p in zip(seen, prompts):
        for a, v in attribute_checks(s, parse_caption(p)).items():
            correct[a] += sum(v)
            total[a] += len(v)
    return {a: (correct[a] / total[a] if total[a] else float("nan")) for a in ATTRIBUTES}


def _prompt_means(values: list[float], prompt_ids: list[int]) -> list[float]:
    """The mean of ``values`` per prompt (seeds averaged), in prompt order."""
    groups: dict[int, list[float]] = {}
    for v, p in zip(values, prompt_ids):
        groups.setdefault(p, []).append(v)
    return [float(np.mean(groups[p])) for p in sorted(groups)]


def clustered_mean_ci(values: list[float], prompt_ids: list[int]) -> dict:
    """Mean and 95% CI clustered by prompt: seeds averaged within a prompt, t-interval over prompts."""
    from rewards.stats import mean_ci

    mean, half, n = mean_ci(_prompt_means(values, prompt_ids))
    return {"mean": mean, "ci95": half, "num_prompts": n}


def _render_block(judge: DomainJudge, images: np.ndarray, prompts: list[str], prompt_ids: list[int]) -> dict:
    seen = judge.predict(images)
    scores = [score_scene(s, parse_caption(p)) for s, p in zip(seen, prompts)]
    return {"attribute_accuracy": clustered_mean_ci([s.attribute_accuracy for s in scores], prompt_ids),
            "scene_accuracy": clustered_mean_ci([s.scene_accuracy for s in scores], prompt_ids),
            "per_attribute": pooled_per_attribute(seen, prompts), "num_images": len(prompts)}


def run_domaineval(judge: DomainJudge, num_prompts: int, seeds: list[int], num_renders: int, batch_size: int = 50,
                   log=print) -> dict:
    """Everything ``python -m evaluation.judge`` reports (see ``main``), as a dict."""
    from scipy import stats

    from domain import load_prompts, render_prompt, sample_batch
    from rewards.stats import paired
    from generator.backends import load_backend
    from generator.images import to_uint8
    from generator.schedules import FastVARSchedule, RatioListSchedule, schedule_ratios
    from domain import caption
    from rewards import ClipScorer
    from rewards.clip_model import create_embedded_clip

    out: dict = {"num_test_prompts": num_prompts, "seeds": list(seeds), "num_held_out_renders": num_renders}
    t = time.time()
    imgs, caps = sample_batch(HELDOUT_RENDER_SEED, num_renders)
    rnd = _render_block(judge, imgs, caps, list(range(num_renders)))
    prompts = load_prompts("test")[:num_prompts]
    items = [(i, k) for k in seeds for i in range(num_prompts)]
    item_prompts = [prompts[i] for i, _ in items]
    prompt_ids = [i for i, _ in items]
    test_imgs = np.stack([render_prompt(prompts[i], HELDOUT_PROMPT_SEED + 1000 * k + i) for i, k in items])
    tst = _render_block(judge, test_imgs, item_prompts, prompt_ids)
    out["render_attribute_accuracy"] = rnd["attribute_accuracy"]["mean"]
    out["render_scene_accuracy"] = rnd["scene_accuracy"]["mean"]
    out["render_per_attribute"] = rnd["per_attribute"]
    out["render_attribute_accuracy_ci95"] = rnd["attribute_accuracy"]["ci95"]
    out["render_scene_accuracy_ci95"] = rnd["scene_accuracy"]["ci95"]
    out["render_test_prompts_attribute_accuracy"] = tst["attribute_accuracy"]["mean"]
    out["render_test_prompts_scene_accuracy"] = tst["scene_accuracy"]["mean"]
    out["render_test_prompts_per_attribute"] = tst["per_attribute"]
    worst = min(min(rnd["per_attribute"].values()), min(tst["per_attribute"].values()))
    # robustness: the same held-out renders blurred (generated images are softer than renders)
    from scipy.ndimage import gaussian_filter

    for sigma in BLUR_CHECK_SIGMAS:
        blurred = np.stack([gaussian_filter(im.astype(np.float32), (sigma, sigma, 0)) for im in imgs])
        blk = _render_block(judge, blurred.round().clip(0, 255).astype(np.uint8), caps, list(range(num_renders)))
        out[f"render_blur{sigma:g}_per_attribute"] = blk["per_attribute"]
        out[f"render_blur{sigma:g}_scene_accuracy"] = blk["scene_accuracy"]["mean"]
    out["render_min_attribute_accuracy"] = worst
    out["render_target"] = 0.97
    out["render_target_met"] = bool(worst >= 0.97)
    log(f"renders: {time.time() - t:.1f}s")

    t = time.time()
    gen = load_backend("tiny")()
    n = gen.num_scales
    schedules = {"generated": None, "fastvar": FastVARSchedule(),
                 "skip_after_middle": RatioListSchedule(tuple(skip_after_middle_ratios(n)))}
    clip, _, clip_tok = create_embedded_clip()
    per_method: dict[str, dict] = {}
    for name, sched in schedules.items():
        parts = [gen.generate(item_prompts[j:j + batch_size], [k for _, k in items[j:j + batch_size]], schedule=sched)[0]
                 for j in range(0, len(items), batch_size)]
        images = to_uint8(torch.cat(parts))
        seen = judge.predict(images)
        scores = [score_scene(s, parse_caption(p)) for s, p in zip(seen, item_prompts)]
        hits = np.zeros(len(items), bool)
        for k in seeds:  # one retrieval set per seed: its captions are distinct, as clip_retrieval_r1 assumes
            idx = [j for j, (_, kk) in enumerate(items) if kk == k]
            hits[idx] = clip_retrieval_hits(clip, clip_tok, images[idx], [item_prompts[j] for j in idx])
        per_method[name] = {"attr": [s.attribute_accuracy for s in scores], "scene": [s.scene_accuracy for s in scores],
                            "clip_hit": hits, "seen": seen, "images": images,
                            "flops_fraction": gen.flops_fraction([0.0] * n if sched is None else schedule_ratios(sched, n))}
        log(f"{name}: generated and judged {len(items)} images ({time.time() - t:.1f}s so far)")

    for name, m in per_method.items():
        a = clustered_mean_ci(m["attr"], prompt_ids)
        s = clustered_mean_ci(m["scene"], prompt_ids)
        out[f"{name}_attribute_accuracy"] = a["mean"]
        out[f"{name}_attribute_accuracy_ci95"] = a["ci95"]
        out[f"{name}_scene_accuracy"] = s["mean"]
        out[f"{name}_scene_accuracy_ci95"] = s["ci95"]
        out[f"{name}_per_attribute"] = pooled_per_attribute(m["seen"], item_prompts)
        out[f"{name}_flops_fraction"] = m["flops_fraction"]
        out[f"{name}_clip_r1"] = float(m["clip_hit"].mean())
        wanted = [parse_caption(p) for p in item_prompts]
        out[f"{name}_background_kind_accuracy"] = float(np.mean([s.background == w.background for s, w in zip(m["seen"], wanted)]))
        out[f"{name}_background_colour_accuracy"] = float(np.mean([s.background_colour == w.background_colour
                                                                   for s, w in zip(m["seen"], wanted)]))
    out["generated_num_images"] = len(items)

    # paired differences, clustered by prompt (per-prompt means, then a paired t-test over prompts)
    pairs = {"generated_minus_fastvar": ("generated", "fastvar"), "fastvar_minus_skip_after_middle": ("fastvar", "skip_after_middle")}
    out["paired_by_prompt"] = {}
    for label, (a_name, b_name) in pairs.items():
        out["paired_by_prompt"][label] = {
            metric: paired(_prompt_means(per_method[a_name][key], prompt_ids), _prompt_means(per_method[b_name][key], prompt_ids))
            for metric, key in (("attribute_accuracy", "attr"), ("scene_accuracy", "scene"))}
    for metric in ("attribute_accuracy", "scene_accuracy"):
        v = [out[f"{m}_{metric}"] for m in schedules]
        out[f"monotone_{metric}"] = "strict" if v[0] > v[1] > v[2] else "non-strict" if v[0] >= v[1] >= v[2] else "no"

    # where the judge and the reward's CLIP disagree (generated images)
    table = {}
    for name, m in {**per_method, "all": None}.items():
        hit = np.concatenate([per_method[k]["clip_hit"] for k in schedules]) if m is None else m["clip_hit"]
        ok = np.concatenate([per_method[k]["scene"] for k in schedules]) == 1 if m is None else np.asarray(m["scene"]) == 1
        table[name] = {"num_images": int(hit.size),
                       "clip_right_judge_right": float(np.mean(hit & ok)), "clip_right_judge_wrong": float(np.mean(hit & ~ok)),
                       "clip_wrong_judge_right": float(np.mean(~hit & ok)), "clip_wrong_judge_wrong": float(np.mean(~hit & ~ok)),
                       "agreement": float(np.mean(hit == ok))}
    out["clip_vs_judge"] = table
    # does CLIP prefer the prompt to the judge's reading of the image, where the judge says they differ?
    scorer = ClipScorer(clip, clip_tok, "embedded")
    clip_scores, all_attr = [], []
    for name in schedules:
        m = per_method[name]
        x = torch.from_numpy(m["images"]).permute(0, 3, 1, 2).float() / 255
        with_prompt = scorer.score(x, item_prompts)
        clip_scores += with_prompt.tolist()
        all_attr += m["attr"]
        # readings with 1-3 objects are captions of the grammar; scene 0 means they differ from the prompt
        j = [i for i, sc in enumerate(m["seen"]) if m["scene"][i] == 0 and 1 <= len(sc.objects) <= 3]
        if j:
            with_reading = scorer.score(x[j], [caption(m["seen"][i]) for i in j])
            prefers = float((with_prompt[j] > with_reading).float().mean())
        else:
            prefers = float("nan")
        table[name]["images_judged_wrong_with_a_caption_reading"] = len(j)
        table[name]["clip_prefers_prompt_over_judge_reading"] = prefers
    out["clip_score_vs_attribute_accuracy_spearman"] = float(stats.spearmanr(clip_scores, all_attr).statistic)
    log(f"generation, judging and CLIP: {time.time() - t:.1f}s")
    return out


def _format_report(r: dict) -> str:
    lines = [f"DomainEval ({r['num_test_prompts']} test prompts x seeds {' '.join(map(str, r['seeds']))}; "
             f"{r['num_held_out_renders']} held-out renders)", "",
             "judge on held-out renders (target >= 0.97 per attribute):",
             f"  {'set':<22}" + "".join(f"{a:>11}" for a in ATTRIBUTES) + f"{'attr acc':>10}{'scene acc':>11}"]
    for label, key in (("random scenes", "render"), ("test prompts rendered", "render_test_prompts")):
        lines.append(f"  {label:<22}" + "".join(f"{r[f'{key}_per_attribute'][a]:>11.4f}" for a in ATTRIBUTES)
                     + f"{r[f'{key}_attribute_accuracy']:>10.4f}{r[f'{key}_scene_accuracy']:>11.4f}")
    for sigma in BLUR_CHECK_SIGMAS:
        key = f"render_blur{sigma:g}"
        lines.append(f"  {'random, blur ' + f'{sigma:g}' + ' px':<22}" + "".join(f"{r[f'{key}_per_attribute'][a]:>11.4f}" for a in ATTRIBUTES)
                     + f"{'':>10}{r[f'{key}_scene_accuracy']:>11.4f}")
    lines.append(f"  target met: {r['render_target_met']} (worst attribute {r['render_min_attribute_accuracy']:.4f}, unblurred)")
    lines += ["", "generated images, clustered 95% CI over prompts:",
              f"  {'schedule':<18}{'FLOPs':>7}{'attribute acc':>20}{'scene acc':>20}{'CLIP R@1':>10}"]
    for name in ("generated", "fastvar", "skip_after_middle"):
        lines.append(f"  {name:<18}{r[f'{name}_flops_fraction']:>7.3f}"
                     f"{r[f'{name}_attribute_accuracy']:>12.4f} ± {r[f'{name}_attribute_accuracy_ci95']:.4f}"
                     f"{r[f'{name}_scene_accuracy']:>12.4f} ± {r[f'{name}_scene_accuracy_ci95']:.4f}{r[f'{name}_clip_r1']:>10.3f}")
    lines += ["", "  per attribute (pooled checks):", f"  {'schedule':<18}" + "".join(f"{a:>11}" for a in ATTRIBUTES)
              + f"{'bg kind':>9}{'bg colour':>10}"]
    for name in ("generated", "fastvar", "skip_after_middle"):
        lines.append(f"  {name:<18}" + "".join(f"{r[f'{name}_per_attribute'][a]:>11.4f}" for a in ATTRIBUTES)
                     + f"{r[f'{name}_background_kind_accuracy']:>9.3f}{r[f'{name}_background_colour_accuracy']:>10.3f}")
    for label, d in r["paired_by_prompt"].items():
        lines.append(f"  {label}: " + "; ".join(f"{m} {v['mean_diff']:+.4f} ± {v['ci95']:.4f} (p = {v['p_ttest']:.2g})"
                                                 for m, v in d.items()))
    lines.append(f"  monotone (original > FastVAR > skip): attribute {r['monotone_attribute_accuracy']}, "
                 f"scene {r['monotone_scene_accuracy']}")
    lines += ["", "CLIP retrieval (true caption beats 31 others) vs judge scene accuracy, fraction of images:",
              f"  {'schedule':<18}{'both right':>11}{'CLIP only':>11}{'judge only':>11}{'both wrong':>11}{'agree':>8}"]
    for name, t in r["clip_vs_judge"].items():
        lines.append(f"  {name:<18}{t['clip_right_judge_right']:>11.3f}{t['clip_right_judge_wrong']:>11.3f}"
                     f"{t['clip_wrong_judge_right']:>11.3f}{t['clip_wrong_judge_wrong']:>11.3f}{t['agreement']:>8.3f}")
    lines += ["", "images the judge scores 0 whose reading is a caption: CLIP score(image, prompt) > CLIP score(image, reading)?"]
    for name, t in r["clip_vs_judge"].items():
        if "clip_prefers_prompt_over_judge_reading" in t:
            lines.append(f"  {name:<18}{t['clip_prefers_prompt_over_judge_reading']:>7.3f} of "
                         f"{t['images_judged_wrong_with_a_caption_reading']} images")
    lines.append(f"  Spearman(CLIP score, judge attribute accuracy) over all generated images: "
                 f"{r['clip_score_vs_attribute_accuracy_spearman']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.judge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    ap.add_argument("--num-prompts", type=int, default=100, help="the first N test prompts (1..100)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="image seeds per prompt (distinct)")
    ap.add_argument("--num-renders", type=int, default=2000, help="held-out random renders to measure the judge on")
    ap.add_argument("--weights", type=Path, default=JUDGE_WEIGHTS)
    ap.add_argument("--batch-size", type=int, default=50, help="images generated per batch")
    args = ap.parse_args(argv)
    from domain import load_prompts

    n_test = len(load_prompts("test"))
    if not 1 <= args.num_prompts <= n_test:
        ap.error(f"--num-prompts must be in 1..{n_test}, got {args.num_prompts}")
    dup = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if dup:
        ap.error(f"--seeds has duplicates {dup}: each (prompt, seed) image must count once")
    if args.num_renders < 2:
        ap.error(f"--num-renders must be >= 2, got {args.num_renders}")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    t0 = time.time()
    try:
        judge = DomainJudge.load(args.weights)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_domaineval(judge, args.num_prompts, args.seeds, args.num_renders, args.batch_size)
    result["judge_weights"] = str(args.weights)
    result["judge_training"] = {k: v for k, v in read_metadata(args.weights).items() if k != "judge_config"}
    result["wall_seconds"] = round(time.time() - t0, 1)
    print(_format_report(result))
    print(f"wall time {result['wall_seconds']:.1f}s")
    if args.json is not None:
        from generator.weights_io import atomic_write_json

        atomic_write_json(args.json, _jsonable(result))
        print(f"wrote {args.json}")
    return 0


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


if __name__ == "__main__":
    sys.exit(main())
