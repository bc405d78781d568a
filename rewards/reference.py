"""Cache of unpruned reference images (and their CLIP scores), keyed by (prompt, seed, generator).

In memory (LRU, ``max_items``) and optionally on disk (one safetensors file per key, written
atomically), so a reference is generated once per (prompt, seed) across episodes and runs. The key
holds the generator's fingerprint, so a cache directory can be shared by runs of different
generators. ``get_or_create_many`` makes all missing references of a list in batches (the batched
vector env, and ``precompute`` before training).
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

    def get_or_create_many(self, keys: list, make: Callable[[list[int]], torch.Tensor], clip=None,
                           prompts: list[str] | None = None, batch_size: int = 32) -> list[tuple[torch.Tensor, float | None]]:
        """``get_or_create`` for many keys at once: the missing references are made together,
        ``make(indices)`` -> (len(indices), 3, H, W) for the listed positions of ``keys``, at most
        ``batch_size`` at a time, and their CLIP scores (with ``clip``) in one batched call per chunk.
        Returns one (image (1, 3, H, W), CLIP score or None) per key."""
        if clip is not None and (prompts is None or len(prompts) != len(keys)):
            raise ValueError("CLIP scores of the references need one prompt per key")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        found: dict = {}
        missing: list[int] = []
        for i, key in enumerate(keys):
            if key in found:
                continue
            if key in self._items:
                self._items.move_to_end(key)
                found[key] = self._items[key]
                self.hits += 1
                continue
            image, score = self._load(key)
            if image is None:
                missing.append(i)
                found[key] = None
            else:
                self.hits += 1
                found[key] = (image, score)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            self.misses += len(chunk)
            with torch.no_grad():
                images = make(chunk).detach().cpu()
            for j, i in enumerate(chunk):
                found[keys[i]] = (images[j:j + 1].clone(), None)
        first = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        need_score = [i for key, i in first.items() if clip is not None and found[key][1] is None]
        for start in range(0, len(need_score), batch_size):
            chunk = need_score[start:start + batch_size]
            scores = clip.score(torch.cat([found[keys[i]][0] for i in chunk]), [prompts[i] for i in chunk]).tolist()
            for i, sc in zip(chunk, scores):
                found[keys[i]] = (found[keys[i]][0], float(sc))
        for key, (image, score) in found.items():
            self._items[key] = (image, score)
            self._items.move_to_end(key)
            if self.directory is not None and not self._file(key).exists():
                self._save(key, image, score)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return [found[key] for key in keys]

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
