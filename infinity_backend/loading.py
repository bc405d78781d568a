"""Building an InfinityGenerator from checkpoints: with upstream's own loaders (``loader:
"run_infinity"``, CUDA) or with ours (``loader: "direct"``, any device; ``infinity_backend.direct``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from infinity_backend.arch import upstream_scale_schedule
from infinity_backend.generator import InfinityGenerator
from infinity_backend.options import InfinityOptions
from infinity_backend.text import T5PromptEncoder
from infinity_backend.upstream import import_upstream, load_run_infinity


def make_infinity_generator(**options: Any) -> InfinityGenerator:
    """Validate ``options`` (InfinityOptions fields), then load T5, the VAE and the transformer from the
    checkout and the checkpoint files, and wrap them. Errors name the bad option or path."""
    opts = InfinityOptions.from_dict(options).validate(require_checkpoints=True)
    src = opts.resolved_src()
    if opts.loader == "direct" and not str(opts.device).startswith("cuda"):
        from infinity_backend.flash_attn_stand_in import install_if_missing

        install_if_missing()
    up = import_upstream(src)
    schedule = upstream_scale_schedule(up.dynamic_resolution, opts.h_div_w, opts.pn)
    if opts.loader == "direct":
        from infinity_backend.direct import load_direct

        text_tokenizer, text_encoder, vae, model = load_direct(up, opts)
    else:
        text_tokenizer, text_encoder, vae, model = _load_with_run_infinity(src, opts)
    enc = T5PromptEncoder(text_tokenizer, text_encoder, device=opts.device)
    return InfinityGenerator(model, vae, enc, schedule, opts, device=opts.device)


def _load_with_run_infinity(src, opts: InfinityOptions):
    """Upstream tools/run_infinity.py's loaders, with the arguments its command line would give."""
    run_inf = load_run_infinity(src)
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
    return text_tokenizer, text_encoder, vae, model
