"""Infinity-2B-shaped timings: random weights through our Infinity generator path, pruning schedules.

    PYTHONUNBUFFERED=1 python3 benchmarks/bench_infinity_shape.py --device cuda --batch-sizes 1 4 8 \\
        --repeats 3 --max-seconds 300 --out results/infinity_shape.json          # GPU; $INFINITY_SRC or --src
    python benchmarks/bench_infinity_shape.py --arch tiny --device cpu --dtype fp32 --batch-sizes 1 2 \\
        --repeats 1 --threads 1 --out /tmp/infinity_shape.json                    # CPU rehearsal

Upstream's ``Infinity`` and BSQ VAE classes with the shape of ``--arch`` (Infinity-2B: 32 blocks, width
2048, 16 heads, 13 scales to 64x64 tokens at pn 1M) and random weights drawn on the device, stepped by
``InfinityGenerator`` (CFG 4) and decoded; text from ``RandomTextEncoder`` (T5's width, 64 tokens).
Schedules ``original``, ``fastvar``, ``skip_after_middle``, and two per-image mixes over a pool of
P = max(--batch-sizes, 2) images run ceil(P / b) batches of b (``mixed_fastvar_original``: even images
FastVAR's, odd ones unpruned; ``mixed_agent_like``: bench_batched.py's per-image ratios). Per (schedule,
batch): transformer ms per image (CUDA synchronised), median of round-robin repeats after a warm-up;
decode ms; measured and FLOPs-predicted speed-up over ``original``; peak memory; KV bytes. Failing
units become error rows; ``--max-seconds`` cuts repeats (never below one); JSON and markdown are
rewritten atomically after each batch size. Details: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import re
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


TINY = "tiny"
#: nn.init functions whose fills of large parameters are drawn on the device instead (``--init device``)
_DEFERRABLE = (nn.init.uniform_, nn.init.normal_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_,
               nn.init.xavier_uniform_, nn.init.xavier_normal_)
_DEFER_MIN_NUMEL = 1 << 12   # smaller fills (biases) cost nothing and stay where upstream draws them


class BenchError(Exception):
    """Bad input or environment: printed as one line (exit status 2), never as a traceback."""


def arch_options(name: str, device: torch.device, dtype: str, src: str | None):
    """InfinityOptions of the shape built: ``tiny`` (infinity_backend/tiny.py's: pn 0.06M, CFG 3, 16-token
    prompts, 128-wide text) or a MODEL_TYPES preset (pn 1M, CFG 4, 64-token prompts, T5-XL's 2048)."""
    from infinity_backend.options import InfinityOptions
    from infinity_backend.tiny import TINY_MODEL, TINY_T5, TINY_VAE

    tiny = name == TINY
    return InfinityOptions(src=src, loader="direct", model_type=name, model_kwargs=dict(TINY_MODEL) if tiny else None,
                           vae_kwargs=dict(TINY_VAE) if tiny else None, pn="0.06M" if tiny else "1M",
                           text_channels=TINY_T5["d_model"] if tiny else 2048, cfg=3.0 if tiny else 4.0, tau=0.5,
                           device=str(device), bf16=dtype == "bf16", flops_text_tokens=16 if tiny else 64)


class RandomTextEncoder:
    """T5 stand-in: each prompt -> ``tokens`` random feature vectors of width ``channels`` (a fixed table
    indexed by the prompt's UTF-8 bytes, cycled), as upstream's compact tuple: kv (B*tokens, C) float32,
    lens, cu_seqlens (B+1,) int32, max_len."""

    def __init__(self, channels: int, tokens: int, device: torch.device, seed: int = 0) -> None:
        self.table_VC = torch.randn(256, channels, generator=torch.Generator().manual_seed(seed)).to(device)
        self.tokens, self.device = tokens, device

    @torch.no_grad()
    def __call__(self, prompts: list[str]):
        B, T = len(prompts), self.tokens
        ids = [c for p in prompts for c in ((list(p.encode()) or [0]) * T)[:T]]
        kv_NC = self.table_VC.index_select(0, torch.tensor(ids, device=self.device))
        return kv_NC, [T] * B, torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=self.device), T


