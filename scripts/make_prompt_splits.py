"""Regenerate prompts/{train,val,test}.txt deterministically (fixed seed).

train (1000) and val (100) never contain a held-out (shape, colour) pair; every test prompt (100)
contains at least one. No prompt appears in two splits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain import PROMPTS_DIR, caption, has_held_out, sample_scene  # noqa: E402

SIZES = {"train": 1000, "val": 100, "test": 100}


def make_splits(seed: int = 2024) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: dict[str, list[str]] = {k: [] for k in SIZES}
    while any(len(out[k]) < n for k, n in SIZES.items()):
        sc = sample_scene(rng)
        text = caption(sc)
        if text in seen:
            continue
        split = "test" if has_held_out(sc) else ("val" if len(out["val"]) < SIZES["val"] and rng.random() < 0.1 else "train")
        if len(out[split]) >= SIZES[split]:
            continue
        seen.add(text)
        out[split].append(text)
    return out


def main() -> None:
    PROMPTS_DIR.mkdir(exist_ok=True)
    for name, prompts in make_splits().items():
        (PROMPTS_DIR / f"{name}.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
        print(f"{name}: {len(prompts)} prompts")


if __name__ == "__main__":
    main()
