"""HPSv2 (Human Preference Score v2 / v2.1) from a local checkpoint, through the open_clip already installed.

Why not the ``hpsv2`` package: ``pip install hpsv2`` (1.2.0) pins ``pytest==7.2.0`` and ``protobuf<4``
(it would downgrade this project's test runner), its wheel lacks open_clip's BPE vocabulary file (its
vendored tokenizer fails at import), and its ``score()`` builds ``ViT-H-14`` with
``pretrained='laion2B-s32B-b79K'`` (a 3.9 GB download on first use, even with a local HPS checkpoint) and
fetches the HPS checkpoint from the Hugging Face hub when none is given. An HPS checkpoint is the full
``state_dict`` of an open_clip ViT-H-14 (``{"state_dict": ...}``), whose keys and outputs are those of the
open_clip installed here (checked on ViT-B-32 against the package's vendored copy: same 302 keys,
features equal to 1e-7), so we build the architecture without weights, load the file with
``torch.load(weights_only=True)`` and score as the package does: cosine of the unit image and text
features (~0.2-0.35 for real images), preprocessing as its ``preprocess_val`` (tensor bicubic resize of
the short side with antialiasing, centre crop, OpenAI mean/std). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

HPSV2_ARCH = "ViT-H-14"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_HOW = ("get HPS_v2.1_compressed.pt (or HPS_v2_compressed.pt) from the xswu/HPSv2 Hugging Face repository on a "
        "machine with network and pass its path; nothing is downloaded at run time")


class HPSv2Unavailable(ValueError):
    """The HPSv2 checkpoint is missing or does not fit the architecture; the message says which and why."""


class HPSv2Scorer:
    """``scorer(images_B3HW in [0, 1], prompts) -> list[float]``: HPSv2 score per image.

    Args:
        checkpoint: local HPSv2 checkpoint (``{"state_dict": ...}`` or a bare state dict).
        device: torch device; default CUDA when available.
        arch: open_clip architecture of the checkpoint (``ViT-H-14`` for every released HPSv2).
    """

    def __init__(self, checkpoint: str | Path, device: str | None = None, arch: str = HPSV2_ARCH) -> None:
        import open_clip

        path = Path(checkpoint)
        if not path.is_file():
            raise HPSv2Unavailable(f"HPSv2 checkpoint {path} does not exist: {_HOW}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling refuses / corrupt file: reported with the path
            raise HPSv2Unavailable(f"HPSv2 checkpoint {path} could not be read as a weights-only torch file "
                                   f"({type(e).__name__}: {str(e)[:200]})") from None
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise HPSv2Unavailable(f"HPSv2 checkpoint {path} holds no state_dict of tensors")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:  # missing / unexpected keys or other shapes: another architecture
            raise HPSv2Unavailable(f"HPSv2 checkpoint {path} does not fit open_clip {arch}: "
                                   f"{' '.join(str(e).split())[:400]}") from None
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", OPENAI_STD), device=self.device).view(1, 3, 1, 1)
        self.arch, self.checkpoint = arch, path

    def preprocess(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> model input (B, 3, S, S): short side to S (bicubic, antialiased), centre crop, normalise."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if images_B3HW.ndim != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images_B3HW.shape)}")
        x = images_B3HW.float().to(self.device)
        x = TF.resize(x, self.image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [self.image_size, self.image_size])
        return (x - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, prompts: list[str]) -> list[float]:
        if len(prompts) != images_B3HW.shape[0]:
            raise ValueError(f"{images_B3HW.shape[0]} images but {len(prompts)} prompts")
        img = F.normalize(self.model.encode_image(self.preprocess(images_B3HW)).float(), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokenizer(prompts).to(self.device)).float(), dim=-1)
        return (img * txt).sum(-1).cpu().tolist()
