"""The DomainEval judge's network and its loaded form: ``JudgeNet`` (a small per-cell CNN, its own
architecture and weights, *not* the reward's CLIP, never trained on generated images) and
``DomainJudge`` (the shipped weights, ``predict`` = what it sees, ``score`` = DomainEval's checks).

Trained only on ``domain.render`` images with their scene annotations (``scripts/train_judge.py``;
labels and loss in ``judge.training``). For every cell of the 3x3 position grid it predicts "empty" or
an object with its shape, colour, texture and size, and for the image the background kind and colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from domain import BACKGROUNDS, POSITIONS, SHAPES, TEXTURES, ObjectSpec, Scene, parse_caption
from generator.weights_io import WeightsError, load_module, read_metadata
from judge.checks import JudgeScore, score_scene
from judge.heads import BACKGROUND_HEADS, CELLS, OBJECT_HEADS

JUDGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "judge.safetensors"
_HOW = "Reproduce it with `python scripts/train_judge.py` (its docstring has the shipped recipe: ~20 min of reconstructions and 38 min of training on the 2-core CPU)."


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
    #: extra 3x3 conv layers on the 16x16 map (width ``widths[1]``, residual), each widening the fine
    #: view's receptive field by 8 px: the judge that reads tokenizer reconstructions needs a small
    #: object's whole outline (12 px) at 4 px detail, not only its centre
    fine_depth: int = 0

    def to_dict(self) -> dict:
        d = {"widths": list(self.widths), "hidden": self.hidden, "image_size": self.image_size}
        if self.fine_depth:  # omitted at 0, so files written before the field existed read back the same
            d["fine_depth"] = self.fine_depth
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JudgeConfig":
        return cls(widths=tuple(d["widths"]), hidden=int(d["hidden"]), image_size=int(d["image_size"]),
                   fine_depth=int(d.get("fine_depth", 0)))


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


def _residual_block(c: int) -> nn.Sequential:
    """3x3 conv + BN, added to its input by the caller (a ResNet block's identity path)."""
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))


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
        if cfg.fine_depth < 0:
            raise ValueError(f"JudgeConfig.fine_depth must be >= 0, got {cfg.fine_depth}")
        if cfg.image_size % (2 * _PATCH):
            raise ValueError(f"JudgeConfig.image_size must be a multiple of {2 * _PATCH}, got {cfg.image_size}")
        self.cfg = cfg
        layers: list[nn.Module] = [nn.PixelUnshuffle(_PATCH)]
        c_in = 3 * _PATCH * _PATCH
        for c, (k, s) in zip(cfg.widths, _KERNELS_STRIDES):
            layers += [nn.Conv2d(c_in, c, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.fine = nn.Sequential(*layers[:7])     # unshuffle, 1x1, 3x3: the 16x16 map
        self.fine_blocks = nn.ModuleList(_residual_block(cfg.widths[1]) for _ in range(cfg.fine_depth))
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
        for block in self.fine_blocks:
            fine_BChw = F.relu(fine_BChw + block(fine_BChw))
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


def images_to_input(images_uint8_BHW3: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(images_uint8_BHW3)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {x.dtype} of shape {tuple(x.shape)}")
    return x.to(device).permute(0, 3, 1, 2).float().div_(255.0)


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
