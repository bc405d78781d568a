"""Infinity backend: the analytic FLOPs table (always), fail-fast option errors (always), and
equivalence with upstream on CPU (only when INFINITY_SRC / FASTVAR_SRC point to checkouts).

    INFINITY_SRC=/path/to/Infinity FASTVAR_SRC=/path/to/FastVAR python -m pytest -q tests/test_infinity_backend.py

The equivalence tests build a tiny random-weights Infinity (6 blocks, width 64, 2 heads) with a tiny
random T5 and the upstream BSQ VAE (random weights), and compare our scale-by-scale generation with
upstream ``autoregressive_infer_cfg`` for the same seed. Upstream imports ``flash_attn``
unconditionally: an SDPA-based stand-in for the two functions it calls is put in ``sys.modules``
for these tests only.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from infinity_backend import (
    SQUARE_SIDES, InfinityGenerator, InfinityOptions, InfinityOptionsError, T5PromptEncoder,
    flops_table, format_flops_table, make_infinity_generator, square_scale_schedule, upstream_scale_schedule,
)
from infinity_backend.arch import REQUIRED_MODULES
from infinity_backend.cli import main
from generator.schedules import FastVARSchedule, schedule_ratios

INFINITY_SRC = os.environ.get("INFINITY_SRC")
FASTVAR_SRC = os.environ.get("FASTVAR_SRC")
needs_infinity = pytest.mark.skipif(not INFINITY_SRC, reason="set INFINITY_SRC to a FoundationVision/Infinity "
                                    "checkout to run the equivalence tests against upstream")
needs_fastvar = pytest.mark.skipif(not FASTVAR_SRC, reason="set FASTVAR_SRC to a csguoh/FastVAR checkout (repo root "
                                   "or its Infinity/ folder) to run the equivalence test against FastVAR's fork")


# ---- FLOPs model (no checkout, no checkpoint) -------------------------------------------------------

def test_flops_table_infinity_2b_1m():
    t = flops_table("infinity_2b", "1M")
    assert [r["w"] for r in t["rows"]] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    assert t["tokens"] == 10_521 and len(t["rows"]) == 13
    assert (t["depth"], t["width"], t["heads"], t["mlp_hidden"]) == (32, 2048, 16, 8192)
    assert 0.60 <= t["last_two_share"] <= 0.70          # published: the last two scales ~60-70%
    shares = [r["share"] for r in t["rows"]]
    assert shares == sorted(shares) and math.isclose(sum(shares) + t["prefill_gflops"] / t["total_gflops"], 1.0)
    # FastVAR's schedule (32:0.4, 40:0.5, skip 48 and 64) costs well under a third of the unpruned image
    fv = flops_table("infinity_2b", "1M", ratios=schedule_ratios(FastVARSchedule(), 13))
    assert 0.15 < fv["total_gflops"] / t["total_gflops"] < 0.30


def test_flops_cli_runs_without_checkpoint(capsys):
    assert main(["flops", "--model", "infinity_2b", "--pn", "1M"]) == 0
    out = capsys.readouterr().out
    assert "10,521 tokens" in out and "64x64" in out and "last two scales" in out
    assert out.strip() == format_flops_table(flops_table("infinity_2b", "1M")).strip()


# ---- fail-fast errors -------------------------------------------------------------------------------

def _fake_checkout(root: Path) -> Path:
    """Empty files at the module paths (structure check only; nothing is imported from them)."""
    for m in REQUIRED_MODULES:
        (root / m).parent.mkdir(parents=True, exist_ok=True)
        (root / m).write_text("")
    return root


def test_missing_checkout_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("INFINITY_SRC", raising=False)
    with pytest.raises(InfinityOptionsError, match="INFINITY_SRC"):
        InfinityOptions(device="cpu").validate(require_checkpoints=False)
    bad = tmp_path / "nowhere"
    with pytest.raises(InfinityOptionsError, match=str(bad)):
        InfinityOptions(src=str(bad), device="cpu").validate(require_checkpoints=False)


def test_checkout_without_modules(tmp_path):
    (tmp_path / "infinity" / "models").mkdir(parents=True)
    with pytest.raises(InfinityOptionsError, match=r"not an Infinity checkout: missing infinity/models/infinity.py"):
        InfinityOptions(src=str(tmp_path), device="cpu").validate(require_checkpoints=False)


def test_missing_checkpoints_fail_before_any_load(tmp_path):
    src = _fake_checkout(tmp_path / "Infinity")
    model = tmp_path / "infinity_2b_reg.pth"
    t0 = time.perf_counter()
    with pytest.raises(InfinityOptionsError, match=str(model)):
        make_infinity_generator(src=str(src), model_path=str(model), vae_path=str(model), device="cpu",
                                text_encoder_ckpt=str(tmp_path))
    model.write_bytes(b"")
    vae = tmp_path / "vae.pth"
    with pytest.raises(InfinityOptionsError, match=str(vae)):
        make_infinity_generator(src=str(src), model_path=str(model), vae_path=str(vae), device="cpu",
                                text_encoder_ckpt=str(tmp_path))
    vae.write_bytes(b"")
    with pytest.raises(InfinityOptionsError, match="no config.json"):
        make_infinity_generator(src=str(src), model_path=str(model), vae_path=str(vae), device="cpu",
                                text_encoder_ckpt=str(tmp_path))
    with pytest.raises(InfinityOptionsError, match="unknown Infinity option"):
        make_infinity_generator(src=str(src), model_pth=str(model))
    # FastVAR's repo root is accepted: its Infinity/ folder is used
    assert InfinityOptions(src=str(tmp_path), device="cpu").resolved_src() == src
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu(tmp_path):
    with pytest.raises(InfinityOptionsError, match="CUDA is not available"):
        InfinityOptions(src=str(_fake_checkout(tmp_path)), device="cuda").validate(require_checkpoints=False)


@pytest.mark.parametrize("bad, match", [({"pn": "2M"}, "unknown pn"), ({"model_type": "infinity_3b"}, "unknown model_type"),
                                        ({"tau": 0}, "tau must be > 0"), ({"cfg_insertion_layer": 3}, "cfg_insertion_layer"),
                                        ({"prune_layers": (5, 40)}, "prune_layers"), ({"vae_type": 31}, "vae_type")])
def test_bad_option_values(tmp_path, bad, match):
    with pytest.raises(InfinityOptionsError, match=match):
        InfinityOptions.from_dict({"src": str(_fake_checkout(tmp_path)), "device": "cpu", **bad}).validate(False)


# ---- equivalence with upstream (CPU, tiny random weights) -------------------------------------------

def _flash_attn_stand_in() -> types.ModuleType:
    """SDPA versions of the two flash_attn functions upstream calls: the stand-in the direct loader installs."""
    from infinity_backend.flash_attn_stand_in import stand_in_module

    return stand_in_module()


class CharTokenizer:
    """Hugging Face-style call signature over characters (the tiny T5 has no vocabulary files)."""

    def __call__(self, text, max_length, padding, truncation, return_tensors):
        ids = torch.zeros(len(text), max_length, dtype=torch.long)
        mask = torch.zeros(len(text), max_length, dtype=torch.long)
        for i, t in enumerate(text):
            codes = [2 + (ord(ch) % 60) for ch in t][: max_length - 1] + [1]
            ids[i, :len(codes)] = torch.tensor(codes)
            mask[i, :len(codes)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _tiny_upstream(src: str, pn: str, monkeypatch):
    """(upstream namespace, model, vae, text encoder, scale schedule) with random weights on CPU."""
    from transformers import T5Config, T5EncoderModel

    from infinity_backend import import_upstream

    monkeypatch.setitem(sys.modules, "flash_attn", _flash_attn_stand_in())
    up = import_upstream(InfinityOptions(src=src).resolved_src())
    # run_infinity builds with fused_norm=True (torch.compile'd); run its eager body on CPU
    fn = up.infinity.fused_ada_layer_norm
    monkeypatch.setattr(up.infinity, "fused_ada_layer_norm", getattr(fn, "_torchdynamo_orig_callable", fn))
    vae_mod = __import__("infinity.models.bsq_vae.vae", fromlist=["vae_model"])
    torch.manual_seed(0)
    vae = vae_mod.vae_model({}, "dynamic", 32, 2 ** 32, patch_size=16, encoder_ch_mult=[1, 2, 4, 4, 4],
                            decoder_ch_mult=[1, 2, 4, 4, 4], test_mode=True)
    model = up.infinity.Infinity(
        vae_local=vae, text_channels=128, text_maxlen=512, shared_aln=True, raw_scale_schedule=None,
        checkpointing="full-block", customized_flash_attn=False, fused_norm=True, pad_to_multiplier=128,
        use_flex_attn=False, add_lvl_embeding_only_first_block=1, use_bit_label=1, rope2d_each_sa_layer=1,
        rope2d_normalized_by_hw=2, pn=pn, apply_spatial_patchify=0, inference_mode=True, train_h_div_w_list=[1.0],
        depth=6, embed_dim=64, num_heads=2, mlp_ratio=4, block_chunks=2, drop_path_rate=0.0).eval()
    model.requires_grad_(False)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=128, d_kv=32, d_ff=256, num_layers=1, num_heads=4)).eval()
    enc = T5PromptEncoder(CharTokenizer(), t5)
    sched = upstream_scale_schedule(up.dynamic_resolution, 1.0, pn)
    return up, model, vae, enc, sched


def _spy_codes(vae, monkeypatch) -> list:
    """Record the bit labels upstream turns into codes (upstream returns only the image)."""
    seen, orig = [], vae.quantizer.lfq.indices_to_codes

    def spy(indices, *a, **kw):
        seen.append(indices.detach().clone())
        return orig(indices, *a, **kw)

    monkeypatch.setattr(vae.quantizer.lfq, "indices_to_codes", spy)
    return seen


def _upstream_run(model, vae, enc, sched, prompt, seed, cfg, tau, insertion, ret_img):
    n = len(sched)
    return model.autoregressive_infer_cfg(
        vae=vae, scale_schedule=sched, label_B_or_BLT=enc([prompt]), g_seed=seed, B=1,
        negative_label_B_or_BLT=None, cfg_sc=3, cfg_list=[cfg] * n, tau_list=[tau] * n, top_k=900, top_p=0.97,
        returns_vemb=1, ratio_Bl1=None, gumbel=0, norm_cfg=False, cfg_exp_k=0.0, cfg_insertion_layer=[insertion],
        vae_type=32, softmax_merge_topk=-1, ret_img=ret_img, trunk_scale=1000, gt_leak=0, gt_ls_Bl=None,
        inference_mode=True, sampling_per_bits=1)


@needs_infinity
def test_upstream_schedule_table_matches_fallback(monkeypatch):
    from infinity_backend import import_upstream

    monkeypatch.setitem(sys.modules, "flash_attn", _flash_attn_stand_in())
    up = import_upstream(InfinityOptions(src=INFINITY_SRC).resolved_src())
    for pn in ("0.06M", "0.25M", "0.60M", "1M"):
        assert upstream_scale_schedule(up.dynamic_resolution, 1.0, pn) == square_scale_schedule(pn)
    assert [w for _, _, w in upstream_scale_schedule(up.dynamic_resolution, 1.0, "1M")] == list(SQUARE_SIDES)


@needs_infinity
@pytest.mark.parametrize("insertion, with_image", [(0, True), (-2, False)])
def test_ratio_zero_matches_upstream(monkeypatch, insertion, with_image):
    up, model, vae, enc, sched = _tiny_upstream(INFINITY_SRC, "0.06M", monkeypatch)
    seen = _spy_codes(vae, monkeypatch)
    prompt, seed, cfg, tau = "a red fox in the snow", 7, 3.0, 0.5
    _, _, img_up = _upstream_run(model, vae, enc, sched, prompt, seed, cfg, tau, insertion, with_image)
    codes_up = [s.squeeze(1) for s in seen]
    seen.clear()

    gen = InfinityGenerator(model, vae, enc, sched, InfinityOptions(
        device="cpu", cfg=cfg, tau=tau, cfg_insertion_layer=insertion, rng="upstream", bf16=False), device="cpu")
    state = gen.start([prompt], [seed])
    while not state.finished:
        rep = gen.step(state, 0.0)
        assert rep.kept == rep.tokens and rep.unconditional
    assert len(codes_up) == gen.num_scales
    for k in range(gen.num_scales):
        assert torch.equal(state.codes[k], codes_up[k]), f"codes differ at scale {k}"
    if with_image:
        ours = gen.decode(state, clamp=False)
        ours_u8 = ours.permute(0, 2, 3, 1).mul_(255).to(torch.uint8).flip(dims=(3,))
        assert torch.equal(ours_u8, img_up)
        assert gen.decode(state).shape == (1, 3, 256, 256)


@needs_fastvar
def test_fastvar_schedule_matches_fastvar_fork(monkeypatch):
    up, model, vae, enc, sched = _tiny_upstream(FASTVAR_SRC, "1M", monkeypatch)
    assert "fastvar" in type(model.blocks[0] if hasattr(model, "blocks") else model.block_chunks[0].module[0]).__name__.lower()
    seen = _spy_codes(vae, monkeypatch)
    prompt, seed, cfg, tau = "a lighthouse at dusk", 3, 3.0, 0.5
    _upstream_run(model, vae, enc, sched, prompt, seed, cfg, tau, 0, False)
    codes_up = [s.squeeze(1) for s in seen]
    seen.clear()

    gen = InfinityGenerator(model, vae, enc, sched, InfinityOptions(
        device="cpu", cfg=cfg, tau=tau, rng="upstream", bf16=False, prune_layers=(3, 28)), device="cpu")
    ratios = schedule_ratios(FastVARSchedule(), gen.num_scales)
    assert dict(zip(gen.scale_widths, ratios)) == {1: 0, 2: 0, 4: 0, 6: 0, 8: 0, 12: 0, 16: 0, 20: 0, 24: 0,
                                                   32: 0.4, 40: 0.5, 48: 1.0, 64: 1.0}
    state = gen.start([prompt], [seed])
    for r in ratios:
        gen.step(state, r)
    ran = [k for k, r in enumerate(ratios) if r < 1]
    assert len(codes_up) == len(ran) == 11
    for k, c in zip(ran, codes_up):
        assert torch.equal(state.codes[k], c), f"codes differ at scale {k} (width {gen.scale_widths[k]})"
    assert state.codes[11] is None and state.codes[12] is None
    assert [r.kept for r in state.reports[9:11]] == [1024 - 409, 1600 - 800]
    # the accumulated codes (what the image is decoded from) equal FastVAR's summed codes
    q = vae.quantizer
    summed = 0
    for c in codes_up:
        summed = summed + F.interpolate(q.lfq.indices_to_codes(c.unsqueeze(1), label_type="bit_label"),
                                        size=sched[-1], mode=q.z_interplote_up)
    assert torch.equal(state.summed_codes, summed)
    # and the FLOPs accounting agrees with the analytic model of the same schedule
    assert math.isclose(state.flops_used / gen.flops_full(), gen.flops_fraction(ratios), rel_tol=1e-12)


@needs_infinity
def test_state_copy_drop_unconditional_and_flops(monkeypatch):
    """Per-(seed, scale) RNG: a copied state continues exactly like the original, also through a scale
    without the unconditional branch (per-branch KV), a pruned scale and a skipped one; the per-step
    FLOPs add up to the analytic schedule FLOPs with the same branch flags."""
    up, model, vae, enc, sched = _tiny_upstream(INFINITY_SRC, "0.06M", monkeypatch)
    gen = InfinityGenerator(model, vae, enc, sched, InfinityOptions(device="cpu", cfg=3.0, tau=0.5, bf16=False),
                            device="cpu")
    ratios, drops = [0, 0, 0, 0, 0.5, 0.3, 1.0], [False, False, True, False, False, False, False]
    a = gen.start(["a small boat"], [11])
    for k in range(3):
        gen.step(a, ratios[k], drop_unconditional=drops[k])
    b = a.copy()
    for st in (a, b):
        for k in range(3, gen.num_scales):
            gen.step(st, ratios[k], drop_unconditional=drops[k])
    for k in range(gen.num_scales - 1):
        assert torch.equal(a.codes[k], b.codes[k])
    assert a.codes[-1] is None and a.reports[-1].skipped and not a.reports[2].unconditional
    assert torch.equal(a.summed_codes, b.summed_codes)
    flags = [not d for d in drops]
    assert [r.flops for r in a.reports] == pytest.approx(gen.schedule_flops(ratios, flags), rel=1e-12)
    assert a.reports[4].kept == 64 - 32 and a.reports[5].kept == 144 - 43
    # total FLOPs: the VAE decoder and T5 (outside the transformer's prefill), counted once and cached
    from generator.flop_count import count_flops
    from generator.protocol import total_flops_fraction

    assert gen.text_flops() == count_flops(lambda: enc(["anything"])) > 0  # T5 pads: every prompt costs the same
    assert gen.decode_flops() > 0 and gen.decode_flops() is gen.decode_flops()
    tf = total_flops_fraction(gen, ratios, flags)
    assert gen.flops_fraction(ratios, flags) < tf < 1.0
    assert gen.accumulated_codes(a).shape == (1, 32, 16, 16) and 0 < float(a.last_entropy_B[0]) <= gen.max_entropy


@needs_infinity
def test_generate_writer_and_observation_work_on_the_infinity_backend(monkeypatch, tmp_path):
    """The backend-neutral pieces (per-scale intermediates and DFT spectra of generate.py, the agent's
    observation) run unchanged on an Infinity generator."""
    import numpy as np

    from envs.observation import ObservationBuilder
    from generate import IntermediateWriter, run_one
    from generator.schedules import RatioListSchedule

    up, model, vae, enc, sched = _tiny_upstream(INFINITY_SRC, "0.06M", monkeypatch)
    gen = InfinityGenerator(model, vae, enc, sched, InfinityOptions(device="cpu", cfg=3.0, tau=0.5, bf16=False),
                            device="cpu")
    writer = IntermediateWriter(gen, tmp_path, images=True, dft=True, image_number=1)
    ratios = [0.0] * (gen.num_scales - 2) + [0.5, 1.0]
    _, state, _ = run_one(gen, RatioListSchedule(tuple(ratios)), "a small boat", 3, writer)
    n = gen.num_scales
    assert len(list((tmp_path / "summed_codes").iterdir())) == n - 1  # the skipped last scale writes nothing
    assert np.load(tmp_path / "fourier_latent_unscaled" / f"scale_{n - 2}.npy").shape == tuple(sched[n - 2][1:])
    obs = ObservationBuilder(gen, first_controllable=n - 4, prompt_embedding_dim=0)
    st = gen.start(["a small boat"], [3])
    for _ in range(n - 4):
        gen.step(st, 0.0)
    o = obs.observe(st)
    assert o.shape == (obs.dim,) and np.isfinite(o).all()


@needs_infinity
@pytest.mark.parametrize("insertion", [0, -2])
def test_per_image_decisions_equal_each_image_alone(monkeypatch, insertion):
    """One step with one ratio and one CFG-drop flag per image (pruned by different amounts, skipping
    while others run, dropping the unconditional branch alone) ends every image where it ends generated
    alone with its own decisions: same codes at every scale, same per-image reports and FLOPs, summed
    codes within 1e-6 (masked padded keys change the softmax's summation order)."""
    up, model, vae, enc, sched = _tiny_upstream(INFINITY_SRC, "0.06M", monkeypatch)
    gen = InfinityGenerator(model, vae, enc, sched, InfinityOptions(device="cpu", cfg=3.0, tau=0.5, bf16=False,
                                                                    cfg_insertion_layer=insertion), device="cpu")
    prompts, seeds = ["a small boat", "a red fox in the snow", "a lighthouse at dusk"], [11, 4, 9]
    ratios = [[0, 0, 0, 0.4, 0.5, 1, 1],
              [0, 0, 1, 0, 0.3, 0.6, 0],
              [0, 0, 0, 0.9, 1, 0, 0.5]]
    drops = [[0, 0, 0, 0, 0, 0, 0],
             [0, 0, 0, 1, 0, 0, 0],
             [0, 1, 0, 0, 0, 0, 1]]
    batch = gen.start(prompts, seeds)
    for k in range(gen.num_scales):
        gen.step(batch, [r[k] for r in ratios], drop_unconditional=[bool(d[k]) for d in drops])
    fork = None
    for b in range(len(prompts)):
        alone = gen.start([prompts[b]], [seeds[b]])
        for k in range(gen.num_scales):
            gen.step(alone, ratios[b][k], drop_unconditional=bool(drops[b][k]))
        for k in range(gen.num_scales):
            mine = batch.image_codes(b, k)
            if ratios[b][k] >= 1:
                assert mine is None and alone.codes[k] is None
            else:
                assert torch.equal(mine, alone.codes[k][0]), f"image {b} scale {k}: codes differ"
        assert batch.image_reports(b) == alone.reports
        assert batch.kv_len_rows["cond"][b] == alone.kv_len_rows["cond"][0]
        torch.testing.assert_close(batch.summed_codes[b], alone.summed_codes[0], atol=1e-6, rtol=0)
    # a copy taken mid-way continues like the original
    st = gen.start(prompts, seeds)
    for k in range(4):
        gen.step(st, [r[k] for r in ratios], drop_unconditional=[bool(d[k]) for d in drops])
    fork = st.copy()
    for s in (st, fork):
        for k in range(4, gen.num_scales):
            gen.step(s, [r[k] for r in ratios], drop_unconditional=[bool(d[k]) for d in drops])
    assert torch.equal(st.summed_codes, fork.summed_codes) and st.reports == fork.reports


# ---- the direct loader's options, the memory estimate, prompt tables (no checkout needed) -------------

def _fake_files(tmp_path: Path) -> dict:
    """A fake checkout and empty checkpoint files at the option paths (nothing is loaded from them)."""
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"d_model": 128, "d_kv": 32, "num_heads": 4, "d_ff": 256,
                                                             "num_layers": 1, "vocab_size": 300}))
    for f in ("model.pth", "vae.pth"):
        (tmp_path / f).write_bytes(b"")
    return {"src": str(_fake_checkout(tmp_path / "Infinity")), "model_path": str(tmp_path / "model.pth"),
            "vae_path": str(tmp_path / "vae.pth"), "text_encoder_ckpt": str(tmp_path / "t5"), "device": "cpu"}


