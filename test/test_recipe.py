"""The fine-tuning recipe: AdamW with layer-wise lr decay, warm-up, class-weighted and OHEM cross-entropy."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clustvit_core import train
from clustvit_core.errors import ConfigError
from clustvit_core.train import (
    TrainSettings, build_optimizer, layer_index, median_frequency_weights, param_groups, poly_lr, segmentation_loss,
)
from conftest import SCRATCH, tiny_model


def test_layer_wise_lr_decay_and_no_decay_groups():
    model = tiny_model()  # depth 4
    assert layer_index("backbone.pos_embed", 4) == 0 and layer_index("backbone.blocks.2.mlp.fc1.weight", 4) == 3
    assert layer_index("backbone.cluster_mlp.fc1.weight", 4) == 5 and layer_index("head.dec_proj.weight", 4) == 5
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    bb = model.backbone
    assert scale[id(bb.patch_embed.proj.weight)] == 0.5 ** 5 and scale[id(bb.blocks[3].attn.qkv.weight)] == 0.5
    assert scale[id(bb.cluster_mlp.fc1.weight)] == 1.0 and scale[id(model.head.dec_proj.weight)] == 1.0
    assert decay[id(bb.blocks[0].attn.qkv.weight)] == 0.05
    assert decay[id(bb.blocks[0].attn.qkv.bias)] == decay[id(bb.norm.weight)] == decay[id(bb.pos_embed)] == 0.0
    opt = build_optimizer(model, TrainSettings(optimizer="adamw", lr=1e-4, min_lr=0.0, weight_decay=0.05, layer_decay=0.5))
    assert isinstance(opt, torch.optim.AdamW) and all("lr_scale" in g for g in opt.param_groups)


def test_warmup_then_poly():
    assert math.isclose(poly_lr(0, 100, 1.0, 0.0, 1.0, warmup_iters=10), 1e-3)
    assert poly_lr(5, 100, 1.0, 0.0, 1.0, warmup_iters=10) < poly_lr(10, 100, 1.0, 0.0, 1.0, warmup_iters=10) == 0.9
    assert poly_lr(50, 100, 1.0, 0.0, 1.0) == 0.5


def test_weighted_and_ohem_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, 0] = 255
    w = torch.tensor([0.1, 2.0, 1.0])
    torch.testing.assert_close(segmentation_loss(logits, labels, w), F.cross_entropy(logits, labels, weight=w, ignore_index=255))
    # threshold 1 keeps every labelled pixel: the plain loss
    torch.testing.assert_close(segmentation_loss(logits, labels, None, 1.0, 0), F.cross_entropy(logits, labels, ignore_index=255))
    # a low threshold keeps only the hardest pixels (at least min_kept of them): a larger loss
    hard = segmentation_loss(logits, labels, None, 0.05, 10)
    assert hard > F.cross_entropy(logits, labels, ignore_index=255)
    prob = logits.softmax(1).gather(1, labels.clamp(max=2)[:, None])[:, 0]
    kept = (labels != 255) & (prob < max(0.05, float(prob[labels != 255].sort().values[10])))
    torch.testing.assert_close(hard, F.cross_entropy(logits, labels, ignore_index=255, reduction="none")[kept].mean())


def test_median_frequency_weights():
    w = median_frequency_weights(np.array([0.926, 0.016, 0.057, 0.0]))
    np.testing.assert_allclose(w[:3], [0.057 / 0.926, 0.057 / 0.016, 1.0])
    assert w[3] == 0


@pytest.mark.parametrize("settings, message", [
    (dict(optimizer="adam"), "optimizer='adam'"),
    (dict(layer_decay=1.5), "layer_decay=1.5"),
    (dict(warmup_iters=80000), "warmup_iters=80000"),
    (dict(class_weights="balanced"), "class_weights='balanced'"),
    (dict(class_weights=[1, -1, 1]), "class_weights"),
    (dict(ohem_thresh=2.0), "ohem_thresh=2.0"),
    (dict(betas=[0.9]), "betas"),
    (dict(lr="fast"), "lr=.fast.: must be a number"),
    (dict(grad_clip=0), "grad_clip=0: must be a number > 0"),
    (dict(grad_clip="yes"), "grad_clip='yes'"),
])
def test_bad_recipe_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainSettings(**settings)


def test_tiny_adamw_weighted_ohem_run(tmp_path, capsys):
    tiny = ["embed_dim=32", "depth=3", "num_heads=2", "cluster_hidden=16", "ip=1", "img_size=64", "val_images=2", *SCRATCH,
            "num_workers=0", "log_interval=1"]
    assert train.main(["synthetic_agri_k3_ip3_base", "--work-dir", str(tmp_path), "--iters", "3", "--batch-size", "2", "--quiet",
                       "optimizer=adamw", "lr=1e-3", "min_lr=0", "weight_decay=0.05", "layer_decay=0.75", "warmup_iters=1",
                       "class_weights=auto", "ohem_thresh=0.7", "ohem_min_kept=100", "val_interval=100", *tiny]) == 0
    out = capsys.readouterr().out
    assert "class weights (median-frequency balancing): soil" in out
    assert (tmp_path / "final.safetensors").is_file()
    with pytest.raises(SystemExit):
        train.main(["synthetic_agri_k3_ip3_base", "--work-dir", str(tmp_path / "b"), "--iters", "2", "class_weights=[1, 2]", *tiny])
    assert "class_weights lists 2 weights for 3 classes" in capsys.readouterr().err


def test_crops_of_a_higher_resolution_image():
    """base_size > size: crops come from the image resized towards base_size (objects stay larger)."""
    from clustvit_core.data.transforms import TrainTransform

    cells = (np.indices((256, 256)) // 32).sum(0) % 2  # 32-px checkerboard
    labels = cells.astype(np.uint8)
    image = np.repeat(labels[..., None] * 200, 3, axis=2).astype(np.uint8)

    def cell_side(**kwargs):
        t = TrainTransform(64, [0, 0, 0], [1, 1, 1], scale=(1.0, 1.0), cat_max_ratio=1.0, flip=False, photometric=False, **kwargs)
        _, out = t(image, labels, seed=0)
        row = out[0].numpy()
        runs = np.diff(np.flatnonzero(np.diff(row) != 0))
        return int(np.median(runs))

    assert cell_side() == 8 and cell_side(base_size=128) == 16
    assert TrainSettings(crop_size=392).crop_size == 392
    with pytest.raises(ConfigError, match="crop_size=0"):
        TrainSettings(crop_size=0)


def test_sqrt_class_weights_and_gradient_clipping_change_the_run(tmp_path, capsys):
    from safetensors.torch import load_file

    tiny = ["embed_dim=32", "depth=2", "num_heads=2", "cluster_hidden=16", "ip=1", "img_size=64", "val_images=1", *SCRATCH,
            "num_workers=0", "optimizer=sgd", "lr=0.05", "min_lr=0", "val_interval=100"]
    finals = {}
    for name, extra in (("plain", []), ("clipped", ["grad_clip=1e-6"])):
        assert train.main(["synthetic_agri_k3_ip3_base", "--work-dir", str(tmp_path / name), "--iters", "2", "--batch-size", "2",
                           "--quiet", "class_weights=sqrt", *extra, *tiny]) == 0
        finals[name] = load_file(tmp_path / name / "final.safetensors")
    out = capsys.readouterr().out
    assert "class weights (square root of median-frequency balancing): soil" in out
    key = "head.cls_emb"
    assert key in finals["plain"] and not torch.equal(finals["plain"][key], finals["clipped"][key])
