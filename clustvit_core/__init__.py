"""clustvit_core: ClustViT semantic segmentation (model, data, training, evaluation), free of ROS.

    import clustvit_core as cc
    model = cc.build_model("cwfid_k3_ip3", weights="default")
    out = model(images)          # images: normalized float [B, 3, H, W]

The names below are imported on first use, so light tools (bag writers, the error types) do not
pay for importing torch.
"""
from __future__ import annotations

import importlib

from .errors import ClustViTError, ConfigError, InputError, WeightsError

# public name -> submodule that defines it
_LAZY = {
    "count_flops": "flops", "flop_breakdown": "flops",
    "MergePlan": "merge", "assign_clusters": "merge", "merge_tokens": "merge", "plan_merge": "merge",
    "regenerate": "merge", "unmerge_tokens": "merge",
    "ClustViT": "model", "ClustViTOutput": "model",
    "Segmenter": "predictor", "preprocess": "preprocessing",
    "pseudo_clusters": "pseudo", "load_pretrained_backbone": "pretrained",
    "build_model": "registry", "default_weights": "registry", "list_models": "registry", "load_config": "registry",
    "load_weights": "weights", "read_checkpoint_config": "weights",
    "save_checkpoint": "weights",
}

__all__ = ["ClustViTError", "ConfigError", "InputError", "WeightsError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
