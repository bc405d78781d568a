"""Atomic writes: the whole file or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import stat

import pytest

from generator.weights_io import atomic_write_bytes, atomic_write_json


def test_atomic_write_gives_the_file_a_plain_writes_permissions(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic.bin", b"y")
    atomic_write_json(tmp_path / "a.json", {"k": 1})
    want = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "atomic.bin").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == want
    assert (tmp_path / "atomic.bin").read_bytes() == b"y"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})  # not JSON-serialisable: fails before anything is written
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails while writing the temporary file
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
