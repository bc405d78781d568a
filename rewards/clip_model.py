"""The shipped small CLIP: a real open_clip model (config registered with open_clip), trained by
``scripts/train_clip.py`` on the procedural domain, loaded from a local safetensors file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EMBEDDED_CLIP_NAME = "varprune-clip-tiny"
EMBEDDED_CLIP_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "clip_tiny.safetensors"
_HOW = "Reproduce it with `python scripts/train_clip.py`."


def register_embedded_clip() -> None:
    """Make ``EMBEDDED_CLIP_NAME`` known to open_clip (idempotent)."""
    import open_clip

    if EMBEDDED_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR / f"{EMBEDDED_CLIP_NAME}.json")


def create_embedded_clip(pretrained: str | Path | None = EMBEDDED_CLIP_WEIGHTS, device: str = "cpu"):
    """(model, preprocess, tokenizer) of the small CLIP; ``pretrained=None`` gives random weights."""
    import open_clip

    from generator.weights_io import WeightsError, read_metadata

    register_embedded_clip()
    if pretrained is not None:
        read_metadata(pretrained, _HOW)  # clear error for a missing or corrupt file
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(EMBEDDED_CLIP_NAME, pretrained=str(pretrained),
                                                                         device=device)
        except RuntimeError as e:
            raise WeightsError(f"weights file {pretrained} does not fit {EMBEDDED_CLIP_NAME} ({e}). {_HOW}") from None
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(EMBEDDED_CLIP_NAME, device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(EMBEDDED_CLIP_NAME)


def images_to_clip_input(images_B3HW: torch.Tensor, model) -> torch.Tensor:
    """Images in [0, 1] -> the model's normalised input (tensor ops, antialiased resize if needed)."""
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    x = images_B3HW.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_retrieval_r1(model, tokenizer, images_uint8: np.ndarray, captions: list[str], n_distractors: int = 31,
                      seed: int = 0, device: str = "cpu") -> float:
    """Fraction of images whose true caption scores above ``n_distractors`` random other captions."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255).to(device)
    img = torch.nn.functional.normalize(model.encode_image(images_to_clip_input(x, model)).float(), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(tokenizer(captions).to(device)).float(), dim=-1)
    rng = np.random.default_rng(seed)
    n = len(captions)
    hits = 0
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), size=min(n_distractors, n - 1), replace=False)
        cand = np.concatenate([[i], others])
        sims = img[i] @ txt[torch.from_numpy(cand).to(device)].t()
        hits += int(int(sims.argmax()) == 0 and captions[i] not in [captions[j] for j in others])
    return hits / n
