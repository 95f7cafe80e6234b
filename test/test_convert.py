"""Tests of clustvit_core.convert: mmsegmentation (ClustViT authors') checkpoints -> our state dict.

The mmseg state dicts are built by hand with the key names and shapes of mmseg 1.x
`VisionTransformer` / `TransformerEncoderLayer` (ln1, attn.attn.in_proj_*, ffn.layers.0.0 / 1, ln2,
final norm ln1, patch_embed.projection without bias), the authors' `ClustViT` (clusterer.net.0/2,
expand_mlp.0/2), `SegmenterMaskTransformerHead` and `UPerHead` + `PPM` with mmcv `ConvModule`s.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clustvit_core
from clustvit_core import WeightsError, build_model
from clustvit_core.convert import convert_mmseg_state_dict, main
from clustvit_core.weights import resize_pos_embed

ROOT = Path(__file__).resolve().parents[1]

D, DEPTH, HEADS, HIDDEN, IMG = 64, 4, 2, 32, 64  # tiny model: 4x4 patch grid
TINY = dict(embed_dim=D, depth=DEPTH, num_heads=HEADS, patch_size=16, img_size=IMG, cluster_hidden=HIDDEN)
BACKBONE_EPS, HEAD_EPS = 1e-6, 1e-5  # the authors' backbone_norm_cfg eps; mmseg's LN default in the head


def _w(*shape, scale=0.05):
    return torch.randn(*shape) * scale


def _norm(prefix, dim, sd):
    sd[f"{prefix}.weight"] = 1 + _w(dim, scale=0.1)
    sd[f"{prefix}.bias"] = _w(dim, scale=0.1)


def _mmseg_layer(prefix, dim, sd, mlp_ratio=4):
    _norm(f"{prefix}.ln1", dim, sd)
    sd[f"{prefix}.attn.attn.in_proj_weight"] = _w(3 * dim, dim)
    sd[f"{prefix}.attn.attn.in_proj_bias"] = _w(3 * dim)
    sd[f"{prefix}.attn.attn.out_proj.weight"] = _w(dim, dim)
    sd[f"{prefix}.attn.attn.out_proj.bias"] = _w(dim)
    _norm(f"{prefix}.ln2", dim, sd)
    sd[f"{prefix}.ffn.layers.0.0.weight"] = _w(mlp_ratio * dim, dim)
    sd[f"{prefix}.ffn.layers.0.0.bias"] = _w(mlp_ratio * dim)
    sd[f"{prefix}.ffn.layers.1.weight"] = _w(dim, mlp_ratio * dim)
    sd[f"{prefix}.ffn.layers.1.bias"] = _w(dim)


def _conv_module(prefix, cin, cout, kernel, sd):
    sd[f"{prefix}.conv.weight"] = _w(cout, cin, kernel, kernel)
    sd[f"{prefix}.bn.weight"] = 1 + _w(cout, scale=0.1)
    sd[f"{prefix}.bn.bias"] = _w(cout, scale=0.1)
    sd[f"{prefix}.bn.running_mean"] = _w(cout, scale=0.1)
    sd[f"{prefix}.bn.running_var"] = 1 + torch.rand(cout)
    sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(1234)


def mmseg_state_dict(
    *, clustvit=True, k=3, head="segmenter", num_classes=3, grid=4, patch_bias=False, head_layers=2,
    uper_channels=16, uper_maps=4, aux=True, depth=DEPTH,
):
    """A random state dict named and shaped like the authors' mmseg checkpoints (tiny sizes)."""
    torch.manual_seed(0)
    sd = {}
    sd["backbone.cls_token"] = _w(1, 1, D)
    sd["backbone.pos_embed"] = _w(1, 1 + grid * grid, D)
    sd["backbone.patch_embed.projection.weight"] = _w(D, 3, 16, 16)
    if patch_bias:
        sd["backbone.patch_embed.projection.bias"] = _w(D)
    for i in range(depth):
        _mmseg_layer(f"backbone.layers.{i}", D, sd)
    _norm("backbone.ln1", D, sd)  # final_norm=True
    if clustvit:
        sd["backbone.clusterer.net.0.weight"] = _w(HIDDEN, D)
        sd["backbone.clusterer.net.0.bias"] = _w(HIDDEN)
        sd["backbone.clusterer.net.2.weight"] = _w(k + 1, HIDDEN)
        sd["backbone.clusterer.net.2.bias"] = _w(k + 1)
        sd["backbone.expand_mlp.0.weight"] = _w(D, 2 * D)
        sd["backbone.expand_mlp.0.bias"] = _w(D)
        sd["backbone.expand_mlp.2.weight"] = _w(D, D)
        sd["backbone.expand_mlp.2.bias"] = _w(D)
    if head == "segmenter":
        for i in range(head_layers):
            _mmseg_layer(f"decode_head.layers.{i}", D, sd)
        sd["decode_head.dec_proj.weight"] = _w(D, D)
        sd["decode_head.dec_proj.bias"] = _w(D)
        sd["decode_head.cls_emb"] = _w(1, num_classes, D, scale=0.5)
        sd["decode_head.patch_proj.weight"] = _w(D, D)
        sd["decode_head.classes_proj.weight"] = _w(D, D)
        _norm("decode_head.decoder_norm", D, sd)
        _norm("decode_head.mask_norm", num_classes, sd)
    else:
        C = uper_channels
        for i in range(4):  # pool scales (1, 2, 3, 6)
            _conv_module(f"decode_head.psp_modules.{i}.1", D, C, 1, sd)
        _conv_module("decode_head.bottleneck", D + 4 * C, C, 3, sd)
        for i in range(uper_maps - 1):
            _conv_module(f"decode_head.lateral_convs.{i}", D, C, 1, sd)
            _conv_module(f"decode_head.fpn_convs.{i}", C, C, 3, sd)
        _conv_module("decode_head.fpn_bottleneck", uper_maps * C, C, 3, sd)
        sd["decode_head.conv_seg.weight"] = _w(num_classes, C, 1, 1)
        sd["decode_head.conv_seg.bias"] = _w(num_classes)
    if aux:  # e.g. an FCN auxiliary head; the authors' AuxPassthrough has no weights at all
        sd["auxiliary_head.convs.0.conv.weight"] = _w(8, D, 3, 3)
        sd["auxiliary_head.conv_seg.weight"] = _w(num_classes, 8, 1, 1)
        sd["auxiliary_head.conv_seg.bias"] = _w(num_classes)
    return sd


