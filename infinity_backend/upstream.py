"""Importing the user's upstream Infinity checkout (nothing of it lives in this repository)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

from infinity_backend.options import InfinityOptionsError


def import_upstream(src: str | Path) -> SimpleNamespace:
    """Import the upstream ``infinity`` package from ``src`` (a checkout). Another checkout's
    ``infinity`` already in ``sys.modules`` is dropped first (objects built from it keep working)."""
    src = Path(src).resolve()
    if importlib.util.find_spec("flash_attn") is None:
        raise ImportError("upstream Infinity imports flash_attn unconditionally; install it "
                          "(pip install flash-attn --no-build-isolation) on the GPU machine")
    loaded = sys.modules.get("infinity")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent.parent != src:
        for name in [m for m in sys.modules if m == "infinity" or m.startswith("infinity.")]:
            del sys.modules[name]
    if str(src) in sys.path:
        sys.path.remove(str(src))
    sys.path.insert(0, str(src))
    try:
        ns = SimpleNamespace(
            infinity=importlib.import_module("infinity.models.infinity"),
            basic=importlib.import_module("infinity.models.basic"),
            dynamic_resolution=importlib.import_module("infinity.utils.dynamic_resolution"),
            src=src,
        )
    except ModuleNotFoundError as e:
        raise ImportError(f"importing upstream Infinity from {str(src)!r} failed: {e}. Install its "
                          f"requirements (pip install -r {src}/requirements.txt)") from e
    return ns


def load_run_infinity(src: Path):
    """Upstream tools/run_infinity.py as a module (its loaders build the model exactly as upstream)."""
    path = src / "tools" / "run_infinity.py"
    if not path.is_file():
        raise InfinityOptionsError(f"{str(src)!r} has no tools/run_infinity.py (needed to build the model)")
    spec = importlib.util.spec_from_file_location("_upstream_run_infinity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