class DeferredFills(TorchFunctionMode):
    """While active, nn.init's random fills of large Parameters are recorded, not run (their memory is
    never touched on the CPU); ``replay`` runs them once the modules sit on the device. Parameters keep
    their identity through ``.to()`` / ``.bfloat16()``, so a replayed fill lands in the moved tensor. A
    later in-place write to a pending parameter (upstream's trunc_normal_ of ``lvl_embed``) runs its fill
    first, so what upstream draws last stays."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, tuple[Callable, tuple, dict]] = {}   # by storage address

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = args[0] if args else kwargs.get("tensor")
        if (func in _DEFERRABLE and isinstance(t, nn.Parameter) and t.numel() >= _DEFER_MIN_NUMEL
                and kwargs.get("generator") is None):
            self.pending[t.untyped_storage().data_ptr()] = (func, args, kwargs)
            return t
        name = getattr(func, "__name__", "")
        if self.pending and name.endswith("_") and not name.startswith("_") and name != "requires_grad_":
            for x in (*args, *kwargs.values()):
                fill = self.pending.pop(x.untyped_storage().data_ptr(), None) if isinstance(x, torch.Tensor) else None
                if fill is not None:
                    fill[0](*fill[1], **fill[2])
        return func(*args, **kwargs)

    def replay(self, modules: list[nn.Module]) -> int:
        """Run the pending fills; RuntimeError if a fill's parameter is no longer one of ``modules``'."""
        owned = {id(p) for m in modules for p in m.parameters()}
        for func, args, kwargs in self.pending.values():
            t = args[0] if args else kwargs["tensor"]
            if id(t) not in owned:
                raise RuntimeError(f"a deferred {func.__name__} lost its parameter {tuple(t.shape)}")
            with torch.no_grad():
                func(*args, **kwargs)
        return len(self.pending)


def build_generator(opts, norms: str, init: str):
    """(InfinityGenerator with random weights, upstream namespace, info dict) for ``opts`` (arch_options)."""
    from infinity_backend.arch import upstream_scale_schedule
    from infinity_backend.direct import build_transformer, build_vae, eager_fused_norms
    from infinity_backend.flash_attn_stand_in import install_if_missing
    from infinity_backend.generator import InfinityGenerator
    from infinity_backend.options import InfinityOptionsError
    from infinity_backend.upstream import import_upstream

    device = torch.device(opts.device)
    try:
        opts.validate(require_checkpoints=False)
        real_flash = not install_if_missing()   # upstream imports flash_attn unconditionally
        up = import_upstream(opts.resolved_src())
    except (InfinityOptionsError, ImportError) as e:
        raise BenchError(str(e)) from None
    t0 = time.perf_counter()
    torch.manual_seed(0)
    fills = DeferredFills() if init == "device" else None
    with fills if fills is not None else nullcontext():
        vae = build_vae(opts, device)
        model = build_transformer(up, opts, vae, device)
    try:
        deferred = fills.replay([vae, model]) if fills is not None else 0
    except RuntimeError as e:   # not seen: upstream would have replaced a parameter after drawing it
        raise BenchError(f"drawing the weights on the device failed ({e}); rerun with --init cpu") from None
    if norms == "eager":
        eager_fused_norms(model)
    bad = [n for n, t in [*model.named_parameters(), *vae.named_parameters()] if not bool(torch.isfinite(t).all())]
    if bad:
        raise BenchError(f"random weights not finite in {bad[:3]} (--init {init}); rerun with --init cpu")
    model.rng = torch.Generator(device=device)
    sched = upstream_scale_schedule(up.dynamic_resolution, 1.0, opts.pn)
    gen = InfinityGenerator(model, vae, RandomTextEncoder(opts.text_channels, opts.flops_text_tokens, device), sched,
                            opts, device=device)
    info = {"init": init, "deferred_fills": deferred, "build_s": time.perf_counter() - t0,
            "transformer_params": sum(p.numel() for p in model.parameters()),
            "vae_params": sum(p.numel() for p in vae.parameters()), "real_flash_attn": real_flash,
            "norms": "torch.compile'd (upstream)" if norms == "compiled" and device.type == "cuda" else "eager"}
    return gen, up, info


def schedule_plans(num_scales: int, pool: int) -> dict[str, list[list[float]]]:
    """Per schedule, one ratio list per image: one list for the uniform schedules, ``pool`` for the mixes."""
    from embedded.model_card import heavy_skip_ratios
    from generator.schedules import FastVARSchedule, schedule_ratios

    spec = importlib.util.spec_from_file_location("_bench_batched", Path(__file__).with_name("bench_batched.py"))
    bench_batched = importlib.util.module_from_spec(spec)   # a sibling script: benchmarks/ is no package
    spec.loader.exec_module(bench_batched)
    fv = schedule_ratios(FastVARSchedule(), num_scales)
    full = [0.0] * num_scales
    return {"original": [full], "fastvar": [fv], "skip_after_middle": [heavy_skip_ratios(num_scales)],
            "mixed_fastvar_original": [fv if i % 2 == 0 else full for i in range(pool)],
            "mixed_agent_like": bench_batched.agent_like_ratios(num_scales, pool)}


def unit_batches(plan: list[list[float]], batch: int) -> list[tuple[list[str], list[int], Any]]:
    """The (prompts, seeds, schedule) batches of one timed unit: one batch of ``batch`` images for a
    uniform plan; a mix's images in consecutive batches of ``batch``, each image with its own ratios."""
    from generator.schedules import PerImageSchedules, RatioListSchedule

    if len(plan) == 1:
        return [([f"a photo of object {i}" for i in range(batch)], list(range(batch)), RatioListSchedule(tuple(plan[0])))]
    chunks = [list(range(s, min(s + batch, len(plan)))) for s in range(0, len(plan), batch)]
    return [([f"a photo of object {i}" for i in idx], idx, PerImageSchedules(tuple(RatioListSchedule(tuple(plan[i]))
                                                                                  for i in idx))) for idx in chunks]