def tiny(name="cwfid_k3_ip3", **overrides):
    return build_model(name, **{**TINY, **overrides})


def load_converted(model, sd):
    converted = convert_mmseg_state_dict(sd, model)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return converted


# ----------------------------------------------------------------------------- key mapping


@pytest.mark.parametrize(
    "name, clustvit, head, extra",
    [
        ("cwfid_k3_ip3", True, "segmenter", {}),
        ("cwfid_vit", False, "segmenter", {}),
        ("rumexweeds_k3_ip3_uper", True, "uper", {"ip": 2, "uper_channels": 16}),
        ("rumexweeds_vit", False, "uper", {"head": "uper", "uper_channels": 16}),
    ],
)
@pytest.mark.parametrize("patch_bias", [False, True])
def test_converts_and_loads_strictly(name, clustvit, head, extra, patch_bias):
    model = tiny(name, **extra)
    sd = mmseg_state_dict(clustvit=clustvit, head=head, patch_bias=patch_bias, num_classes=model.num_classes)
    before = {k: v.clone() for k, v in sd.items()}
    converted = load_converted(model, sd)
    assert set(converted) == set(model.state_dict())
    assert all(torch.equal(before[k], sd[k]) for k in sd) and set(before) == set(sd)  # input untouched
    state = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key
    bias = state["backbone.patch_embed.proj.bias"]
    if patch_bias:
        assert torch.equal(bias, sd["backbone.patch_embed.projection.bias"])
    else:
        assert torch.count_nonzero(bias) == 0
    assert model.clustering == clustvit


