"""Our loading path (option ``loader: "direct"``): upstream's own classes, built with the shape the
options give, on any device, from the same checkpoint files upstream's loaders read.

Upstream's ``tools/run_infinity.py`` loaders (``load_tokenizer``, ``load_visual_tokenizer``,
``load_transformer``) move every model to CUDA and know fixed shapes only (``model_type`` keys, the VAE
of ``vae_type``). This path does what they do with the same upstream code and file formats:

- T5: ``AutoTokenizer.from_pretrained(folder, legacy=True)`` and ``T5EncoderModel.from_pretrained``
  (float16 on CUDA as upstream, float32 on the CPU, where half precision is slow and inexact);
- BSQ VAE: upstream ``vae_model(path, 'dynamic', d, 2**d, patch_size=16, ...)``, which reads the
  ``{'vae': state_dict}`` file with its own ``load_cnn``, with ``base_ch`` / ``num_res_blocks`` of
  its fixed argument set and the channel multipliers replaced by ``vae_kwargs``; every tensor of the file is then checked to
  have landed (``load_cnn`` skips keys silently);
- transformer: upstream ``Infinity`` with run_infinity.py's construction arguments and the
  ``model_kwargs`` shape, then upstream's ``load_state_dict(torch.load(model_path))``, which is
  non-strict and only prints what did not fit: here a missing or unexpected tensor is an error.

What it does not exercise of the real path: run_infinity.py's functions themselves (their CUDA moves,
``torch.cuda.amp`` autocast around construction, the model cache copy / slim-checkpoint step,
``torch_shard`` checkpoints), the fixed shapes of ``model_type`` / ``vae_type``, flash-attn's kernels
(on the CPU: ``flash_attn_stand_in``), ``torch.compile``'d fused norms (on the CPU: their eager body)
and bf16 blocks (CPU runs float32).
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

from infinity_backend.arch import MODEL_TYPES
from infinity_backend.options import InfinityOptions, InfinityOptionsError

#: upstream ``vae_model``'s channel multipliers without spatial patchify (tools/run_infinity.py)
VAE_CH_MULT = [1, 2, 4, 4, 4]


def transformer_kwargs(opts: InfinityOptions) -> dict:
    """The shape passed to upstream ``Infinity``: ``model_kwargs`` over the ``model_type`` preset."""
    kw: dict = {}
    if opts.model_type in MODEL_TYPES:
        depth, width, heads, chunks = MODEL_TYPES[opts.model_type]
        kw = {"depth": depth, "embed_dim": width, "num_heads": heads, "mlp_ratio": 4, "block_chunks": chunks}
    kw.update(opts.model_kwargs or {})
    missing = [k for k in ("depth", "embed_dim", "num_heads") if k not in kw]
    if missing:
        raise InfinityOptionsError(f"model_kwargs lacks {missing} (model_type {opts.model_type!r} is no preset)")
    return kw


def build_transformer(up: SimpleNamespace, opts: InfinityOptions, vae, device: str | torch.device):
    """Upstream ``Infinity`` with run_infinity.py's ``load_infinity`` construction arguments, eval mode,
    no gradients, random weights (the caller loads a state dict or saves these)."""
    model = up.infinity.Infinity(
        vae_local=vae, text_channels=opts.text_channels, text_maxlen=512, shared_aln=True, raw_scale_schedule=None,
        checkpointing="full-block", customized_flash_attn=False, fused_norm=True, pad_to_multiplier=128,
        use_flex_attn=False, add_lvl_embeding_only_first_block=opts.add_lvl_embeding_only_first_block,
        use_bit_label=opts.use_bit_label, rope2d_each_sa_layer=opts.rope2d_each_sa_layer,
        rope2d_normalized_by_hw=opts.rope2d_normalized_by_hw, pn=opts.pn,
        apply_spatial_patchify=opts.apply_spatial_patchify, inference_mode=True, train_h_div_w_list=[1.0],
        **transformer_kwargs(opts)).to(device)
    if opts.bf16 and torch.device(device).type == "cuda":
        for block in model.unregistered_blocks:
            block.bfloat16()
    model.eval()
    model.requires_grad_(False)
    if torch.device(device).type != "cuda":
        eager_fused_norms(model)
    return model


def eager_fused_norms(model) -> None:
    """Replace each block's ``torch.compile``'d fused adaLN function by its eager body (the same maths):
    compiling on the CPU needs a C++ toolchain and minutes per shape, for no gain at these sizes."""
    for module in model.modules():
        fn = getattr(module, "fused_norm_func", None)
        if fn is not None:
            module.fused_norm_func = getattr(fn, "_torchdynamo_orig_callable", fn)


@contextmanager
def _vae_shape(vae_module, vae_kwargs: dict | None):
    """Within the block, upstream's ``AutoEncoder`` is built with ``base_ch`` / ``num_res_blocks`` of
    ``vae_kwargs`` over the arguments ``vae_model`` fixes (128 / 2); restored afterwards, also on errors."""
    original = vae_module.AutoEncoder
    fixed = {k: v for k, v in (vae_kwargs or {}).items() if k in ("base_ch", "num_res_blocks")}
    if fixed:
        def shaped(args):
            return original(SimpleNamespace(**{**vars(args), **fixed}))
        vae_module.AutoEncoder = shaped
    try:
        yield
    finally:
        vae_module.AutoEncoder = original


def build_vae(opts: InfinityOptions, device: str | torch.device, path: str | Path | None = None):
    """Upstream's BSQ VAE through its ``vae_model`` (reads ``{'vae': state_dict}`` from ``path``; None:
    random weights), with the ``vae_kwargs`` shape."""
    vae_module = importlib.import_module("infinity.models.bsq_vae.vae")
    d = opts.vae_type
    ch_mult = list((opts.vae_kwargs or {}).get("ch_mult", VAE_CH_MULT))
    with _vae_shape(vae_module, opts.vae_kwargs):
        vae = vae_module.vae_model(None if path is None else str(path), "dynamic", d, 2 ** d, patch_size=16,
                                   encoder_ch_mult=ch_mult, decoder_ch_mult=ch_mult, test_mode=True)
    return vae.to(device)


def check_vae_loaded(vae, opts: InfinityOptions) -> None:
    """Every tensor of the built VAE came from the file (upstream's ``load_cnn`` leaves keys it cannot
    place at their random initial values without a word)."""
    path = opts.vae_path
    saved = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "vae" not in saved:
        raise InfinityOptionsError(f"vae_path {str(path)!r} is not an Infinity VAE file (no 'vae' state dict in it)")
    ours = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
    missing = sorted(set(ours) - set(saved["vae"]))
    differ = sorted(k for k in set(ours) & set(saved["vae"]) if not torch.equal(ours[k], saved["vae"][k].to(ours[k].dtype)))
    if missing or differ:
        raise InfinityOptionsError(f"vae_path {str(path)!r} does not fit the VAE shape (vae_type {opts.vae_type}, "
                                   f"vae_kwargs {opts.vae_kwargs}): {len(missing)} tensors not in the file (e.g. "
                                   f"{missing[:3]}), {len(differ)} not loaded (e.g. {differ[:3]})")


def load_text_encoder(folder: str | Path, device: str | torch.device):
    """(tokenizer, T5 encoder) from a Hugging Face folder, as upstream ``load_tokenizer`` reads it."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(folder), revision=None, legacy=True)
    tokenizer.model_max_length = 512
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype).to(device)
    encoder.eval()
    encoder.requires_grad_(False)
    return tokenizer, encoder


def load_direct(up: SimpleNamespace, opts: InfinityOptions):
    """(tokenizer, text encoder, vae, transformer) from the options' files, built with their shapes."""
    device = opts.device
    tokenizer, encoder = load_text_encoder(opts.text_encoder_ckpt, device)
    vae = build_vae(opts, device, opts.vae_path)
    check_vae_loaded(vae, opts)
    model = build_transformer(up, opts, vae, device)
    state = torch.load(str(opts.model_path), map_location=device, weights_only=True)
    fits = f"does not fit the transformer shape {transformer_kwargs(opts)} (text_channels {opts.text_channels})"
    try:
        result = model.load_state_dict(state)  # upstream's override: non-strict, as load_infinity calls it
    except RuntimeError as e:
        raise InfinityOptionsError(f"model_path {opts.model_path!r} {fits}: {e}") from None
    if result.missing_keys or result.unexpected_keys:  # upstream only prints these: we stop
        raise InfinityOptionsError(f"model_path {opts.model_path!r} {fits}: {len(result.missing_keys)} tensors missing "
                                   f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
                                   f"(e.g. {result.unexpected_keys[:3]})")
    model.rng = torch.Generator(device=device)
    return tokenizer, encoder, vae, model