class MemoryProbe:
    """Peak memory of a unit in bytes: CUDA's max_memory_allocated, or on the CPU the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs); ``source`` None where neither works."""

    def __init__(self, device: torch.device) -> None:
        self.cuda, self.device = device.type == "cuda", device
        self.source = "torch.cuda.max_memory_allocated (weights included)" if self.cuda else None
        if not self.cuda:
            try:
                self.reset()
                self.source = "process peak RSS, VmHWM (interpreter, libraries, weights included)"
            except OSError:
                pass

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> int | None:
        if self.cuda or not self.source:
            return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else None
        with open("/proc/self/status") as f:
            return 1024 * int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


def state_bytes(state) -> tuple[int, int]:
    """(KV cache bytes, pruning-cache bytes) an InfinityState holds, each tensor storage counted once."""
    def total(tensors) -> int:
        seen = {}
        for t in tensors:
            if isinstance(t, torch.Tensor):
                seen[(str(t.device), t.untyped_storage().data_ptr())] = t.untyped_storage().nbytes()
        return sum(seen.values())

    return (total(x for layer in state.kv for chunk in layer for x in chunk),
            total(t for cache in state.prune_cache.values() for t in cache.tensors.values()))


def run_unit(gen, batches: list, sync: Callable[[], None], probe: MemoryProbe) -> dict:
    """Generate and decode every batch of a unit: seconds (transformer, decode), per-image FLOPs fractions,
    the largest KV / pruning cache of one batch (bytes), peak memory (bytes)."""
    from generator.schedules import run_schedule

    full = gen.flops_full()
    out = {"transformer_s": 0.0, "decode_s": 0.0, "fractions": [], "kv": 0, "prune": 0}
    if probe.source:
        probe.reset()
    for prompts, seeds, schedule in batches:
        sync()
        t0 = time.perf_counter()
        state = run_schedule(gen, gen.start(prompts, seeds), schedule)
        sync()
        t1 = time.perf_counter()
        gen.decode(state)
        sync()
        out["transformer_s"] += t1 - t0
        out["decode_s"] += time.perf_counter() - t1
        out["fractions"] += [f / full for f in state.flops_used_per_image]
        kv, prune = state_bytes(state)
        out["kv"], out["prune"] = max(out["kv"], kv), max(out["prune"], prune)
        del state
    out["peak"] = probe.peak()
    return out


