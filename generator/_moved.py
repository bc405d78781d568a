"""Old import paths of modules that moved out of ``generator/`` (kept as re-exports for now).

``generator/`` used to hold every part of the project; it is now the backend-neutral protocol layer.
A module that moved leaves a three-line stand-in at its old path that calls :func:`reexport`, which
warns (DeprecationWarning, naming the new path) and copies the new module's names. The stand-ins are
the only places where ``generator`` reaches a backend, and they import it by name at run time.
"""

from __future__ import annotations

import importlib
import warnings

#: old module path -> new module path(s); the README's "Layout" table lists the same moves.
MOVED: dict[str, tuple[str, ...]] = {
    "generator.domain": ("domain",),
    "generator.config": ("embedded.config",),
    "generator.tokenizer": ("embedded.tokenizer",),
    "generator.transformer": ("embedded.transformer",),
    "generator.text": ("embedded.text",),
    "generator.flops": ("embedded.flops",),
    "generator.sampler": ("embedded.generator",),
    "generator.embedded": ("embedded.loaders",),
    "generator.model_card": ("embedded.model_card",),
    "generator.training": ("embedded.training",),
    "generator.clip_model": ("rewards.clip_model",),
    "generator.cli": ("generator.backends", "embedded.cli"),
    "generator.infinity_backend": ("infinity_backend", "infinity_backend.cli"),
}


def reexport(old: str, namespace: dict) -> None:
    """Fill ``namespace`` (the stand-in module's globals) with the names of the module(s) it moved to."""
    new = MOVED[old]
    warnings.warn(f"{old} moved to {' and '.join(new)}; import from there (the old path will be removed)",
                  DeprecationWarning, stacklevel=3)
    for target in new:
        mod = importlib.import_module(target)
        for name in dir(mod):
            if not name.startswith("__"):
                namespace.setdefault(name, getattr(mod, name))
