"""``python -m infinity_backend make-tiny OUT_DIR``: a tiny random Infinity on disk, to run the whole
Infinity path (check, train, evaluate, generate, GenEval) on a CPU in minutes.

Writes, in the formats upstream's loaders read:

- ``infinity_tiny.pth``: the transformer's state dict (``torch.save(model.state_dict())``, what
  ``load_infinity`` gives ``load_state_dict``): upstream ``Infinity`` with ``TINY_MODEL`` (the
  equivalence tests' shape: 6 blocks, width 64, 2 heads) and 128-wide text features;
- ``vae_tiny.pth``: ``{'vae': state_dict}`` of upstream's BSQ VAE (``vae_model``'s format) with
  ``TINY_VAE`` channels and ``vae_type`` 32 bits per token;
- ``t5_tiny/``: a Hugging Face folder (``config.json``, weights, ``tokenizer.json``) that
  ``AutoTokenizer`` / ``T5EncoderModel.from_pretrained`` read: a one-layer random T5 encoder and a
  Unigram tokenizer trained offline with ``tokenizers`` on the shipped prompt splits;
- ``opts.json``: the options pointing at them, ``loader: "direct"`` (``infinity_backend.direct``), pn
  0.06M (7 scales up to a 16x16 token map, 256x256 images), ``device: "cpu"``.

The weights are random: images are noise, rewards and schedules mean nothing; the point is that every
command runs and every file is read the way the real one is. Nothing is downloaded.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from infinity_backend.options import InfinityOptions

TINY_MODEL = {"depth": 6, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 4, "block_chunks": 2}
#: upstream's VAE is base_ch 128, num_res_blocks 2, ch_mult [1, 2, 4, 4, 4]; this decodes a 256x256 image
#: in ~5 GFLOPs (the transformer's whole image: ~1.3)
TINY_VAE = {"base_ch": 24, "num_res_blocks": 1, "ch_mult": [1, 1, 1, 1, 1]}
TINY_T5 = {"d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 1, "num_heads": 4}
TINY_VOCAB = 300


def tiny_options(src: str | Path, out_dir: Path) -> InfinityOptions:
    """The options of the tiny checkpoint in ``out_dir`` (absolute paths: runs copy them into their config)."""
    out = out_dir.resolve()
    return InfinityOptions(
        src=str(Path(src).resolve()), loader="direct", model_type="tiny", model_kwargs=dict(TINY_MODEL),
        vae_kwargs=dict(TINY_VAE), model_path=str(out / "infinity_tiny.pth"), vae_path=str(out / "vae_tiny.pth"),
        text_encoder_ckpt=str(out / "t5_tiny"), pn="0.06M", vae_type=32, text_channels=TINY_T5["d_model"],
        cfg=3.0, tau=0.5, device="cpu", bf16=False, flops_text_tokens=16)


def build_tokenizer(corpus: list[str]):
    """A T5-style tokenizer (Unigram pieces, Metaspace, ``</s>`` appended; pad 0, eos 1, unk 2) trained on
    ``corpus``, with every printable ASCII character in its alphabet so no prompt maps to ``<unk>`` only."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=TINY_VOCAB, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", initial_alphabet=list(string.printable.strip()))
    tok.train_from_iterator(corpus, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def write_text_encoder(folder: Path, seed: int) -> None:
    from transformers import T5Config, T5EncoderModel

    from domain.splits import PROMPTS_DIR, SPLITS

    corpus = [ln for s in SPLITS for ln in (PROMPTS_DIR / f"{s}.txt").read_text(encoding="utf-8").splitlines() if ln]
    tokenizer = build_tokenizer(corpus)
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TINY_T5)).eval()
    t5.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def make_tiny(out_dir: str | Path, src: str | Path | None = None, seed: int = 0) -> Path:
    """Write the tiny checkpoint files and ``opts.json`` into ``out_dir``; returns the options file.
    ``src``: the upstream checkout (default ``$INFINITY_SRC``); its classes build the model."""
    from infinity_backend.direct import build_transformer, build_vae
    from infinity_backend.flash_attn_stand_in import install_if_missing
    from infinity_backend.upstream import import_upstream

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = tiny_options(InfinityOptions(src=None if src is None else str(src)).resolved_src(), out)
    opts.validate(require_checkpoints=False)
    install_if_missing()
    up = import_upstream(opts.resolved_src())
    write_text_encoder(out / "t5_tiny", seed)
    torch.manual_seed(seed)
    vae = build_vae(opts, "cpu")
    model = build_transformer(up, opts, vae, "cpu")
    torch.save({"vae": vae.state_dict()}, opts.vae_path)
    torch.save(model.state_dict(), opts.model_path)
    path = out / "opts.json"
    path.write_text(json.dumps(opts.to_dict(), indent=1) + "\n")
    return path
