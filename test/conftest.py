import pytest

try:  # the ROS tests (colcon test) also run in environments without torch
    import torch
except ImportError:
    torch = None

import clustvit_core as cc

# A tiny ClustViT: D=64, depth 4, 64x64 images (4x4 patch grid), k=3, clusters merged before block 1.
TINY = dict(embed_dim=64, depth=4, num_heads=2, patch_size=16, img_size=64, cluster_hidden=32)
# Train-CLI overrides for tiny runs of registry models that start from DINOv2 (ViT-S/14): 16-px patches, no
# pretrained checkpoint (none in a fresh clone), no warm-up (runs of a few iterations), whatever the YAML says.
SCRATCH = ["patch_size=16", "pretrained=null", "warmup_iters=0"]


@pytest.fixture(autouse=True)
def _seed():
    if torch is not None:
        torch.manual_seed(0)


def tiny_model(**overrides):
    """A tiny ClustViT (k=3, ip=1 unless overridden) in eval mode."""
    return cc.build_model("cwfid_k3_ip3", **{**TINY, "ip": 1, **overrides})


def plain_twin(model):
    """The plain ViT with the same weights as a ClustViT (all keys but the cluster module and regenerator)."""
    vit = cc.build_model(model.config.replace(k=None, ip=None)).eval()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("backbone.cluster_mlp.", "backbone.regenerator."))}
    vit.load_state_dict(sd, strict=True)
    return vit