def test_values_land_in_the_right_place():
    model = tiny()
    sd = mmseg_state_dict()
    load_converted(model, sd)
    b = model.backbone
    assert torch.equal(b.blocks[1].attn.qkv.weight, sd["backbone.layers.1.attn.attn.in_proj_weight"])
    assert torch.equal(b.blocks[1].attn.qkv.bias, sd["backbone.layers.1.attn.attn.in_proj_bias"])
    assert torch.equal(b.blocks[2].attn.proj.weight, sd["backbone.layers.2.attn.attn.out_proj.weight"])
    assert torch.equal(b.blocks[3].norm1.weight, sd["backbone.layers.3.ln1.weight"])
    assert torch.equal(b.blocks[3].norm2.bias, sd["backbone.layers.3.ln2.bias"])
    assert torch.equal(b.blocks[0].mlp.fc1.weight, sd["backbone.layers.0.ffn.layers.0.0.weight"])
    assert torch.equal(b.blocks[0].mlp.fc2.bias, sd["backbone.layers.0.ffn.layers.1.bias"])
    assert torch.equal(b.norm.weight, sd["backbone.ln1.weight"])
    assert torch.equal(b.patch_embed.proj.weight, sd["backbone.patch_embed.projection.weight"])
    assert torch.equal(b.cls_token, sd["backbone.cls_token"])
    assert torch.equal(b.pos_embed, sd["backbone.pos_embed"])  # same 4x4 grid: copied as is
    # the authors' Cluster module and Regenerator
    assert torch.equal(b.cluster_mlp.fc1.weight, sd["backbone.clusterer.net.0.weight"])
    assert torch.equal(b.cluster_mlp.fc1.bias, sd["backbone.clusterer.net.0.bias"])
    assert torch.equal(b.cluster_mlp.fc2.weight, sd["backbone.clusterer.net.2.weight"])
    assert torch.equal(b.cluster_mlp.fc2.bias, sd["backbone.clusterer.net.2.bias"])
    assert torch.equal(b.regenerator.fc1.weight, sd["backbone.expand_mlp.0.weight"])
    assert torch.equal(b.regenerator.fc1.bias, sd["backbone.expand_mlp.0.bias"])
    assert torch.equal(b.regenerator.fc2.weight, sd["backbone.expand_mlp.2.weight"])
    assert torch.equal(b.regenerator.fc2.bias, sd["backbone.expand_mlp.2.bias"])
    # Segmenter head
    h = model.head
    assert torch.equal(h.layers[1].attn.qkv.weight, sd["decode_head.layers.1.attn.attn.in_proj_weight"])
    assert torch.equal(h.layers[0].mlp.fc1.weight, sd["decode_head.layers.0.ffn.layers.0.0.weight"])
    for name in ("dec_proj.weight", "dec_proj.bias", "cls_emb", "patch_proj.weight", "classes_proj.weight",
                 "decoder_norm.weight", "mask_norm.bias"):
        assert torch.equal(h.get_parameter(name), sd[f"decode_head.{name}"]), name


def test_uper_values_land_in_the_right_place():
    model = tiny("rumexweeds_k3_ip3_uper", ip=2, uper_channels=16)
    sd = mmseg_state_dict(head="uper")
    load_converted(model, sd)
    state = model.state_dict()
    for key in ("psp_modules.2.1.conv.weight", "psp_modules.3.1.bn.running_var", "bottleneck.bn.num_batches_tracked",
                "lateral_convs.1.conv.weight", "fpn_convs.2.bn.running_mean", "fpn_bottleneck.conv.weight",
                "conv_seg.weight", "conv_seg.bias"):
        assert torch.equal(state[f"head.{key}"], sd[f"decode_head.{key}"]), key


def test_pos_embed_resized_to_model_grid():
    model = tiny()
    sd = mmseg_state_dict(grid=6)  # trained on a 6x6 grid (96 px), the model has 4x4
    converted = load_converted(model, sd)
    expected = resize_pos_embed(sd["backbone.pos_embed"], (4, 4))
    assert converted["backbone.pos_embed"].shape == (1, 17, D)
    assert torch.equal(model.backbone.pos_embed, expected)
    assert torch.equal(model.backbone.pos_embed[:, 0], sd["backbone.pos_embed"][:, 0])  # CLS position kept
    wide = tiny(img_size=[64, 96])  # non-square model grid 4x6
    load_converted(wide, mmseg_state_dict(grid=4))
    assert torch.equal(wide.backbone.pos_embed, resize_pos_embed(mmseg_state_dict(grid=4)["backbone.pos_embed"], (4, 6)))


