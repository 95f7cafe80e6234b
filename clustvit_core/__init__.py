"""clustvit_core: ClustViT semantic segmentation (model, data, training, evaluation), free of ROS.

    import clustvit_core as cc
    model = cc.build_model("cwfid_k3_ip3", weights="default")
    out = model(images)          # images: normalized float [B, 3, H, W]
"""
from .errors import ClustViTError, ConfigError, InputError, WeightsError
from .flops import count_flops, flop_breakdown
from .merge import MergePlan, assign_clusters, merge_tokens, plan_merge, regenerate, unmerge_tokens
from .model import ClustViT, ClustViTOutput
from .predictor import preprocess
from .pseudo import pseudo_clusters
from .registry import build_model, default_weights, list_models, load_config
from .weights import load_timm_backbone, load_weights, read_checkpoint_config, save_checkpoint

__all__ = [
    "ClustViT", "ClustViTOutput", "ClustViTError", "ConfigError", "InputError", "WeightsError", "MergePlan",
    "assign_clusters", "build_model", "count_flops", "default_weights", "flop_breakdown", "list_models",
    "load_config", "load_timm_backbone", "load_weights", "merge_tokens", "plan_merge", "preprocess", "pseudo_clusters",
    "read_checkpoint_config", "regenerate", "save_checkpoint", "unmerge_tokens",
]
