"""An SDPA stand-in for the two ``flash_attn`` functions upstream Infinity calls, for CPU runs only.

Upstream's ``infinity/models/basic.py`` imports ``flash_attn`` unconditionally, and flash-attn installs
only with CUDA. On a machine without it, the direct loader on ``device: cpu`` puts this module in
``sys.modules['flash_attn']`` (and says so on stderr) so that the upstream classes import. Our
generator runs its own self-attention; upstream's cross-attention calls
``flash_attn_varlen_kvpacked_func``, answered here by ``torch.nn.functional.scaled_dot_product_attention``
(the same maths, not the same kernel; one call per batch when the prompts are padded to one length). A GPU user with flash-attn installed never gets this.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale=None, **_ignored):
    """q, k, v (B, L, H, c) -> (B, L, H, c); non-causal, no dropout (inference)."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale)
    return o.transpose(1, 2)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p: float = 0.0, softmax_scale=None, **_ignored):
    """q (Nq, H, c) and kv (Nk, 2, H, c) packed sequences with cumulative lengths -> (Nq, H, c). When every
    sequence has the maximum length (as upstream's padded prompts do; the sizes tell, no host sync) one SDPA
    call for the batch, else one per sequence: the same maths either way."""
    n = cu_seqlens_q.shape[0] - 1
    if q.shape[0] != n * max_seqlen_q or kv.shape[0] != n * max_seqlen_k:
        return per_sequence_varlen(q, kv, cu_seqlens_q, cu_seqlens_k, softmax_scale)
    H, c = q.shape[1], q.shape[2]
    q_BHLc = q.view(n, max_seqlen_q, H, c).transpose(1, 2)
    k_BHSc, v_BHSc = (kv[:, i].reshape(n, max_seqlen_k, H, c).transpose(1, 2) for i in (0, 1))
    o_BHLc = F.scaled_dot_product_attention(q_BHLc, k_BHSc, v_BHSc, scale=softmax_scale)
    return o_BHLc.transpose(1, 2).reshape(n * max_seqlen_q, H, c)


def per_sequence_varlen(q, kv, cu_seqlens_q, cu_seqlens_k, softmax_scale=None):
    """The packed call one sequence at a time (four host syncs per sequence: the fallback for unequal lengths)."""
    out = []
    for i in range(len(cu_seqlens_q) - 1):
        qi = q[int(cu_seqlens_q[i]):int(cu_seqlens_q[i + 1])].transpose(0, 1)
        kvi = kv[int(cu_seqlens_k[i]):int(cu_seqlens_k[i + 1])]
        o = F.scaled_dot_product_attention(qi, kvi[:, 0].transpose(0, 1), kvi[:, 1].transpose(0, 1), scale=softmax_scale)
        out.append(o.transpose(0, 1))
    return torch.cat(out, 0)


def stand_in_module() -> types.ModuleType:
    """A module named ``flash_attn`` holding the two functions above (its ``ops`` submodules are absent,
    so upstream's ``flash_fused_op_installed`` is False, as on any machine without the fused kernels)."""
    m = types.ModuleType("flash_attn")
    m.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    m.__doc__ = __doc__
    m.flash_attn_func = flash_attn_func
    m.flash_attn_varlen_kvpacked_func = flash_attn_varlen_kvpacked_func
    m.varprune_stand_in = True
    return m


def install_if_missing() -> bool:
    """Put the stand-in in ``sys.modules`` when no ``flash_attn`` is importable. Returns True when it did
    (or had already); False when the real flash-attn is there and is left alone."""
    current = sys.modules.get("flash_attn")
    if current is not None:
        return bool(getattr(current, "varprune_stand_in", False))
    if importlib.util.find_spec("flash_attn") is not None:
        return False
    sys.modules["flash_attn"] = stand_in_module()
    print("note: flash_attn is not installed; upstream Infinity's attention calls use an SDPA stand-in "
          "(infinity_backend/flash_attn_stand_in.py) on the CPU", file=sys.stderr)
    return True
