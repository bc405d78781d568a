"""Total FLOPs (transformer + decoder + text encoder): analytic counts vs FlopCounterMode."""

from __future__ import annotations


import pytest
import torch

from embedded.loaders import random_generator
from generator.flop_count import count_flops
from generator.protocol import total_flops_fraction, total_flops_full, total_fraction_of_used

PROMPT = "a large red solid circle in the centre on a plain gray background"


@pytest.fixture(scope="module")
def gen():
    return random_generator(0)


def test_decoder_flops_match_flop_counter(gen):
    C, s = gen.tokenizer.cfg.latent_channels, gen.tokenizer.cfg.latent_size
    measured = count_flops(lambda: gen.decode(type("S", (), {"f_hat_BChw": torch.zeros(1, C, s, s)})()))
    assert gen.decode_flops() == pytest.approx(measured, rel=0.05)
    assert gen.decode_flops() == measured  # every conv is counted the same way: exactly equal here


def test_transformer_flops_match_flop_counter(gen):
    """Prefill (prompt encoder on both CFG branches, cross-attention K/V) and every step of a schedule
    with pruning, a skip and a dropped unconditional branch, against FlopCounterMode (SDPA included)."""
    g = gen
    g._uncond_cache.clear()  # so that start() encodes the empty prompt too, as the per-image count assumes
    state = None

    def start():
        nonlocal state
        state = g.start([PROMPT], [0])

    measured_prefill = count_flops(start)
    assert state.flops_prefill == pytest.approx(measured_prefill, rel=0.05)
    ratios = [0.0, 0.0, 0.0, 0.4, 0.5, 1.0, 0.25]
    drops = [False, False, False, False, True, False, True]
    for k in range(g.num_scales):
        measured = count_flops(lambda: g.step(state, ratios[k], drop_unconditional=drops[k]))
        assert state.reports[-1].flops == pytest.approx(measured, rel=0.05, abs=1.0), f"scale {k}"


def test_total_fraction(gen):
    ratios = [0.0, 0.0, 0.0, 0.4, 0.5, 1.0, 1.0]
    t = gen.flops_fraction(ratios)
    fixed = gen.decode_flops() + gen.text_flops()
    assert gen.text_flops() == 0.0  # the embedded prompt encoder is counted inside the transformer prefill
    assert total_flops_full(gen) == gen.flops_full() + fixed
    expected = (t * gen.flops_full() + fixed) / (gen.flops_full() + fixed)
    assert total_flops_fraction(gen, ratios) == pytest.approx(expected, rel=1e-12)
    assert t < total_flops_fraction(gen, ratios) < 1.0  # a fixed cost shrinks every saving
    assert total_flops_fraction(gen, [0.0] * gen.num_scales) == pytest.approx(1.0, rel=1e-12)
    _, state = gen.generate([PROMPT], [0], schedule=None)
    assert total_fraction_of_used(gen, state.flops_used) == pytest.approx(1.0, rel=1e-12)
    drops = [False] * 4 + [True] * 3
    assert (total_flops_fraction(gen, ratios, [not d for d in drops])
            < total_flops_fraction(gen, ratios))


def test_t5_text_encoder_count_matches_analytic():
    """The Infinity backend counts T5 with FlopCounterMode (text_flops); on a tiny random T5 the count
    equals the analytic encoder cost at the padded length within 5 %."""
    pytest.importorskip("transformers")
    from transformers import T5Config, T5EncoderModel

    from infinity_backend import T5PromptEncoder
    from tests.test_infinity_backend import CharTokenizer

    d, dkv, heads, dff, L = 64, 16, 4, 128, 96
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=d, d_kv=dkv, d_ff=dff, num_layers=2, num_heads=heads)).eval()
    enc = T5PromptEncoder(CharTokenizer(), t5, max_length=L)
    inner = dkv * heads
    per_layer = 2 * L * d * inner * 4 + 2 * 2 * L * L * inner + 2 * L * d * dff * 2
    assert count_flops(lambda: enc(["a lighthouse at dusk"])) == pytest.approx(2 * per_layer, rel=0.05)
