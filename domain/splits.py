"""The fixed prompt splits shipped in prompts/ and the prompt-file reader."""

from __future__ import annotations

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
SPLITS = ("train", "val", "test")


def load_prompts(split: str | Path) -> list[str]:
    """'train' | 'val' | 'test' (prompts/<split>.txt) or a path; one prompt per line."""
    path = PROMPTS_DIR / f"{split}.txt" if str(split) in SPLITS else Path(split)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found (use one of {', '.join(SPLITS)} or a path to a file)")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts")
    if any(not ln.strip() for ln in lines):
        raise ValueError(f"prompts file {path} has blank lines (line {[i + 1 for i, ln in enumerate(lines) if not ln.strip()][0]})")
    return prompts