def test_drops_auxiliary_loss_and_old_conv_seg():
    model = tiny()
    sd = mmseg_state_dict(aux=True)
    sd["decode_head.conv_seg.weight"] = _w(3, D, 1, 1)  # older mmseg keeps an unused conv_seg in Segmenter
    sd["decode_head.conv_seg.bias"] = _w(3)
    sd["decode_head.loss_decode.0.class_weight"] = torch.ones(3)
    sd["data_preprocessor.mean"] = torch.ones(3, 1, 1)
    load_converted(model, sd)
    module_prefixed = {f"module.{k}": v for k, v in mmseg_state_dict().items()}  # DDP-wrapped
    load_converted(tiny(), module_prefixed)


# ----------------------------------------------------------------------------- numerics


def mmseg_layer_forward(x, sd, prefix, eps):
    """Reference forward of one mmseg TransformerEncoderLayer (pre-norm, exact GELU)."""
    dim = x.shape[-1]
    mha = nn.MultiheadAttention(dim, HEADS, batch_first=True)
    mha.load_state_dict({
        "in_proj_weight": sd[f"{prefix}.attn.attn.in_proj_weight"],
        "in_proj_bias": sd[f"{prefix}.attn.attn.in_proj_bias"],
        "out_proj.weight": sd[f"{prefix}.attn.attn.out_proj.weight"],
        "out_proj.bias": sd[f"{prefix}.attn.attn.out_proj.bias"],
    })
    mha.eval()
    h = F.layer_norm(x, (dim,), sd[f"{prefix}.ln1.weight"], sd[f"{prefix}.ln1.bias"], eps)
    x = x + mha(h, h, h, need_weights=False)[0]
    h = F.layer_norm(x, (dim,), sd[f"{prefix}.ln2.weight"], sd[f"{prefix}.ln2.bias"], eps)
    h = F.gelu(F.linear(h, sd[f"{prefix}.ffn.layers.0.0.weight"], sd[f"{prefix}.ffn.layers.0.0.bias"]))
    return x + F.linear(h, sd[f"{prefix}.ffn.layers.1.weight"], sd[f"{prefix}.ffn.layers.1.bias"])


@torch.no_grad()
def test_block_matches_mmseg_layer():
    model = tiny()
    sd = mmseg_state_dict()
    load_converted(model, sd)
    x = torch.randn(2, 17, D)
    for i in range(DEPTH):
        ours = model.backbone.blocks[i](x)
        torch.testing.assert_close(ours, mmseg_layer_forward(x, sd, f"backbone.layers.{i}", BACKBONE_EPS), atol=1e-5, rtol=0)
    ours = model.head.layers[0](x)
    torch.testing.assert_close(ours, mmseg_layer_forward(x, sd, "decode_head.layers.0", HEAD_EPS), atol=1e-5, rtol=0)


@torch.no_grad()
def test_cluster_module_and_regenerator_match_authors():
    model = tiny()
    sd = mmseg_state_dict()
    load_converted(model, sd)
    x = torch.randn(2, 16, D)
    clusterer = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 4))
    clusterer.load_state_dict({k.removeprefix("backbone.clusterer.net."): v for k, v in sd.items() if k.startswith("backbone.clusterer.")})
    torch.testing.assert_close(model.backbone.cluster_mlp(x), clusterer(x), atol=1e-6, rtol=0)
    expand = nn.Sequential(nn.Linear(2 * D, D), nn.GELU(), nn.Linear(D, D))
    expand.load_state_dict({k.removeprefix("backbone.expand_mlp."): v for k, v in sd.items() if k.startswith("backbone.expand_mlp.")})
    rep = torch.randn(2, 16, D)
    torch.testing.assert_close(model.backbone.regenerator.reference(x, rep), expand(torch.cat([x, rep], -1)), atol=1e-6, rtol=0)


def mmseg_pos_embed(pos_embed, h, w):
    """mmseg's VisionTransformer.resize_pos_embed: plain bicubic F.interpolate of the square grid."""
    side = int((pos_embed.shape[1] - 1) ** 0.5)
    if (side, side) == (h, w):
        return pos_embed
    grid = pos_embed[:, 1:].reshape(1, side, side, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], 1)


