"""Building an InfinityGenerator from checkpoints with upstream's own loaders."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from infinity_backend.arch import MODEL_TYPES, upstream_scale_schedule
from infinity_backend.generator import InfinityGenerator
from infinity_backend.options import InfinityOptions
from infinity_backend.text import T5PromptEncoder
from infinity_backend.upstream import import_upstream, load_run_infinity


def make_infinity_generator(**options: Any) -> InfinityGenerator:
    """Validate ``options`` (InfinityOptions fields), then load T5, the VAE and the transformer with
    upstream's own loaders from the checkout, and wrap them. Errors name the bad option or path."""
    opts = InfinityOptions.from_dict(options).validate(require_checkpoints=True)
    src = opts.resolved_src()
    up = import_upstream(src)
    schedule = upstream_scale_schedule(up.dynamic_resolution, opts.h_div_w, opts.pn)
    run_inf = load_run_infinity(src)
    depth, width, heads, chunks = MODEL_TYPES[opts.model_type]
    args = SimpleNamespace(
        model_path=opts.model_path, vae_path=opts.vae_path, vae_type=opts.vae_type, pn=opts.pn,
        model_type=opts.model_type, text_channels=opts.text_channels, use_bit_label=opts.use_bit_label,
        add_lvl_embeding_only_first_block=opts.add_lvl_embeding_only_first_block,
        rope2d_each_sa_layer=opts.rope2d_each_sa_layer, rope2d_normalized_by_hw=opts.rope2d_normalized_by_hw,
        use_scale_schedule_embedding=0, apply_spatial_patchify=opts.apply_spatial_patchify, use_flex_attn=0,
        bf16=int(opts.bf16), checkpoint_type=opts.checkpoint_type, cache_dir="/nonexistent", enable_model_cache=0)
    text_tokenizer, text_encoder = run_inf.load_tokenizer(t5_path=opts.text_encoder_ckpt)
    vae = run_inf.load_visual_tokenizer(args)
    model = run_inf.load_transformer(vae, args)
    enc = T5PromptEncoder(text_tokenizer, text_encoder, device=opts.device)
    return InfinityGenerator(model, vae, enc, schedule, opts, device=opts.device)
