"""Saving and loading our weights as safetensors, atomically, with clear errors."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not fit the model."""


def _default_file_mode() -> int:
    """What ``open()`` would give a new file under the current umask (mkstemp's files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a reader
    never sees half a file; the file gets the permissions a plain ``open(path, "wb")`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(x):
    """``x`` for strict JSON: NumPy scalars as Python numbers, NaN / inf as None, keys as strings (recursively)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def read_json_file(path: str | Path, error: type[Exception], missing: str):
    """A JSON file's content; a missing file or invalid JSON raises ``error`` naming the path (``missing``:
    what to say when the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        raise error(missing)
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{p} is not valid JSON ({e})") from None


def npz_bytes(**arrays) -> bytes:
    """An uncompressed .npz of numpy ``arrays`` as bytes, for ``atomic_write_bytes``."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_module(module: nn.Module, path: str | Path, metadata: dict | None = None,
                dtype: torch.dtype = torch.float16) -> None:
    """State dict -> safetensors (floating tensors cast to ``dtype``), written atomically.
    ``metadata`` values are JSON-encoded into the file header."""
    path = Path(path)
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in module.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_metadata(path: str | Path, how_to_make: str = "") -> dict:
    """The JSON-decoded header metadata of a safetensors file."""
    path = _existing(path, how_to_make)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"weights file {path} is corrupt or not a safetensors file ({e}). {how_to_make}") from None
    return {k: json.loads(v) for k, v in meta.items()}


def load_module(module: nn.Module, path: str | Path, how_to_make: str = "") -> nn.Module:
    """Load a safetensors state dict into ``module`` (cast to the module's dtypes); strict."""
    path = _existing(path, how_to_make)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"weights file {path} is corrupt or not a safetensors file ({e}). {how_to_make}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad_shape = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        raise WeightsError(
            f"weights file {path} does not fit {type(module).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {bad_shape[:5]}. {how_to_make}")
    module.load_state_dict({k: tensors[k].to(own[k].dtype) for k in own})
    return module


def _existing(path: str | Path, how_to_make: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found. {how_to_make}".strip())
    return path