def mmseg_segmenter_forward(images, sd, num_classes, cluster_ids=None, ip=None, k=3):
    """Reference forward of the authors' model (batch of one when clustering), from the mmseg tensors.
    As the authors' `_reduce_tokens`: all k cluster tokens are appended, an empty cluster as zeros."""
    B, _, H, W = images.shape
    h, w = H // 16, W // 16
    x = F.conv2d(images, sd["backbone.patch_embed.projection.weight"], sd.get("backbone.patch_embed.projection.bias"), stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["backbone.cls_token"].expand(B, -1, -1), x], 1) + mmseg_pos_embed(sd["backbone.pos_embed"], h, w)
    orig, kept_n, logits = None, None, None
    for i in range(DEPTH):
        if i == ip:  # the authors' _reduce_tokens with given ids, every cluster non-empty, B == 1
            orig = x[:, 1:]
            logits = F.linear(F.relu(F.linear(orig, sd["backbone.clusterer.net.0.weight"], sd["backbone.clusterer.net.0.bias"])),
                              sd["backbone.clusterer.net.2.weight"], sd["backbone.clusterer.net.2.bias"])
            ids = cluster_ids.reshape(-1)
            kept = orig[0, ids == 0]
            means = torch.stack([orig[0, ids == j].mean(0) if (ids == j).any() else torch.zeros(D) for j in range(1, k + 1)])
            kept_n = kept.shape[0]
            x = torch.cat([x[:, :1], kept[None], means[None]], 1)
        x = mmseg_layer_forward(x, sd, f"backbone.layers.{i}", BACKBONE_EPS)
    if orig is not None:  # the authors' _expand_tokens
        ids = cluster_ids.reshape(-1)
        reps = x[0, 1 + kept_n:]
        full = torch.zeros(h * w, D, dtype=x.dtype)
        full[ids == 0] = x[0, 1:1 + kept_n]
        member = ids != 0
        mlp_in = torch.cat([orig[0, member], reps[ids[member] - 1]], -1)
        hidden = F.gelu(F.linear(mlp_in, sd["backbone.expand_mlp.0.weight"], sd["backbone.expand_mlp.0.bias"]))
        full[member] = F.linear(hidden, sd["backbone.expand_mlp.2.weight"], sd["backbone.expand_mlp.2.bias"])
        x = torch.cat([x[:, :1], full[None]], 1)
    x = F.layer_norm(x, (D,), sd["backbone.ln1.weight"], sd["backbone.ln1.bias"], BACKBONE_EPS)
    t = F.linear(x[:, 1:], sd["decode_head.dec_proj.weight"], sd["decode_head.dec_proj.bias"])
    t = torch.cat([t, sd["decode_head.cls_emb"].expand(B, -1, -1)], 1)
    for i in range(2):
        t = mmseg_layer_forward(t, sd, f"decode_head.layers.{i}", HEAD_EPS)
    t = F.layer_norm(t, (D,), sd["decode_head.decoder_norm.weight"], sd["decode_head.decoder_norm.bias"], HEAD_EPS)
    patches = F.normalize(F.linear(t[:, :-num_classes], sd["decode_head.patch_proj.weight"]), dim=2)
    classes = F.normalize(F.linear(t[:, -num_classes:], sd["decode_head.classes_proj.weight"]), dim=2)
    masks = F.layer_norm(patches @ classes.transpose(1, 2), (num_classes,), sd["decode_head.mask_norm.weight"],
                         sd["decode_head.mask_norm.bias"], HEAD_EPS)
    masks = masks.permute(0, 2, 1).reshape(B, num_classes, h, w)
    return F.interpolate(masks, size=(H, W), mode="bilinear", align_corners=False), logits