def summarise(name: str, batch: int, plan: list, samples: list[dict], error: str | None) -> dict:
    """One table row from a schedule's timed units at one batch size (ms per image: median over repeats)."""
    images = batch if len(plan) == 1 else len(plan)
    row: dict[str, Any] = {"schedule": name, "batch": batch, "mixed": len(plan) > 1, "images_per_unit": images,
                           "batches_per_unit": -(-images // batch), "repeats": len(samples), "error": error,
                           "ms_per_image": None, "speedup_measured": None, "measured_over_predicted": None}
    if not samples:
        return row
    fr = samples[-1]["fractions"]
    ms = [1000 * s["transformer_s"] / images for s in samples]
    peaks = [s["peak"] for s in samples if s["peak"] is not None]
    row.update(flops_fraction=statistics.fmean(fr), flops_fraction_per_image=fr,
               speedup_predicted=1.0 / statistics.fmean(fr), ms_per_image=statistics.median(ms), ms_per_image_samples=ms,
               decode_ms_per_image=statistics.median(1000 * s["decode_s"] / images for s in samples),
               peak_memory_bytes=max(peaks) if peaks else None, kv_bytes=samples[-1]["kv"],
               prune_cache_bytes=samples[-1]["prune"])
    return row


def bench_batch_size(gen, batch: int, plans: dict, repeats: int, reserve_s: Callable[[float], float],
                     deadline: float | None, sync: Callable[[], None], probe: MemoryProbe,
                     log: Callable[[str], None]) -> list[dict]:
    """One warm-up round, then up to ``repeats`` timed rounds (schedules round-robin) while the deadline
    leaves room for ``reserve_s(last round's seconds)``; rows with measured and predicted speed-ups."""
    units = {name: unit_batches(plan, batch) for name, plan in plans.items()}
    samples: dict[str, list] = {name: [] for name in units}
    errors: dict[str, str] = {}

    def one_round(label: str, record: bool) -> float:
        t_round = time.perf_counter()
        for name, batches in units.items():
            if name in errors:
                continue
            try:
                r = run_unit(gen, batches, sync, probe)
            except Exception as e:   # noqa: BLE001 - one failing schedule must not lose the others' rows
                oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)
                errors[name] = "out of memory" if oom else f"{type(e).__name__}: {e}".splitlines()[0].replace("|", "/")
                if not oom:
                    traceback.print_exc()
                r = None
            if r is None:   # outside the except block: its traceback no longer holds the unit's tensors
                gc.collect()
                if gen.device.type == "cuda":
                    torch.cuda.empty_cache()
                log(f"batch {batch} {label} {name}: {errors[name]}; not run again")
                continue
            if record:
                samples[name].append(r)
            log(f"batch {batch} {label} {name}: {r['transformer_s']:.3f} s generate + {r['decode_s']:.3f} s decode")
        return time.perf_counter() - t_round

    log(f"batch {batch}: warm-up round (not timed{'; compiles kernels' if gen.device.type == 'cuda' else ''})")
    last = one_round("warm-up", False)
    done = 0
    while done < repeats:
        if done > 0 and deadline is not None and time.perf_counter() + last + reserve_s(last) > deadline:
            log(f"batch {batch}: stopping after {done} of {repeats} repeats (--max-seconds)")
            break
        last = one_round(f"repeat {done + 1}/{repeats}", True)
        done += 1
    rows = [summarise(name, batch, plans[name], samples[name], errors.get(name)) for name in units]
    base = rows[0]["ms_per_image"]   # rows[0] is "original"
    for row in rows:
        if base is not None and row["ms_per_image"]:
            row["speedup_measured"] = base / row["ms_per_image"]
            row["measured_over_predicted"] = row["speedup_measured"] / row["speedup_predicted"]
    return rows


def _mem(x: int | None) -> str:   # bytes, human-readable
    return "n/a" if x is None else f"{x / 1e9:.2f} GB" if x >= 1e8 else f"{x / 1e6:.1f} MB"


