"""Infinity (FoundationVision/Infinity, or FastVAR's fork) behind our step-wise generator API.

    gen = make_infinity_generator(src="/path/to/Infinity", model_path=".../infinity_2b_reg.pth",
                                  vae_path=".../infinity_vae_d32_reg.pth", text_encoder_ckpt=".../flan-t5-xl")
    state = gen.start(["a photo of a cat"], seeds=[0])
    while not state.finished:
        gen.step(state, ratio=schedule.ratio(state.scale_index, state.num_scales, state))
    images = gen.decode(state)            # (B, 3, H, W) float in [0, 1]

The upstream code (transformer, BSQ VAE, T5 loading) is imported from the user's checkout
(``src`` option or ``INFINITY_SRC``); nothing of it lives in this repository. We do not call the
upstream blocks' ``forward``: every scale runs the blocks' submodules (adaLN modulation, our own
self-attention over a KV cache held in the state, the upstream cross-attention and FFN modules, the
head), so FastVAR-style cached token pruning (``0 <= r < 1``) and scale skipping (``r >= 1``) are ours
and work whichever fork is installed. With ratio 0 everywhere the computation is operation for
operation the one of upstream ``Infinity.autoregressive_infer_cfg`` (tested on CPU against both forks).

Sampling is bitwise (each token is ``d`` independent bits, ``d`` = VAE codebook dim), with upstream's
top-k / top-p filter and CFG on the logits (``cfg_insertion_layer=0``) or on a block's output (< 0).
``rng='per_scale'`` (default) draws scale k of image b from a generator seeded by (seed_b, k), so
pruning or skipping one scale never shifts the noise of another; ``rng='upstream'`` uses one generator
per image seeded with its seed and consumed scale after scale, as upstream's ``g_seed`` does.

``python -m infinity_backend flops --model infinity_2b --pn 1M`` prints the analytic
per-scale FLOPs table and ``python -m infinity_backend cost`` the GPU-hours to budget; neither needs a
checkout or a checkpoint. ``python -m infinity_backend check opts.json`` validates options and prints a
memory estimate per batch. ``python -m infinity_backend make-tiny DIR`` writes a tiny random
checkpoint in upstream's formats, loaded by our direct loader (``"loader": "direct"``,
``infinity_backend.direct``) on any device: the whole path on a CPU (docs/infinity-cpu.md).
"""

from infinity_backend.arch import (FASTVAR_PRUNE_LAYERS_2B, MODEL_TYPES, PN_NUM_SCALES, SQUARE_SIDES, VAE_TYPES,
                                   InfinityArch, default_prune_layers, flops_table, format_flops_table,
                                   infinity_block_flops, infinity_prefill_flops, infinity_schedule_flops,
                                   infinity_step_flops, square_scale_schedule, upstream_scale_schedule)
from infinity_backend.generator import InfinityGenerator
from infinity_backend.loading import make_infinity_generator
from infinity_backend.options import InfinityOptions, InfinityOptionsError
from infinity_backend.state import InfinityState
from infinity_backend.text import T5PromptEncoder
from infinity_backend.upstream import import_upstream

__all__ = [
    "FASTVAR_PRUNE_LAYERS_2B", "MODEL_TYPES", "PN_NUM_SCALES", "SQUARE_SIDES", "VAE_TYPES", "InfinityArch",
    "default_prune_layers", "flops_table", "format_flops_table", "infinity_block_flops", "infinity_prefill_flops",
    "infinity_schedule_flops", "infinity_step_flops", "square_scale_schedule", "upstream_scale_schedule",
    "InfinityGenerator", "make_infinity_generator", "InfinityOptions", "InfinityOptionsError", "InfinityState",
    "T5PromptEncoder", "import_upstream",
]