@torch.no_grad()
def test_plain_vit_segmenter_end_to_end_matches_mmseg():
    model = tiny("cwfid_vit")
    sd = mmseg_state_dict(clustvit=False)
    load_converted(model, sd)
    images = torch.randn(2, 3, IMG, IMG)
    expected, _ = mmseg_segmenter_forward(images, sd, model.num_classes)
    torch.testing.assert_close(model(images).logits, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_clustvit_segmenter_end_to_end_matches_authors_with_given_clusters():
    model = tiny(ip=2)
    sd = mmseg_state_dict()
    load_converted(model, sd)
    images = torch.randn(1, 3, IMG, IMG)
    ids = torch.tensor([0, 1, 1, 0, 2, 2, 0, 3, 3, 3, 0, 0, 1, 2, 0, 3]).view(1, 4, 4)  # every cluster non-empty
    expected, expected_logits = mmseg_segmenter_forward(images, sd, model.num_classes, cluster_ids=ids, ip=2)
    out = model(images, cluster_ids=ids)
    torch.testing.assert_close(out.cluster_logits, expected_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- errors


def _one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_wrong_num_classes_is_one_line_weights_error():
    model = tiny()  # 3 classes
    with pytest.raises(WeightsError) as excinfo:
        convert_mmseg_state_dict(mmseg_state_dict(num_classes=5), model)
    text = _one_line_error(excinfo)
    assert "decode_head.cls_emb" in text and "(1, 5, 64)" in text and "(1, 3, 64)" in text and "num_classes" in text


def test_wrong_k_and_cluster_hidden_name_the_setting():
    with pytest.raises(WeightsError, match="cluster_mlp.fc2") as excinfo:
        convert_mmseg_state_dict(mmseg_state_dict(k=4), tiny())
    assert "k (number of clusters)" in _one_line_error(excinfo)
    with pytest.raises(WeightsError, match="cluster_hidden"):
        convert_mmseg_state_dict(mmseg_state_dict(), tiny(cluster_hidden=48))
    with pytest.raises(WeightsError, match="uper_channels"):
        convert_mmseg_state_dict(mmseg_state_dict(head="uper", uper_channels=24), tiny("rumexweeds_k3_ip3_uper", ip=2, uper_channels=16))


@pytest.mark.parametrize(
    "sd_kwargs, name, extra, expected",
    [
        ({"clustvit": True}, "cwfid_vit", {}, "the checkpoint is a ClustViT"),
        ({"clustvit": False}, "cwfid_k3_ip3", {}, "the checkpoint is a plain ViT"),
        ({"head": "uper"}, "cwfid_k3_ip3", {}, "UPerNet head, the model a Segmenter head"),
        ({"depth": 6}, "cwfid_k3_ip3", {}, "backbone has 6 layers, the model 4"),
        ({"head_layers": 1}, "cwfid_k3_ip3", {}, "head_layers=1"),
    ],
)
def test_structure_mismatch_is_explained(sd_kwargs, name, extra, expected):
    with pytest.raises(WeightsError) as excinfo:
        convert_mmseg_state_dict(mmseg_state_dict(**sd_kwargs), tiny(name, **extra))
    assert expected in _one_line_error(excinfo)


def test_unmapped_keys_are_listed():
    sd = mmseg_state_dict()
    sd["backbone.ln_pre.weight"] = torch.ones(D)
    sd["backbone.ln_pre.bias"] = torch.zeros(D)
    with pytest.raises(WeightsError) as excinfo:
        convert_mmseg_state_dict(sd, tiny())
    text = _one_line_error(excinfo)
    assert "backbone.ln_pre.weight" in text and "pre_norm" in text
    sd = mmseg_state_dict()
    del sd["backbone.ln1.weight"], sd["backbone.ln1.bias"]
    with pytest.raises(WeightsError, match="final_norm"):
        convert_mmseg_state_dict(sd, tiny())


def test_other_formats_are_refused():
    model = tiny()
    with pytest.raises(WeightsError, match="already uses clustvit_core key names"):
        convert_mmseg_state_dict(model.state_dict(), model)
    timm_like = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    with pytest.raises(WeightsError, match="timm"):
        convert_mmseg_state_dict(timm_like, model)
    with pytest.raises(WeightsError, match="not an mmsegmentation"):
        convert_mmseg_state_dict({"foo.weight": torch.ones(1)}, model)


# ----------------------------------------------------------------------------- CLI


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "clustvit_core.convert", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


TINY_ARGS = [f"{k}={v}" for k, v in TINY.items()]


def test_cli_end_to_end(tmp_path):
    sd = mmseg_state_dict(grid=6)
    src = tmp_path / "iter_80000.pth"
    meta = {"seed": 0, "cfg": "model = dict(type='DynSegEncoderDecoder')", "dataset_meta": {"classes": ("a", "b", "c")}}
    torch.save({"meta": meta, "state_dict": sd}, src)
    out = tmp_path / "converted" / "cwfid.safetensors"
    result = run_cli(src, out, "--model", "cwfid_k3_ip3", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert str(out) in result.stdout and "converted" in result.stdout
    model = clustvit_core.build_model("cwfid_k3_ip3", weights=out, **TINY)
    assert torch.equal(model.backbone.blocks[1].attn.qkv.weight, sd["backbone.layers.1.attn.attn.in_proj_weight"])
    assert torch.equal(model.backbone.cluster_mlp.fc2.weight, sd["backbone.clusterer.net.2.weight"])
    assert torch.equal(model.backbone.pos_embed, resize_pos_embed(sd["backbone.pos_embed"], (4, 4)))
    assert clustvit_core.read_checkpoint_config(out).embed_dim == D


def run_main(capsys, *args):
    """The CLI in this process (faster than a subprocess): (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_overrides_before_model_and_uper(tmp_path, capsys):
    src = tmp_path / "uper.pth"
    torch.save({"state_dict": mmseg_state_dict(head="uper", num_classes=3)}, src)
    out = tmp_path / "uper.safetensors"
    code, stdout, stderr = run_main(capsys, src, out, *TINY_ARGS, "ip=2", "uper_channels=16", "--model", "rumexweeds_k3_ip3_uper")
    assert code == 0, stderr
    assert "mmseg ClustViT + UPerNet" in stdout and "dropped 3" in stdout
    clustvit_core.build_model("rumexweeds_k3_ip3_uper", weights=out, **TINY, ip=2, uper_channels=16)


def test_cli_bare_state_dict(tmp_path, capsys):
    src = tmp_path / "sd.pth"
    torch.save(mmseg_state_dict(clustvit=False, aux=False), src)  # a bare state dict works too
    code, stdout, _ = run_main(capsys, src, tmp_path / "o.safetensors", "--model", "cwfid_vit", *TINY_ARGS)
    assert code == 0 and "mmseg ViT + Segmenter" in stdout and "zero patch-embed bias" in stdout


def _assert_clean_failure(code, stderr, *fragments):
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clustvit_core.convert: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_missing_input(tmp_path):
    result = run_cli(tmp_path / "missing.pth", tmp_path / "o.safetensors", "--model", "cwfid_k3_ip3")
    _assert_clean_failure(result.returncode, result.stderr, "missing.pth", "not found")
    assert result.stdout == ""
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_wrong_num_classes(tmp_path, capsys):
    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": mmseg_state_dict(num_classes=5)}, src)
    code, _, stderr = run_main(capsys, src, tmp_path / "o.safetensors", "--model", "cwfid_k3_ip3", *TINY_ARGS)
    _assert_clean_failure(code, stderr, "num_classes", "decode_head.cls_emb")
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_pickled_objects_give_one_clear_line(tmp_path, capsys):
    src = tmp_path / "mmengine.pth"
    torch.save({"meta": {"time": datetime.datetime(2025, 1, 1)}, "state_dict": mmseg_state_dict()}, src)
    code, _, stderr = run_main(capsys, src, tmp_path / "o.safetensors", "--model", "cwfid_k3_ip3", *TINY_ARGS)
    _assert_clean_failure(code, stderr, "weights_only", "datetime.datetime", "state_dict")
    assert "\x1b[" not in stderr


def test_cli_bad_override(tmp_path, capsys):
    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": mmseg_state_dict()}, src)
    out = tmp_path / "o.safetensors"
    _assert_clean_failure(*run_main(capsys, src, out, "--model", "cwfid_k3_ip3", "num_classes")[::2], "key=value")
    _assert_clean_failure(*run_main(capsys, src, out, "--model", "cwfid_k3_ip3", "colour=red")[::2], "colour")
    _assert_clean_failure(*run_main(capsys, src, out, "--model", "no_such_model")[::2], "no_such_model")


def test_cli_help_explains_and_gives_example(capsys):
    code, stdout, _ = run_main(capsys, "--help")
    assert code == 0
    assert "mmsegmentation" in stdout and "example" in stdout and "--model" in stdout