@pytest.mark.parametrize("bad, match", [
    ({"loader": "fast"}, "loader must be one of"),
    ({"model_kwargs": {"depth": 6}}, "read only by loader 'direct'"),
    ({"loader": "direct", "model_kwargs": {"depth": 6, "width": 64}}, r"keys from \['depth'"),
    ({"loader": "direct", "model_kwargs": {"depth": 6, "embed_dim": 64, "num_heads": 3}}, "multiple of num_heads"),
    ({"loader": "direct", "model_kwargs": {"depth": 0}}, "positive integer"),
    ({"loader": "direct", "vae_kwargs": {"base_ch": 20}}, r"multiple of 24 or 32 .* \[20, 40, 80, 80, 80\]"),
    ({"loader": "direct", "vae_kwargs": {"ch_mult": [1, 2]}}, "5 positive integers"),
    ({"model_type": "tiny"}, "unknown model_type 'tiny'"),
    ({}, "loader 'run_infinity' .* moves every model to CUDA; on device 'cpu' use loader 'direct'"),
])
def test_loader_options_fail_fast(tmp_path, bad, match):
    with pytest.raises(InfinityOptionsError, match=match):
        InfinityOptions.from_dict({**_fake_files(tmp_path), **bad}).validate()


def test_check_prints_the_memory_estimate(tmp_path, capsys):
    opts = {**_fake_files(tmp_path), "loader": "direct", "model_type": "tiny", "pn": "0.06M", "text_channels": 128,
            "model_kwargs": {"depth": 6, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 4, "block_chunks": 2}}
    (tmp_path / "opts.json").write_text(json.dumps(opts))
    assert main(["check", str(tmp_path / "opts.json")]) == 0
    out = capsys.readouterr().out
    assert "options OK: tiny (depth 6, width 64), pn 0.06M (7 scales, 16x16 last)" in out
    assert "KV cache 3.2 MB (2 branch(es), 521 tokens)" in out and "batch: 1 ->" in out
    assert main(["check", str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err


def test_memory_estimate_of_infinity_2b():
    from infinity_backend.arch import InfinityArch
    from infinity_backend.memory import format_memory, memory_estimate, transformer_params

    arch = InfinityArch.for_model("infinity_2b")
    blocks, outside = transformer_params(arch)
    assert 2.0e9 < blocks + outside < 2.3e9                       # "Infinity-2B"
    hws = [(h, w) for _, h, w in square_scale_schedule("1M")]
    m = memory_estimate(arch, hws, cfg=True, prune_layers=(3, 28), bf16=True)
    assert m["kv"] == 32 * 10_521 * 2048 * (4 + 2) * 2              # float32 keys, bf16 values, two branches
    assert m["prune_cache"] == 25 * 4096 * 2048 * (2 + 4 + 4) * 2
    assert memory_estimate(arch, hws, cfg=False, prune_layers=(3, 28), bf16=True)["per_image"] == m["per_image"] / 2
    text = format_memory(m, device_bytes=80e9)
    fit = int((0.9 * 80e9 - m["fixed"]) // m["per_image"])
    assert f"about {fit} image(s) per batch fit" in text and 3 <= fit <= 6


def test_prompt_tables():
    from domain.splits import prompt_table

    header = ["# Infinity prompts", "id\tprompt\tcategory", "a1\ta photo of a cat\tanimal", "a2\ta red car\tvehicle"]
    assert prompt_table(header, "f") == [(None, "a photo of a cat", 3), (None, "a red car", 4)]
    named = ["name\tprompt", "cat\ta photo of a cat"]
    assert prompt_table(named, "f") == [("cat", "a photo of a cat", 2)]
    assert prompt_table(["cat\ta photo of a cat", "", "car\ta red car"], "f")[1] == ("car", "a red car", 3)
    assert prompt_table(["a photo of a cat", "a red car"], "f") == [(None, "a photo of a cat", 1), (None, "a red car", 2)]
    with pytest.raises(ValueError, match=r"f:3: a table row needs a prompt in column 2"):
        prompt_table(["id\tprompt", "a1\tcat", "a2"], "f")
    with pytest.raises(ValueError, match=r"f:2: .*name<TAB>prompt"):
        prompt_table(["cat\ta photo of a cat", "a red car"], "f")


# ---- the tiny checkpoint through the direct loader (needs a checkout) --------------------------------

@needs_infinity
def test_tiny_checkpoint_files_that_do_not_fit_are_named(tmp_path, monkeypatch):
    """make-tiny's files load through the direct loader; options whose shape does not fit them fail with
    the file and the shape named (upstream's VAE loader would leave unplaced tensors random, silently)."""
    from infinity_backend.tiny import make_tiny

    monkeypatch.setitem(sys.modules, "flash_attn", _flash_attn_stand_in())
    opts = json.loads(make_tiny(tmp_path / "tiny", INFINITY_SRC).read_text())
    gen = make_infinity_generator(**opts)
    assert gen.depth == 6 and gen.num_scales == 7 and gen.decode(gen.generate(["a cat"], [0])[1]).shape == (1, 3, 256, 256)
    with pytest.raises(InfinityOptionsError, match=r"vae_path .*vae_tiny.pth' does not fit the VAE shape"):
        make_infinity_generator(**{**opts, "vae_kwargs": {**opts["vae_kwargs"], "num_res_blocks": 2}})
    with pytest.raises(InfinityOptionsError, match=r"model_path .*infinity_tiny.pth' does not fit the transformer shape"):
        make_infinity_generator(**{**opts, "model_kwargs": {**opts["model_kwargs"], "depth": 4}})


def test_cost_model_of_infinity_2b(capsys):
    """Per-image FLOPs (transformer as the FLOPs table, decoder as counted, T5 padded to 512 tokens) and the
    static search's prefix tree: every schedule fits a target of 1; a schedule's nodes are counted once."""
    from infinity_backend.cost import per_image_flops, static_search_flops

    f = per_image_flops("infinity_2b", "1M")
    assert f["transformer"] / 1e9 == pytest.approx(flops_table("infinity_2b", "1M")["total_gflops"], rel=1e-9)
    assert f["decode"] == pytest.approx(9.848e12) and f["text"] == pytest.approx(2 * 1.22e9 * 512)
    everything = static_search_flops(f, 2, (0.5,), target=1.0)
    assert everything["schedules"] == everything["fitting"] == 9
    nothing = static_search_flops(f, 2, (0.5,), target=0.01)
    assert nothing["fitting"] == 0
    # with nothing fitting, only the shared prefix (scales before the controllable ones) and T5 are left
    assert nothing["flops_per_item"] < everything["flops_per_item"] - 9 * f["decode"]
    assert main(["cost", "--tflops", "100", "--num-controllable", "2", "--grid-ratios", "0.5", "--target", "1"]) == 0
    out = capsys.readouterr().out
    assert "assumed sustained throughput 100 TFLOP/s" in out and "9 schedules, 9 within total FLOPs 1" in out


def test_checkpoint_stamp_tells_fine_tunes_of_one_architecture_apart(tmp_path):
    """Same name and size, other weights (a fine-tune): another stamp, so cached references are not reused."""
    from infinity_backend.generator import checkpoint_stamp

    for d, byte in (("a", 1), ("b", 2), ("c", 1)):
        (tmp_path / d).mkdir()
        data = bytearray(3 << 20)
        data[(3 << 20) // 2] = byte                      # differs only in the middle MiB
        (tmp_path / d / "infinity_2b_reg.pth").write_bytes(bytes(data))
    a, b, c = (checkpoint_stamp(str(tmp_path / d / "infinity_2b_reg.pth")) for d in "abc")
    assert a != b and a == c and a.startswith(f"infinity_2b_reg.pth:{3 << 20}:")
    assert checkpoint_stamp(str(tmp_path / "a")) != checkpoint_stamp(str(tmp_path / "b"))  # a folder (T5)
