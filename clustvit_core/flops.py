"""FLOP counting with torch's own counter (torch.utils.flop_counter); a multiply-add counts as 2 FLOPs.

torch registers no formula for the CPU flash-attention kernel that scaled_dot_product_attention
uses on CPU, so one is added here (the same formula torch uses for the CUDA kernels).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_aten = torch.ops.aten


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM = {_aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}

# Breakdown groups: name -> submodule path prefix of a ClustViT.
PARTS = {"backbone": "backbone", "cluster": "backbone.cluster_mlp", "regenerator": "backbone.regenerator", "head": "head", "refiner": "refiner"}


def _count(model: nn.Module, images: Tensor, **forward_kwargs) -> FlopCounterMode:
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.inference_mode(), counter:
        model(images, **forward_kwargs)
    return counter


def count_flops(model: nn.Module, images: Tensor, **forward_kwargs) -> float | list[float]:
    """Total forward FLOPs. For B > 1 each image is counted alone and a list is returned
    (token counts, and so FLOPs, differ per image). `forward_kwargs` go to the model
    (e.g. cluster_ids=..., keep_bias=...); a batched `cluster_ids` is split like the images."""
    if images.shape[0] == 1:
        return float(_count(model, images, **forward_kwargs).get_total_flops())
    return [
        float(flop_breakdown(model, images[i : i + 1], **_slice_kwargs(forward_kwargs, i))["total"])
        for i in range(images.shape[0])
    ]


def _slice_kwargs(kwargs: dict, i: int) -> dict:
    return {k: v[i : i + 1] if isinstance(v, Tensor) else v for k, v in kwargs.items()}


def flop_breakdown(model: nn.Module, image: Tensor, **forward_kwargs) -> dict[str, float]:
    """FLOPs of one image [1, 3, H, W]: total, backbone (incl. cluster and regenerator), cluster, regenerator, head."""
    if image.shape[0] != 1:
        raise ValueError(f"flop_breakdown takes one image [1, 3, H, W], got batch {image.shape[0]}")
    counter = _count(model, image, **forward_kwargs)
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    out = {"total": float(counter.get_total_flops())}
    for part, prefix in PARTS.items():
        out[part] = float(sum(per_module.get(f"{root}.{prefix}", {}).values()))
    return out
