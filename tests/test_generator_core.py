"""The per-scale generator machinery on randomly initialised weights.

These tests check the mechanics (state, pruning, skipping, guidance, FLOPs, seeding), not image
quality, so they use ``random_generator`` with open residual gates: pruning really changes outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from generator import (FastVARSchedule, LimitedIntervalGuidance, NoGuidance, RatioListSchedule, ScalarGuidance,
                       TailPatternSchedule, parse_schedule, schedule_ratios)
from embedded.loaders import random_generator
from embedded.text import tokenize

PROMPT = "a small blue striped square at the top left on a noisy navy background"


@pytest.fixture(scope="module")
def gen():
    torch.set_num_threads(2)
    return random_generator(seed=0)


def run(gen, ratios, prompt=PROMPT, seed=7, drop=None):
    state = gen.start([prompt], [seed])
    for k, r in enumerate(ratios):
        gen.step(state, r, drop_unconditional=bool(drop and drop[k]))
    return gen.decode(state), state


def test_ratio_zero_everywhere_is_the_unpruned_path_bit_for_bit(gen):
    ref, ref_state = gen.generate([PROMPT], [7], schedule=None)
    img, state = run(gen, [0.0] * gen.num_scales)
    assert torch.equal(img, ref)
    # a ratio too small to drop a single token is also the unpruned path (floor(r * L) == 0)
    tiny = [0.5 / (s * s) for s in gen.scale_sides]
    img2, _ = run(gen, tiny)
    assert torch.equal(img2, ref)
    for a, b in zip(state.codes, ref_state.codes):
        assert torch.equal(a, b)


def test_same_seed_same_image_and_different_seed_differs(gen):
    a, _ = run(gen, [0, 0, 0, 0.4, 0.5, 0, 0], seed=3)
    b, _ = run(gen, [0, 0, 0, 0.4, 0.5, 0, 0], seed=3)
    c, _ = run(gen, [0, 0, 0, 0.4, 0.5, 0, 0], seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("k", [2, 4, 6])
def test_skipping_scale_k_keeps_earlier_codes_and_runs_later_scales(gen, k):
    _, ref = run(gen, [0.0] * gen.num_scales)
    ratios = [0.0] * gen.num_scales
    ratios[k] = 1.0
    _, st = run(gen, ratios)
    for j in range(k):
        assert torch.equal(st.codes[j], ref.codes[j])
    assert st.codes[k] is None and st.reports[k].skipped and st.reports[k].flops == 0.0
    for j in range(k + 1, gen.num_scales):
        assert st.codes[j] is not None and st.reports[j].kept == gen.scale_sides[j] ** 2
    # nothing appended to the KV cache for the skipped scale
    full_len = sum(s * s for s in gen.scale_sides)
    assert st.cond.kv_lengths()[0] == full_len - gen.scale_sides[k] ** 2


def test_pruning_changes_the_image_only_from_that_scale_on(gen):
    _, ref = run(gen, [0.0] * gen.num_scales)
    img, st = run(gen, [0, 0, 0, 0, 0.6, 0, 0])
    for j in range(4):
        assert torch.equal(st.codes[j], ref.codes[j])
    assert st.reports[4].kept == 25 - math.floor(0.6 * 25)
    changed = sum(int(not torch.equal(st.codes[j], ref.codes[j])) for j in range(4, gen.num_scales))
    assert changed >= 1


def test_flops_non_increasing_in_ratio_and_zero_when_skipped(gen):
    n = gen.num_scales
    for k in range(1, n):
        prev = math.inf
        for r in [0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 0.9, 0.99, 1.0, 1.5]:
            ratios = [0.0] * n
            ratios[k] = r
            f = gen.schedule_flops(ratios)[k]
            assert f <= prev + 1e-6, (k, r)
            prev = f
        assert prev == 0.0


def test_reported_flops_match_schedule_flops(gen):
    ratios = schedule_ratios(FastVARSchedule(), gen.num_scales)
    _, st = run(gen, ratios)
    assert [r.flops for r in st.reports] == pytest.approx(gen.schedule_flops(ratios))
    assert st.flops_used < gen.flops_full()


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs):
    # the CPU flash kernel is not in torch's FLOP registry; same formula as the GPU kernels
    B, H, Lq, d = query_shape
    Lk = key_shape[-2]
    return 4 * B * H * Lq * Lk * d


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("drop_uncond", [False, True])
def test_analytic_flops_agree_with_flop_counter(gen, ratio, drop_uncond):
    state = gen.start([PROMPT], [1])
    for _ in range(5):
        gen.step(state, 0.0)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        report = gen.step(state, ratio, drop_unconditional=drop_uncond)
    measured = counter.get_total_flops()
    if ratio >= 1.0:
        assert report.flops == 0.0 and measured == 0
    else:
        assert report.flops == pytest.approx(measured, rel=0.05)


def test_dropping_the_unconditional_branch_roughly_halves_a_scale(gen):
    a = run(gen, [0.0] * 7)[1].reports[6].flops
    b = run(gen, [0.0] * 7, drop=[0] * 6 + [1])[1].reports[6].flops
    assert 0.45 < b / a < 0.55


def test_guidance_composition(gen):
    no = random_generator(seed=0, guidance=NoGuidance())
    st = no.start([PROMPT], [0])
    assert not no.step(st, 0.0).unconditional
    lim = random_generator(seed=0, guidance=LimitedIntervalGuidance(ScalarGuidance(3.0), first=0, last=2))
    _, st = lim.generate([PROMPT], [0])
    assert [r.unconditional for r in st.reports] == [True] * 3 + [False] * 4


def test_interleaved_generations_do_not_interfere(gen):
    ref_a, _ = gen.generate([PROMPT], [1])
    ref_b, _ = gen.generate(["a large red solid circle in the centre on a plain gray background"], [2],
                            schedule=FastVARSchedule())
    sa = gen.start([PROMPT], [1])
    sb = gen.start(["a large red solid circle in the centre on a plain gray background"], [2])
    for k in range(gen.num_scales):
        gen.step(sa, 0.0)
        gen.step(sb, FastVARSchedule().ratio(k, gen.num_scales))
    assert torch.equal(gen.decode(sa), ref_a)
    assert torch.equal(gen.decode(sb), ref_b)


def test_state_copy_is_an_independent_continuation(gen):
    st = gen.start([PROMPT], [5])
    for _ in range(4):
        gen.step(st, 0.0)
    fork = st.copy()
    gen.step(fork, 1.0)
    gen.step(st, 0.0)
    assert st.reports[-1].skipped is False and fork.reports[-1].skipped is True
    assert len(st.reports) == len(fork.reports) == 5


class _RecordingGuidance:
    """Conditional-only guidance that keeps every scale's logits."""

    def __init__(self) -> None:
        self.logits = []

    def needs_unconditional(self, scale_index, num_scales):
        return False

    def __call__(self, cond, uncond, scale_index, num_scales):
        self.logits.append(cond)
        return cond


