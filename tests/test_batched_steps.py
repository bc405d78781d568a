"""Per-image decisions in one step on the embedded generator: every image of a batch ends exactly where
it would end alone with its own ratios and CFG-drop flags.

What is exact and what is not: codes (every sampled token), accumulated latents (a function of the
codes only: the generator adds each image's contribution one image at a time), per-image reports and
FLOPs are compared with ``==``. Guided logits are compared within 3e-6 of their largest magnitude: a
batch is not bitwise a stack of batch-1 runs even when every image does the same thing (a matrix-vector
product at batch 1 is a matrix-matrix product at batch 4, with another summation order; measured on
this CPU: up to 1.9e-6 relative for a uniform batch of 4, shipped weights), and padded keys add a
masked softmax whose sums run in another order (mixed batch: up to 1.1e-6 relative, i.e. no worse).
The "shipped-cuda" case (skipped without a GPU) checks the same on a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from embedded.loaders import load_embedded_generator, random_generator
from generator.protocol import BatchStepReport, MixedBatchError, StepReport

PROMPTS = ["a small blue striped square at the top left on a noisy navy background",
           "a large red solid circle in the centre on a plain gray background",
           "a medium green striped cross on the left on a plain black background",
           "a small yellow dotted star at the bottom on a gradient white background"]
SEEDS = [7, 3, 5, 1]
# per image, per scale: unpruned next to pruned, an image that skips while others run (also at scale 2,
# before any pruning, so it restores from an older scale later), everyone skipping but one, a skip of
# the last scale by some images only, and the unconditional branch dropped by some images only
RATIOS = [[0, 0, 0, 0.4, 0.5, 1, 1],
          [0, 0, 0, 0, 0.3, 0.6, 0],
          [0, 0, 1, 0.2, 0, 1, 0.7],
          [0, 0, 0, 0.9, 1, 0.5, 1.0]]
DROPS = [[0, 0, 0, 0, 0, 0, 0],
         [0, 0, 0, 0, 1, 0, 0],
         [0, 0, 0, 0, 0, 0, 0],
         [0, 0, 0, 1, 0, 0, 1]]
REL_TOL = 3e-6


def assert_close_rel(a: torch.Tensor, b: torch.Tensor) -> None:
    """|a - b| <= REL_TOL * max|b| everywhere (reduction-order noise, see the module docstring)."""
    err = (a - b).abs().max().item()
    assert err <= REL_TOL * b.abs().max().item(), f"max |a - b| = {err:.3g} vs max |b| = {b.abs().max().item():.3g}"


class RecordingSampler:
    """Records the guided logits each step samples from (instrumentation around the real sampler)."""

    def __init__(self, g) -> None:
        self.g, self.inner, self.logits = g, g._sample, []

    def __call__(self, logits, seeds, k):
        self.logits.append(logits)
        return self.inner(logits, seeds, k)

    def __enter__(self):
        self.g._sample = self
        return self

    def __exit__(self, *exc):
        del self.g._sample


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", params=["random", "shipped", pytest.param("shipped-cuda", marks=NEEDS_CUDA)])
def gen(request):
    torch.set_num_threads(2)
    if request.param == "random":
        return random_generator(seed=0)
    return load_embedded_generator(device="cuda" if request.param.endswith("cuda") else "cpu")


def run_batch(g, prompts=PROMPTS, seeds=SEEDS, ratios=RATIOS, drops=DROPS):
    state = g.start(prompts, seeds)
    for k in range(g.num_scales):
        g.step(state, [r[k] for r in ratios], drop_unconditional=[bool(d[k]) for d in drops])
    return state


def run_alone(g, b):
    state = g.start([PROMPTS[b]], [SEEDS[b]])
    for k in range(g.num_scales):
        g.step(state, RATIOS[b][k], drop_unconditional=bool(DROPS[b][k]))
    return state


@pytest.mark.parametrize("row_batching", ["pad", "group"])
def test_each_image_equals_itself_generated_alone(gen, row_batching):
    gen.row_batching = row_batching
    with RecordingSampler(gen) as rec:
        batch = run_batch(gen)
        batch_logits = rec.logits
        steps_run = [k for k in range(gen.num_scales) if any(r[k] < 1 for r in RATIOS)]
        assert len(batch_logits) == len(steps_run)
        for b in range(len(PROMPTS)):
            rec.logits = []
            alone = run_alone(gen, b)
            ran = [k for k in range(gen.num_scales) if RATIOS[b][k] < 1]
            assert len(rec.logits) == len(ran)
            for k in range(gen.num_scales):
                mine = batch.image_codes(b, k)
                if RATIOS[b][k] >= 1:
                    assert mine is None and alone.codes[k] is None
                else:
                    assert torch.equal(mine, alone.codes[k][0]), f"image {b} scale {k}: codes differ"
            assert batch.image_reports(b) == alone.reports  # ratios, kept tokens, branches, FLOPs: exact
            assert batch.flops_used_per_image[b] == alone.flops_used
            assert torch.equal(batch.f_hat_BChw[b], alone.f_hat_BChw[0])
            # guided logits, scale by scale: row j of a batch step is the j-th image that ran that scale
            for i, k in enumerate(ran):
                j = sum(1 for c in range(b) if RATIOS[c][k] < 1)
                assert_close_rel(batch_logits[steps_run.index(k)][j], rec.logits[i][0])
    gen.row_batching = "pad"


def test_skipped_images_hold_no_kv_entries_and_reports_are_per_image(gen):
    batch = run_batch(gen)
    for b in range(len(PROMPTS)):
        alone = run_alone(gen, b)
        assert batch.cond.kv_lengths_rows()[b] == alone.cond.kv_lengths()
        assert batch.uncond.kv_lengths_rows()[b] == alone.uncond.kv_lengths()
    mixed = batch.reports[3]
    assert isinstance(mixed, BatchStepReport) and [r.ratio for r in mixed.images] == [0.4, 0, 0.2, 0.9]
    assert mixed.scale_index == 3 and mixed.tokens == 16
    with pytest.raises(MixedBatchError, match="ratio"):
        _ = mixed.ratio  # never image 0's value for the whole batch
    with pytest.raises(MixedBatchError, match="flops_used_per_image"):
        _ = batch.flops_used
    assert isinstance(batch.reports[0], StepReport)  # every image did the same: one plain report
    with pytest.raises(MixedBatchError, match="scale 2"):
        gen.decode_scale(batch, 2)
    assert gen.decode(batch).shape == (4, 3, gen.image_size, gen.image_size)


def test_scalar_ratio_on_a_batch_is_unchanged(gen):
    """A scalar ratio is the uniform path: the same as one ratio per image when all are equal, and
    every report is a plain StepReport."""
    a = gen.start(PROMPTS[:2], SEEDS[:2])
    b = gen.start(PROMPTS[:2], SEEDS[:2])
    for k, r in enumerate([0, 0, 0, 0.4, 0.5, 1, 1]):
        gen.step(a, r, drop_unconditional=(k == 4))
        gen.step(b, [r, r], drop_unconditional=[k == 4] * 2)
    assert all(isinstance(r, StepReport) for r in a.reports)
    assert a.reports == b.reports and torch.equal(a.f_hat_BChw, b.f_hat_BChw)
    assert a.flops_used == a.flops_used_per_image[0] == a.flops_used_per_image[1]


def test_copy_of_a_mixed_state_continues_identically(gen):
    st = gen.start(PROMPTS, SEEDS)
    for k in range(4):
        gen.step(st, [r[k] for r in RATIOS], drop_unconditional=[bool(d[k]) for d in DROPS])
    fork = st.copy()
    for s in (st, fork):
        for k in range(4, gen.num_scales):
            gen.step(s, [r[k] for r in RATIOS], drop_unconditional=[bool(d[k]) for d in DROPS])
    assert torch.equal(st.f_hat_BChw, fork.f_hat_BChw) and st.reports == fork.reports
    assert torch.equal(st.f_hat_BChw, run_batch(gen).f_hat_BChw)


@pytest.mark.parametrize("ratios, drops, match", [([0.0, 0.1, 0.2], False, "got 3 ratios for a batch of 2"),
                                                  ([0.0, float("nan")], False, "pruning ratio"),
                                                  ([0.0, -1], False, "pruning ratio"),
                                                  (0.0, [True], "got 1 drop_unconditional flags for a batch of 2"),
                                                  (0.0, [True, "yes"], "drop_unconditional must be a bool"),
                                                  (torch.zeros(2, 1), False, "shape")])
def test_bad_per_image_decisions_are_clear_errors(gen, ratios, drops, match):
    st = gen.start(PROMPTS[:2], SEEDS[:2])
    with pytest.raises(ValueError, match=match):
        gen.step(st, ratios, drop_unconditional=drops)
    assert st.scale_index == 0 and not st.reports
