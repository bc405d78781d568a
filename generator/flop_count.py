"""Counting a module's FLOPs once with ``torch.utils.flop_counter.FlopCounterMode``.

Used where a backend has no analytic model of a part (Infinity's VAE decoder and T5 encoder) and by
the tests that check the analytic counts. Multiply-add = 2 FLOPs, as everywhere in this project.
FlopCounterMode does not know the CPU flash-attention kernel that ``F.scaled_dot_product_attention``
dispatches to on CPU; it is mapped here to the same formula as the GPU kernels (QK^T and AV).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_flash_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa
    return mapping


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of running ``fn()`` once (no gradients), as FlopCounterMode counts them (matmuls,
    convolutions, attention; not elementwise ops or norms)."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())
