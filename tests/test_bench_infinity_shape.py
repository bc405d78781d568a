"""benchmarks/bench_infinity_shape.py: its input checks, the pieces it adds to the Infinity path (device
init, the batched cross-attention), and the CPU rehearsal on the tiny shape, which runs the whole
benchmark through upstream's classes (only when INFINITY_SRC points to a checkout, as the equivalence
tests in test_infinity_backend.py).

    INFINITY_SRC=/path/to/Infinity python -m pytest -q tests/test_bench_infinity_shape.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
INFINITY_SRC = os.environ.get("INFINITY_SRC")
needs_infinity = pytest.mark.skipif(not INFINITY_SRC, reason="set INFINITY_SRC to a FoundationVision/Infinity "
                                    "checkout to run the benchmark's CPU rehearsal")
SCHEDULES = {"original", "fastvar", "skip_after_middle", "mixed_fastvar_original", "mixed_agent_like"}
REHEARSAL = ["--arch", "tiny", "--device", "cpu", "--dtype", "fp32", "--batch-sizes", "1", "2", "--repeats", "1",
             "--threads", "1"]


def _bench():
    """The benchmark script as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_infinity_shape", ROOT / "benchmarks" / "bench_infinity_shape.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_requested_without_cuda_is_one_clear_line(capsys):
    assert _bench().main(["--device", "cuda", "--out", "x.json"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda requested but CUDA is not available" in err and "--arch tiny --device cpu" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "0", "2"], "--batch-sizes must be distinct integers >= 1, got [0, 2]"),
    (["--batch-sizes", "2", "2"], "--batch-sizes must be distinct integers >= 1, got [2, 2]"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--max-seconds", "-1"], "--max-seconds must be >= 0"),
    (["--out", "table.csv"], "--out must name a .json file"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--dtype", "bf16"], "on the CPU only --arch tiny --dtype fp32 runs"),
    (["--arch", "infinity_2b"], "got --arch infinity_2b --dtype fp32"),
    (["--src", "/nonexistent/Infinity"], "'/nonexistent/Infinity' does not exist"),
])
def test_bad_input_names_the_value(args, message, capsys):
    # argparse keeps an option's last value: ``args`` override the valid rehearsal setting before them
    assert _bench().main(["--arch", "tiny", "--device", "cpu", "--out", "x.json"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_choice_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as e:
        _bench().main(["--arch", "infinity_3b"])
    assert e.value.code == 2 and "invalid choice: 'infinity_3b'" in capsys.readouterr().err


def test_batched_cross_attention_is_the_per_sequence_maths():
    """The stand-in's one SDPA call for equal-length sequences gives what one call per sequence gives; unequal
    lengths take the per-sequence path itself."""
    from infinity_backend.flash_attn_stand_in import flash_attn_varlen_kvpacked_func as packed
    from infinity_backend.flash_attn_stand_in import per_sequence_varlen

    g = torch.Generator().manual_seed(0)
    n, lq, lk, H, c = 3, 5, 7, 2, 8
    q, kv = torch.randn(n * lq, H, c, generator=g), torch.randn(n * lk, 2, H, c, generator=g)
    cu_q, cu_k = torch.arange(0, (n + 1) * lq, lq), torch.arange(0, (n + 1) * lk, lk)
    ours = packed(q, kv, cu_q, cu_k, lq, lk, softmax_scale=0.3)
    torch.testing.assert_close(ours, per_sequence_varlen(q, kv, cu_q, cu_k, softmax_scale=0.3))
    cu_k2 = torch.tensor([0, 4, 11, 18])   # lengths 4, 7, 7
    kv2 = kv[:18]
    assert torch.equal(packed(q, kv2, cu_q, cu_k2, lq, lk, softmax_scale=0.3),
                       per_sequence_varlen(q, kv2, cu_q, cu_k2, softmax_scale=0.3))


def test_deferred_fills_land_in_the_moved_parameters():
    """Large nn.init fills are recorded, not run, and replayed into the parameter after a move (here a dtype
    move, as .bfloat16() on the GPU); small ones run at once; a later in-place write during construction
    keeps its values (the fill runs before it); a replaced parameter is an error."""
    bench = _bench()
    with bench.DeferredFills() as fills:
        lin = nn.Linear(256, 64)          # weight 16,384 elements: deferred; bias 64: drawn now
        emb = nn.Embedding(64, 128)       # normal_(0, 1) deferred, then overwritten as upstream's lvl_embed
        nn.init.trunc_normal_(emb.weight.data, std=0.02)
    assert [f.__name__ for f, _, _ in fills.pending.values()] == ["kaiming_uniform_"]
    bias_before, emb_before = lin.bias.detach().clone(), emb.weight.detach().clone()
    assert 0.01 < emb_before.std() < 0.03
    lin.to(torch.float64)
    assert fills.replay([lin, emb]) == 1
    bound = 1 / math.sqrt(256)            # kaiming_uniform_(a=sqrt(5)) on fan_in 256
    w = lin.weight.detach()
    assert w.dtype == torch.float64 and w.abs().max() <= bound and w.std() > 0.5 * bound / math.sqrt(3)
    assert torch.equal(lin.bias.detach(), bias_before.double()) and torch.equal(emb.weight.detach(), emb_before)
    with bench.DeferredFills() as fills:
        lin = nn.Linear(256, 64)
    lin.weight = nn.Parameter(torch.zeros(64, 256))
    with pytest.raises(RuntimeError, match="lost its parameter"):
        fills.replay([lin])


def _predicted_fraction(plan_ratios: list[float], arch: dict) -> float:
    """An image's transformer FLOPs fraction from the analytic model directly (not through the generator)."""
    from infinity_backend.arch import InfinityArch, infinity_prefill_flops, infinity_schedule_flops, square_scale_schedule

    a = InfinityArch(arch["depth"], arch["width"], arch["heads"], 4.0, 32, 128, arch["text_tokens"])
    hws = [(h, w) for _, h, w in square_scale_schedule(arch["pn"])]
    n, prune = len(hws), tuple(arch["prune_layers"])
    pre = infinity_prefill_flops(a, 2)
    used = pre + sum(infinity_schedule_flops(a, hws, plan_ratios, [True] * n, prune))
    return used / (pre + sum(infinity_schedule_flops(a, hws, [0.0] * n, [True] * n, prune)))


@needs_infinity
def test_cpu_rehearsal_writes_every_row(tmp_path, monkeypatch):
    """The documented rehearsal: every (schedule, batch) row measured, original at exactly 1x, predicted
    speed-ups as the analytic FLOPs model says, memory as numbers, outputs replaced atomically."""
    from infinity_backend.flash_attn_stand_in import stand_in_module

    monkeypatch.setitem(sys.modules, "flash_attn", stand_in_module())   # removed again after the test
    threads = torch.get_num_threads()
    out = tmp_path / "infinity_shape.json"
    out.write_text("old")
    os.link(out, tmp_path / "old_link")   # an in-place write would change this file too
    try:
        assert _bench().main(REHEARSAL + ["--src", INFINITY_SRC, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["infinity_shape.json", "infinity_shape.md", "old_link"]
    assert (tmp_path / "old_link").read_text() == "old"
    result = json.loads(out.read_text())
    assert result["complete"] and result["pool"] == 2 and result["peak_memory_source"]
    rows = {(r["schedule"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(s, b) for s in SCHEDULES for b in (1, 2)} and len(result["rows"]) == 10
    for (name, b), r in rows.items():
        assert r["error"] is None and r["repeats"] == 1 and r["ms_per_image"] > 0 and r["decode_ms_per_image"] > 0
        assert isinstance(r["peak_memory_bytes"], int) and r["peak_memory_bytes"] > 0
        assert isinstance(r["kv_bytes"], int) and r["kv_bytes"] > 0
        expected = [_predicted_fraction(p, result["arch"]) for p in result["plans"][name]]
        assert math.isclose(r["speedup_predicted"], len(expected) / sum(expected), rel_tol=1e-12)
        assert math.isclose(r["speedup_measured"], rows[("original", b)]["ms_per_image"] / r["ms_per_image"])
    for b in (1, 2):
        assert rows[("original", b)]["speedup_measured"] == 1.0 and rows[("original", b)]["speedup_predicted"] == 1.0
        pruned = [rows[(s, b)] for s in SCHEDULES - {"original"}]
        assert all(r["speedup_predicted"] > 1 for r in pruned)
        by_prediction = sorted(pruned, key=lambda r: r["speedup_predicted"])
        assert [r["flops_fraction"] for r in by_prediction] == sorted((r["flops_fraction"] for r in pruned), reverse=True)
        # the KV cache: what each schedule keeps, measured from the state's tensors
        assert rows[("skip_after_middle", b)]["kv_bytes"] < rows[("fastvar", b)]["kv_bytes"] < rows[("original", b)]["kv_bytes"]
    assert rows[("original", 2)]["kv_bytes"] == 2 * rows[("original", 1)]["kv_bytes"]
    md = out.with_suffix(".md").read_text()
    assert "| schedule | batch | FLOPs frac | ms/img | measured × | predicted ×" in md
    assert all(f"| {s} | {b} |" in md for s in SCHEDULES for b in (1, 2)) and "INCOMPLETE" not in md


@needs_infinity
def test_max_seconds_cuts_repeats_but_never_below_one(tmp_path, monkeypatch):
    from infinity_backend.flash_attn_stand_in import stand_in_module

    monkeypatch.setitem(sys.modules, "flash_attn", stand_in_module())
    threads = torch.get_num_threads()
    out = tmp_path / "cut.json"
    argv = REHEARSAL[:6] + ["--batch-sizes", "1", "--repeats", "3", "--max-seconds", "0.001", "--threads", "1"]
    try:
        assert _bench().main(argv + ["--src", INFINITY_SRC, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 5 and all(r["repeats"] == 1 and r["ms_per_image"] > 0 for r in rows)
