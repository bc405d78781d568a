"""Cache of unpruned reference images (and their CLIP scores), keyed by (prompt, seed, generator).

In memory (LRU, ``max_items``) and optionally on disk (one safetensors file per key, written
atomically), so a reference is generated once per (prompt, seed) across episodes and runs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch


class ReferenceCache:
    def __init__(self, max_items: int = 8192, directory: str | Path | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"reference cache max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._items: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def _file(self, key) -> Path:
        return self.directory / (hashlib.sha1(repr(key).encode()).hexdigest()[:24] + ".safetensors")

    def get_or_create(self, key, make: Callable[[], torch.Tensor], clip=None,
                      prompt: str | None = None) -> tuple[torch.Tensor, float | None]:
        """(reference image (1, 3, H, W), its CLIP score vs ``prompt`` or None without ``clip``)."""
        if key in self._items:
            self._items.move_to_end(key)
            image, score = self._items[key]
            self.hits += 1
        else:
            image, score = self._load(key)
            if image is None:
                self.misses += 1
                with torch.no_grad():
                    image = make().detach().cpu()
            else:
                self.hits += 1
        if score is None and clip is not None:
            if prompt is None:
                raise ValueError("a CLIP score for the reference needs its prompt")
            score = float(clip.score(image, [prompt])[0])
        self._items[key] = (image, score)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        if self.directory is not None and not self._file(key).exists():
            self._save(key, image, score)
        return image, score

    def _load(self, key):
        if self.directory is None or not self._file(key).is_file():
            return None, None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            t = load_file(str(self._file(key)))
        except (SafetensorError, OSError, ValueError, KeyError):
            return None, None  # a damaged cache entry is regenerated, never trusted
        score = float(t["clip"][0]) if "clip" in t else None
        return t["image"], score

    def _save(self, key, image: torch.Tensor, score: float | None) -> None:
        from safetensors.torch import save

        from generator.weights_io import atomic_write_bytes

        tensors = {"image": image.contiguous()}
        if score is not None:
            tensors["clip"] = torch.tensor([score], dtype=torch.float64)
        atomic_write_bytes(self._file(key), save(tensors, metadata={"key": repr(key)[:1000]}))