def test_stepwise_kv_cache_matches_teacher_forced_forward():
    """The cached, scale-by-scale forward equals the whole-sequence block-causal forward."""
    rec = _RecordingGuidance()
    g = random_generator(seed=0, guidance=rec)
    _, st = g.generate([PROMPT], [9])
    ids, mask = tokenize([PROMPT], g.transformer.cfg.text_context)
    with torch.no_grad():
        full = g.transformer(ids, mask, g.tokenizer.teacher_forcing_inputs(st.codes))
    torch.testing.assert_close(torch.cat(rec.logits, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "abc", None])
def test_bad_ratios_are_clear_errors(gen, bad):
    st = gen.start([PROMPT], [0])
    with pytest.raises(ValueError, match="pruning ratio"):
        gen.step(st, bad)
    assert st.scale_index == 0  # nothing advanced


def test_stepping_past_the_last_scale_and_empty_prompts(gen):
    _, st = gen.generate([PROMPT], [0])
    with pytest.raises(IndexError, match="already generated"):
        gen.step(st, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        gen.start(["  "], [0])
    with pytest.raises(ValueError, match="seeds"):
        gen.start([PROMPT, PROMPT], [0])


def test_schedules():
    widths7 = (1, 2, 3, 4, 5, 6, 8)
    assert schedule_ratios(FastVARSchedule(), 7) == [0, 0, 0, 0.4, 0.5, 1.0, 1.0]
    widths13 = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
    fv = schedule_ratios(FastVARSchedule(), 13)
    assert {w: r for w, r in zip(widths13, fv) if r} == {32: 0.4, 40: 0.5, 48: 1.0, 64: 1.0}
    assert schedule_ratios(TailPatternSchedule(), 13)[-6:] == [0.3, 0.4, 1.0, 1.0, 0.8, 1.0]
    assert schedule_ratios(TailPatternSchedule(), 4) == [0.3, 0.4, 1.0, 1.0]
    s = parse_schedule("32:0.4,40:0.5", widths13)
    assert schedule_ratios(s, 13)[9:11] == [0.4, 0.5] and sum(schedule_ratios(s, 13)) == pytest.approx(0.9)
    assert s.describe(widths13) == "32:0.4,40:0.5"
    assert isinstance(parse_schedule("original", widths7).ratio(0, 7), float)
    with pytest.raises(ValueError, match="unknown width 7.*valid widths are 1, 2, 3, 4, 5, 6, 8"):
        parse_schedule("7:0.5", widths7)
    with pytest.raises(ValueError, match="bad ratio 'abc'"):
        parse_schedule("8:abc", widths7)
    with pytest.raises(ValueError, match="bad ratio"):
        parse_schedule("8:nan", widths7)
    with pytest.raises(ValueError, match="unknown schedule"):
        parse_schedule("fast", widths7)
    with pytest.raises(ValueError, match="ratios must be finite"):
        RatioListSchedule((0.0, -1.0))