def format_table(result: dict) -> str:
    """The result as markdown: the setting, then one row per (schedule, batch)."""
    a, b = result["arch"], result["build"]
    lines = [f"{a['name']} @ pn {a['pn']} ({a['scales']} scales, {a['tokens']:,} tokens), {result['dtype']}, "
             f"{result['device_name']}, torch {result['torch']}, {result['date']}",
             f"cross-attention: {result['cross_attention']}; adaLN norm: {b['norms']}; weights drawn on "
             f"{'the device' if b['init'] == 'device' else 'the CPU'}; peak memory: {result['peak_memory_source'] or 'n/a'}",
             "", "| schedule | batch | FLOPs frac | ms/img | measured × | predicted × | meas/pred | decode ms/img "
             "| peak mem | KV mem (batch) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["ms_per_image"] is None:
            lines.append(f"| {r['schedule']} | {r['batch']} | | {r['error'] or 'not run'} | | | | | | |")
            continue
        meas, ratio = ("n/a" if x is None else f"{x:.2f}" for x in (r["speedup_measured"], r["measured_over_predicted"]))
        lines.append(f"| {r['schedule']} | {r['batch']} | {r['flops_fraction']:.3f} | {r['ms_per_image']:.1f} | {meas} | "
                     f"{r['speedup_predicted']:.2f} | {ratio} | {r['decode_ms_per_image']:.1f} | "
                     f"{_mem(r['peak_memory_bytes'])} | {_mem(r['kv_bytes'])} |")
    lines += ["", f"ms/img: transformer (start + every scale, sampling included), median of the repeats after a warm-up; "
              f"mixed rows: a pool of {result['pool']} images in batches of the row's size. Analytic KV estimate "
              f"(infinity_backend/memory.py): {_mem(result['kv_estimate_bytes_per_image'])} per unpruned image."
              + ("" if result["complete"] else " INCOMPLETE: the run stopped early.")]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: Path) -> None:
    """``out`` (JSON) and the same name with .md (markdown), each written atomically."""
    from generator.weights_io import atomic_write_bytes, atomic_write_json, jsonable

    atomic_write_json(out, jsonable(result))
    atomic_write_bytes(out.with_suffix(".md"), format_table(result).encode())


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device, str]:
    """Arguments checked before anything is built: (args, device, dtype); BenchError names a bad value."""
    from infinity_backend.arch import MODEL_TYPES
    from infinity_backend.options import InfinityOptions, InfinityOptionsError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="infinity_2b", choices=[TINY, *sorted(MODEL_TYPES)], help="tiny: CPU rehearsal")
    ap.add_argument("--device", default="cuda", help="cuda[:N] or cpu (cpu: --arch tiny only)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 (the only one) on the CPU")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="cut repeats to end near this (0: no cap)")
    ap.add_argument("--out", default="results/infinity_shape.json", help="JSON path; markdown beside it (.md)")
    ap.add_argument("--src", default=None, help="upstream Infinity checkout (default $INFINITY_SRC)")
    ap.add_argument("--init", default="device", choices=["device", "cpu"], help="where the random weights are drawn")
    ap.add_argument("--norms", default="compiled", choices=["compiled", "eager"], help="upstream's compiled adaLN (CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    for ok, message in [
            (min(a.batch_sizes) >= 1 and len(set(a.batch_sizes)) == len(a.batch_sizes),
             f"--batch-sizes must be distinct integers >= 1, got {a.batch_sizes}"),
            (a.repeats >= 1, f"--repeats must be >= 1, got {a.repeats}"),
            (a.max_seconds >= 0, f"--max-seconds must be >= 0 (0: no cap), got {a.max_seconds}"),
            (a.threads is None or a.threads >= 1, f"--threads must be >= 1, got {a.threads}"),
            (a.out.endswith(".json"), f"--out must name a .json file (the .md goes beside it), got {a.out!r}")]:
        if not ok:
            raise BenchError(message)
    try:
        device = torch.device(a.device)
    except (RuntimeError, ValueError):
        raise BenchError(f"--device {a.device!r} is not a device; use cuda, cuda:N or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise BenchError(f"--device {a.device!r}: only cuda[:N] and cpu are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {a.device} requested but CUDA is not available on this machine (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); run it on the GPU machine, "
                         "or rehearse on the CPU with --arch tiny --device cpu --dtype fp32")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise BenchError(f"--device {a.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    dtype = a.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu" and (dtype != "fp32" or a.arch != TINY):
        raise BenchError(f"on the CPU only --arch {TINY} --dtype fp32 runs (the generator computes float32 there and "
                         f"a full-size model takes hours), got --arch {a.arch} --dtype {dtype}")
    try:
        InfinityOptions(src=a.src).resolved_src()
    except InfinityOptionsError as e:
        raise BenchError(f"{e} (--src)") from None
    return a, device, dtype


def progress() -> Callable[[str], None]:
    """A logger of timestamped lines, flushed at once (readable through a pipe without PYTHONUNBUFFERED)."""
    t0 = time.perf_counter()
    return lambda message: print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - t0:7.1f} s] {message}", flush=True)


