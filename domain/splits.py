"""The fixed prompt splits shipped in prompts/ and the prompt-file reader."""

from __future__ import annotations

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
SPLITS = ("train", "val", "test")


def load_prompts(split: str | Path) -> list[str]:
    """'train' | 'val' | 'test' (prompts/<split>.txt) or a path: one prompt per line, or a tab-separated
    table (see ``prompt_table``); ``#`` lines are comments."""
    path = PROMPTS_DIR / f"{split}.txt" if str(split) in SPLITS else Path(split)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found (use one of {', '.join(SPLITS)} or a path to a file)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if any(not ln.strip() for ln in lines) and any(ln.strip() for ln in lines):
        raise ValueError(f"prompts file {path} has blank lines (line {[i + 1 for i, ln in enumerate(lines) if not ln.strip()][0]})")
    prompts = [prompt for _, prompt, _ in prompt_table(lines, str(path))]
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts")
    return prompts


def prompt_table(lines: list[str], where: str) -> list[tuple[str | None, str, int]]:
    """(name or None, prompt, line number) per prompt of a prompts file. Blank and ``#`` lines are skipped.
    Lines without a TAB are one prompt each. A file whose lines have TABs is a table: when its first line
    names a ``prompt`` column (a header, e.g. ``id<TAB>prompt<TAB>category``), that column is the prompt
    and a ``name`` column, if any, the name; otherwise every line is ``name<TAB>prompt``. A table row
    with too few columns is an error naming the line (never a prompt that silently holds a name)."""
    rows = [(n, ln) for n, ln in enumerate(lines, 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not any("\t" in ln for _, ln in rows):
        return [(None, ln.strip(), n) for n, ln in rows]
    header = [c.strip().lower() for c in rows[0][1].split("\t")] if rows else []
    if "prompt" in header:
        col, name_col, rows = header.index("prompt"), (header.index("name") if "name" in header else None), rows[1:]
    else:
        col, name_col = 1, 0
    out = []
    for n, ln in rows:
        cells = ln.split("\t")
        if len(cells) <= max(col, name_col or 0) or not cells[col].strip():
            raise ValueError(f"{where}:{n}: a table row needs a prompt in column {col + 1}"
                             f"{' (the header names it)' if header and 'prompt' in header else ' (name<TAB>prompt)'}, "
                             f"got {ln!r}")
        out.append((None if name_col is None else cells[name_col].strip(), cells[col].strip(), n))
    return out
