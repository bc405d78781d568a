"""CLIP score through open_clip: the shipped small CLIP by default, any open_clip model for real use.

Nothing here downloads. A pretrained *tag* (e.g. ``ViT-L-14`` / ``openai``) is resolved to a file
already in the local Hugging Face or open_clip cache, and a missing one fails at once with a message
saying how to get it; a *path* must exist. The score is the usual CLIPScore convention:
``100 * max(cos(image, text), 0)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from rewards.clip_model import EMBEDDED_CLIP_NAME, EMBEDDED_CLIP_WEIGHTS, create_embedded_clip, images_to_clip_input


class ClipWeightsUnavailable(FileNotFoundError):
    """The requested CLIP weights are neither a local file nor in the local cache."""


def _resolve_tag(name: str, tag: str) -> str:
    """Local file for an open_clip (model, tag) pair, or a clear error (never a download)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise ValueError(f"unknown pretrained tag {tag!r} for open_clip model {name!r}; known tags: {tags} "
                         f"(or pass a local checkpoint path)")
    cfg = open_clip.get_pretrained_cfg(name, tag)
    candidates: list[Path] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, fname = os.path.split(hub)
        names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    url = cfg.get("url", "")
    if url:
        candidates.append(Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url))
    for c in candidates:
        if c.is_file():
            return str(c)
    where = f"Hugging Face repo {hub!r}" if hub else f"URL {url!r}"
    raise ClipWeightsUnavailable(
        f"open_clip weights {name}/{tag} are not in the local cache and this tool never downloads at run time. "
        f"On a machine with network run `python -c \"import open_clip; open_clip.create_model_and_transforms("
        f"'{name}', pretrained='{tag}')\"` (fetches from the {where}) and copy the cache, or pass the checkpoint "
        f"file path as pretrained.")


class ClipScorer:
    """Scores images against prompts with an open_clip model (eval mode, no gradients).

    Args:
        model, tokenizer: an open_clip model and its tokenizer.
        name: the model name, recorded in configs and reports.
    """

    def __init__(self, model, tokenizer, name: str, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def embedded(cls, path: str | Path = EMBEDDED_CLIP_WEIGHTS, device: str = "cpu") -> "ClipScorer":
        """The shipped small CLIP (``weights/clip_tiny.safetensors``)."""
        model, _, tok = create_embedded_clip(path, device=device)
        return cls(model, tok, EMBEDDED_CLIP_NAME, device)

    @classmethod
    def from_pretrained(cls, name: str, pretrained: str | Path | None, device: str = "cpu") -> "ClipScorer":
        """Any open_clip model: ``pretrained`` is a local checkpoint path or a tag in the local cache."""
        import open_clip

        if name == EMBEDDED_CLIP_NAME:
            return cls.embedded(pretrained or EMBEDDED_CLIP_WEIGHTS, device)
        if name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {name!r}; known: {', '.join(open_clip.list_models()[:20])}, ...")
        if pretrained is None:
            raise ValueError(f"open_clip model {name!r} needs pretrained weights: a local checkpoint path or a cached tag "
                             f"({open_clip.list_pretrained_tags_by_model(name)})")
        p = str(pretrained)
        looks_like_path = os.sep in p or p.endswith((".bin", ".pt", ".pth", ".safetensors"))
        if looks_like_path or Path(p).exists():
            if not Path(p).is_file():
                raise ClipWeightsUnavailable(f"CLIP checkpoint {p} does not exist (model {name!r})")
            file = p
        else:
            file = _resolve_tag(name, p)
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=file, device=device)
        return cls(model, open_clip.get_tokenizer(name), name, device)

    @property
    def embedding_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        with torch.no_grad():
            return int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])

    @torch.no_grad()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings (B, D); cached per prompt."""
        for p in dict.fromkeys(prompts):
            if p not in self._text_cache:
                # one prompt at a time: a batched encode is not bitwise the per-prompt one, and the cached
                # embedding (an agent's prompt features) must not depend on which prompts came along
                emb = self.model.encode_text(self.tokenizer([p]).to(self.device)).float()
                self._text_cache[p] = F.normalize(emb, dim=-1)[0]
        return torch.stack([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def image_embedding(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, D) of images in [0, 1]."""
        if images_B3HW.ndim != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images_B3HW.shape)}")
        x = images_to_clip_input(images_B3HW.clamp(0, 1).to(self.device), self.model)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def score(self, images_B3HW: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """CLIP score per image, ``100 * max(cos, 0)`` (B,), float32 on CPU."""
        if len(prompts) != images_B3HW.shape[0]:
            raise ValueError(f"{images_B3HW.shape[0]} images but {len(prompts)} prompts")
        cos = (self.image_embedding(images_B3HW) * self.text_embedding(prompts)).sum(-1)
        return (100.0 * cos.clamp_min(0)).cpu()
