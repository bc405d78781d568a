"""Checks of user-given values shared by the entry points and the explorer page.

Each raises ``ValueError`` with a message that names the option, the value given and what is allowed;
the command-line tools print it and exit with status 2, the explorer page shows it as it is.
"""

from __future__ import annotations

import re

#: output folder and file names: no path separators, no "..", nothing a shell or a file system treats specially
FOLDER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def check_positive(flag: str, value: int) -> int:
    """``value`` must be an integer >= 1 (a count of steps, prompts, environments...)."""
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")
    return value


def check_non_negative(flag: str, value: int) -> int:
    """``value`` must be an integer >= 0 (0 = turn the step off)."""
    if value < 0:
        raise ValueError(f"{flag} must be >= 0 (0 turns it off), got {value}")
    return value


def check_folder_name(name: str, what: str) -> str:
    """A name that becomes one folder or file inside an output directory: letters, digits, '_', '-', '.',
    not starting with '.' or '-' (so never '..', a hidden file or an option-looking name)."""
    if not FOLDER_NAME_RE.fullmatch(name) or name.startswith("-"):
        raise ValueError(f"{what} {name!r} must use only letters, digits, '_', '-', '.' and start with a letter, "
                         f"digit or '_' (it names a folder inside the output directory)")
    return name


def check_prompt_in_grammar(prompt: str) -> str:
    """The embedded model knows only the procedural domain's captions (``domain.grammar``): a prompt outside
    that grammar is a ValueError that names the first word outside it and the words allowed there."""
    from domain import parse_caption

    try:
        parse_caption(prompt)
    except ValueError as e:
        raise ValueError(f"prompt {prompt!r} is outside the embedded model's grammar, the only text it was trained on: "
                         f"{e}") from None
    return prompt
