"""Analytic FLOPs of the embedded next-scale transformer (multiply-add = 2 FLOPs).

Counted: every linear layer, attention score and value products (self-attention over the current
KV length, cross-attention over the padded prompt), the tokenizer's phi conv applied to each new
scale's codes. Not counted (as in torch.utils.flop_counter): norms, activations, softmax, sampling,
interpolation, gather/scatter. Classifier-free guidance doubles the work of the branch-dependent
parts because the unconditional branch is a second batch of rows.
"""

from __future__ import annotations

from embedded.config import TokenizerConfig, TransformerConfig


def linear(n: int, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def attention(n_q: int, n_kv: int, width: int) -> float:
    """Scores (QK^T) plus weighted values (AV), all heads together."""
    return 4.0 * n_q * n_kv * width


def block_flops(cfg: TransformerConfig, n_tokens: int, kv_len_after: int) -> float:
    """One block on n_tokens tokens of one image, attending to kv_len_after keys (past + current); also
    elementwise on numpy arrays of both (``schedule_flops_many``)."""
    D, T = cfg.width, cfg.text_context
    sa = linear(n_tokens, D, 3 * D) + attention(n_tokens, kv_len_after, D) + linear(n_tokens, D, D)
    ca = linear(n_tokens, D, D) + attention(n_tokens, T, D) + linear(n_tokens, D, D)
    ffn = linear(n_tokens, D, cfg.mlp_hidden) + linear(n_tokens, cfg.mlp_hidden, D)
    return sa + ca + ffn


def prefill_flops(cfg: TransformerConfig, branches: int = 2) -> float:
    """Per image: prompt encoder, AdaLN projections, start token and cross-attention K/V, per branch."""
    D, T = cfg.width, cfg.text_context
    text = prompt_encoder_flops(cfg)
    ada = linear(1, D, 6 * D) + linear(1, D, 2 * D) + linear(1, D, D)
    ca_kv = cfg.depth * linear(T, D, 2 * D)
    return branches * (text + ada + ca_kv)


def step_flops(cfg: TransformerConfig, tok: TokenizerConfig, scale_index: int, n_keep: int | None,
               kv_lens_before: list[list[int]]) -> float:
    """FLOPs for one image at one scale.

    n_keep: tokens forwarded through the pruned blocks (None: all tokens). kv_lens_before: for each
    branch that runs, the per-block self-attention KV length before this scale.
    """
    side = tok.scales[scale_index]
    L = side * side
    first, last = cfg.pruned_block_range
    total = 0.0
    for lens in kv_lens_before:
        for i, past in enumerate(lens):
            n = n_keep if (n_keep is not None and first <= i < last) else L
            total += block_flops(cfg, n, past + n)
        total += linear(L, cfg.width, cfg.codebook_size)  # head on every token
    return total + scale_shared_flops(cfg, tok, scale_index)


def scale_shared_flops(cfg: TransformerConfig, tok: TokenizerConfig, scale_index: int) -> float:
    """The part of a scale's FLOPs that the guidance branches share: the word embedding of the scale's
    input (after scale 0) and the tokenizer's phi conv on its codes."""
    L = tok.scales[scale_index] ** 2
    total = linear(L, cfg.latent_channels, cfg.width) if scale_index > 0 else 0.0
    if tok.phi_mix > 0:
        s = tok.latent_size
        total += 2.0 * s * s * tok.latent_channels * tok.latent_channels * 9
    return total


def schedule_flops(cfg: TransformerConfig, tok: TokenizerConfig, ratios: list[float],
                   unconditional: list[bool]) -> list[float]:
    """Per-scale FLOPs for one image under a whole schedule (simulates KV growth per branch)."""
    from generator.pruning import tokens_kept

    if len(ratios) != len(tok.scales) or len(unconditional) != len(tok.scales):
        raise ValueError(f"need one ratio and one unconditional flag per scale ({len(tok.scales)}), "
                         f"got {len(ratios)} and {len(unconditional)}")
    first, last = cfg.pruned_block_range
    kv = {"cond": [0] * cfg.depth, "uncond": [0] * cfg.depth}
    out = []
    for k, (r, unc) in enumerate(zip(ratios, unconditional)):
        if r >= 1.0:
            out.append(0.0)
            continue
        L = tok.scales[k] ** 2
        n_keep = tokens_kept(L, r)
        n_keep = None if n_keep >= L else n_keep
        branches = ["cond", "uncond"] if unc else ["cond"]
        out.append(step_flops(cfg, tok, k, n_keep, [kv[b] for b in branches]))
        for b in branches:
            kv[b] = [past + (n_keep if (n_keep is not None and first <= i < last) else L)
                     for i, past in enumerate(kv[b])]
    return out


def schedule_flops_many(cfg: TransformerConfig, tok: TokenizerConfig, ratios_BN, unconditional, per_scale: bool = False):
    """FLOPs of B schedules at once, ``ratios_BN`` (B, num_scales): ``sum(schedule_flops(...))`` of each
    row as a (B,) array, or with ``per_scale`` the (B, num_scales) ``schedule_flops`` themselves, in
    numpy (the random-schedule baseline prices ~10^6 schedules; the budget guard a batch per scale).
    ``unconditional``: one flag per scale for every row, or a (B, num_scales) array of them.

    Same model as ``schedule_flops``: every block of one kind holds the same KV length (blocks in the
    pruned range grow by the kept tokens, the others by all of them), so a scale costs, per branch,
    ``outside * block(L, past_out + L) + inside * block(n, past_in + n)`` plus the head. Every term is
    an integer far below 2**53, so the results equal the loop's exactly (tested)."""
    import numpy as np

    r = np.asarray(ratios_BN, dtype=np.float64)
    N = len(tok.scales)
    if r.ndim != 2 or r.shape[1] != N:
        raise ValueError(f"need (B, {N}) ratios, got shape {r.shape}")
    unc = np.asarray(unconditional, dtype=bool)
    if unc.shape not in ((N,), r.shape):
        raise ValueError(f"need one unconditional flag per scale ({N}), for every row or per row {r.shape}, "
                         f"got shape {unc.shape}")
    unc = np.broadcast_to(unc, r.shape)
    first, last = cfg.pruned_block_range
    inside = last - first
    outside = cfg.depth - inside
    B = r.shape[0]
    out = np.zeros((B, N))
    past = {b: (np.zeros(B), np.zeros(B)) for b in ("cond", "uncond")}  # (outside, inside) KV per branch
    for k in range(N):
        L = tok.scales[k] ** 2
        runs = r[:, k] < 1.0
        # kept tokens: generator.pruning.tokens_kept, elementwise
        n_in = np.where(runs, np.maximum(1.0, L - np.floor(r[:, k] * L)), 0.0)
        n_out = np.where(runs, float(L), 0.0)
        cost = np.zeros(B)
        for branch, active in (("cond", runs), ("uncond", runs & unc[:, k])):
            p_out, p_in = past[branch]
            a_out, a_in = np.where(active, n_out, 0.0), np.where(active, n_in, 0.0)
            branch_cost = outside * block_flops(cfg, a_out, p_out + a_out) + inside * block_flops(cfg, a_in, p_in + a_in) \
                + linear(L, cfg.width, cfg.codebook_size)
            cost += np.where(active, branch_cost, 0.0)
            past[branch] = (p_out + a_out, p_in + a_in)
        out[:, k] = cost + np.where(runs, scale_shared_flops(cfg, tok, k), 0.0)
    return out if per_scale else out.sum(1)


def conv2d(side: int, c_in: int, c_out: int, kernel: int) -> float:
    """A 'same' convolution on a side x side map (multiply-adds x 2; biases not counted)."""
    return 2.0 * side * side * c_in * c_out * kernel * kernel


def decoder_flops(tok: TokenizerConfig) -> float:
    """FLOPs of the tokenizer's decoder for one image (latent_size^2 codes -> image_size^2 pixels),
    mirroring ``embedded.tokenizer._Decoder``: conv_in, a residual block, per level num_res_blocks
    residual blocks (two 3x3 convs, a 1x1 skip when the width changes) and a 3x3 conv after each 2x
    upsampling, conv_out. Norms, activations and the upsampling itself are not counted."""
    chs = [tok.base_channels * m for m in tok.channel_mult][::-1]
    side, c = tok.latent_size, chs[0]

    def res_block(side: int, c_in: int, c_out: int) -> float:
        skip = conv2d(side, c_in, c_out, 1) if c_in != c_out else 0.0
        return conv2d(side, c_in, c_out, 3) + conv2d(side, c_out, c_out, 3) + skip

    total = conv2d(side, tok.latent_channels, c, 3) + res_block(side, c, c)
    for i, c_out in enumerate(chs):
        for _ in range(tok.num_res_blocks):
            total += res_block(side, c, c_out)
            c = c_out
        if i < len(chs) - 1:
            side *= 2
            total += conv2d(side, c, c, 3)
    return total + conv2d(side, c, 3, 3)


def prompt_encoder_flops(cfg: TransformerConfig) -> float:
    """FLOPs of encoding one prompt (the text blocks over the padded context); part of ``prefill_flops``."""
    D, T = cfg.width, cfg.text_context
    return cfg.text_depth * (linear(T, D, 3 * D) + attention(T, T, D) + linear(T, D, D)
                             + linear(T, D, 4 * D) + linear(T, 4 * D, D))