def run(args: argparse.Namespace, device: torch.device, dtype: str) -> int:
    """Build, time every batch size (outputs rewritten after each), print the table."""
    from infinity_backend.memory import memory_estimate

    log = progress()
    deadline = time.perf_counter() + args.max_seconds if args.max_seconds > 0 else None
    torch.set_num_threads(args.threads or torch.get_num_threads())
    opts = arch_options(args.arch, device, dtype, args.src)
    log(f"building {args.arch} with random weights on {device}, {dtype}, torch {torch.__version__}")
    gen, _, info = build_generator(opts, args.norms, args.init)
    log(f"built in {info['build_s']:.1f} s: {info['transformer_params'] / 1e6:,.1f} M transformer parameters, "
        f"{info['vae_params'] / 1e6:,.1f} M VAE; weights drawn on {info['init']} ({info['deferred_fills']} deferred fills)")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    pool = max(2, *args.batch_sizes)
    plans, probe, out = schedule_plans(gen.num_scales, pool), MemoryProbe(device), Path(args.out)
    est = memory_estimate(gen.arch, list(gen.scale_hw), gen.guided, gen.prune_layers, dtype == "bf16")
    result = {"benchmark": "bench_infinity_shape", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": args.argv,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "torch": torch.__version__, "dtype": dtype, "pool": pool, "complete": False, "build": info,
              "arch": {"name": args.arch, "pn": opts.pn, "depth": gen.depth, "width": gen.arch.width,
                       "heads": gen.arch.heads, "scales": gen.num_scales, "tokens": sum(h * w for h, w in gen.scale_hw),
                       "cfg": opts.cfg, "text_tokens": opts.flops_text_tokens, "prune_layers": list(gen.prune_layers)},
              "flops_full_gflops": gen.flops_full() / 1e9, "kv_estimate_bytes_per_image": est["kv"],
              "peak_memory_source": probe.source, "plans": plans, "rows": []}
    images = {b: 3 * b + 2 * pool for b in args.batch_sizes}   # images one round generates at batch b
    result["cross_attention"] = ("flash-attn (flash_attn_varlen_kvpacked_func)" if info["real_flash_attn"] else
                                 "torch SDPA through infinity_backend.flash_attn_stand_in, one call per block for the "
                                 "batch (flash-attn not installed)")
    for i, b in enumerate(args.batch_sizes):
        rest = args.batch_sizes[i + 1:]   # each still needs a warm-up and one round: ~2 rounds' time
        reserve = (lambda last, b=b, rest=rest: sum(2 * last * images[r] / images[b] for r in rest))
        result["rows"] += bench_batch_size(gen, b, plans, args.repeats, reserve, deadline, sync, probe, log)
        write_outputs(result, out)
        log(f"batch {b} done; wrote {out}")
    result["complete"] = True
    write_outputs(result, out)
    print("\n" + format_table(result), flush=True)
    log(f"done: {out} and {out.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args, device, dtype = parse_args(argv)
        return run(args, device, dtype)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
