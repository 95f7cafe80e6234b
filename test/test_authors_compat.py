"""The authors' released checkpoints reproduce the authors' outputs: mmseg's position-embedding kernel
at any input size, the authors' merge mode (empty_clusters="zeros"), the converter's structure checks,
and checkpoint files readable by other users."""
import os
import stat

import pytest
import torch
import torch.nn.functional as F

import clustvit_core as cc
from clustvit_core.model import resample_pos_embed
from test_convert import D, IMG, TINY, load_converted, mmseg_segmenter_forward, mmseg_state_dict, run_main, tiny


def test_resample_is_plain_bicubic_as_mmseg():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 8 * 8, 5)
    out = resample_pos_embed(pos, (16, 12), (8, 8))
    grid = pos[:, 1:].reshape(1, 8, 8, 5).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 12), mode="bicubic", align_corners=False, antialias=False)
    torch.testing.assert_close(out[:, 1:], expected.flatten(2).transpose(1, 2), atol=0, rtol=0)
    assert torch.equal(out[:, :1], pos[:, :1]) and resample_pos_embed(pos, (8, 8), (8, 8)) is pos


@torch.no_grad()
@pytest.mark.parametrize("size", [(96, 160), (48, 80), (112, 64)])
def test_converted_model_equals_mmseg_at_other_sizes(size):
    """Trained at 64x64 (a 4x4 grid); run at other grids the logits still equal mmseg's."""
    model = tiny("cwfid_vit")
    sd = mmseg_state_dict(clustvit=False)
    load_converted(model, sd)
    images = torch.randn(1, 3, *size)
    expected, _ = mmseg_segmenter_forward(images, sd, model.num_classes)
    torch.testing.assert_close(model(images).logits, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_zeros_mode_reproduces_the_authors_forward_with_an_empty_cluster():
    model = tiny(ip=2, empty_clusters="zeros")
    sd = mmseg_state_dict()
    load_converted(model, sd)
    images = torch.randn(1, 3, IMG, IMG)
    ids = torch.tensor([0, 1, 1, 0, 1, 1, 0, 3, 3, 3, 0, 0, 1, 1, 0, 3]).view(1, 4, 4)  # cluster 2 is empty
    expected, _ = mmseg_segmenter_forward(images, sd, model.num_classes, cluster_ids=ids, ip=2)
    out = model(images, cluster_ids=ids)
    assert int(out.tokens[0]) == 6 + 3  # kept + all k cluster tokens
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)
    dropped = tiny(ip=2)  # ours: the empty cluster leaves the sequence
    dropped.load_state_dict(model.state_dict())
    mine = dropped(images, cluster_ids=ids)
    assert int(mine.tokens[0]) == 6 + 2 and (mine.logits - expected).abs().max() > 1e-3


@torch.no_grad()
def test_zeros_mode_skips_merging_when_the_batch_holds_one_id():
    model = tiny(ip=2, empty_clusters="zeros")
    load_converted(model, mmseg_state_dict())
    images = torch.randn(2, 3, IMG, IMG)
    out = model(images, cluster_ids=torch.full((2, 4, 4), 2))
    assert out.tokens.tolist() == [16, 16] and int(out.cluster_ids.max()) == 0
    vit = tiny("cwfid_vit")
    vit.load_state_dict({k: v for k, v in model.state_dict().items() if "cluster_mlp" not in k and "regenerator" not in k})
    torch.testing.assert_close(out.logits, vit(images).logits, atol=1e-5, rtol=1e-5)


def test_converter_stores_zeros_mode_and_build_model_uses_it(tmp_path, capsys):
    src = tmp_path / "authors.pth"
    torch.save({"state_dict": mmseg_state_dict()}, src)
    out = tmp_path / "converted.safetensors"
    code, _, err = run_main(capsys, src, out, "--model", "cwfid_k3_ip3", *[f"{k}={v}" for k, v in TINY.items()])
    assert code == 0, err
    assert cc.read_checkpoint_config(out).empty_clusters == "zeros"
    assert cc.build_model("cwfid_k3_ip3", weights=out, **TINY).config.empty_clusters == "zeros"
    assert cc.build_model("cwfid_k3_ip3", weights=out, empty_clusters="drop", **TINY).config.empty_clusters == "drop"
    ours = cc.save_checkpoint(tmp_path / "ours.safetensors", tiny().state_dict(), tiny().config)
    assert cc.build_model("cwfid_k3_ip3", weights=ours, **TINY).config.empty_clusters == "drop"


def test_converter_refuses_wrong_k_and_wrong_heads(tmp_path, capsys):
    src = tmp_path / "authors.pth"
    torch.save({"state_dict": mmseg_state_dict(k=4)}, src)
    code, _, err = run_main(capsys, src, tmp_path / "o.safetensors", "--model", "cwfid_k3_ip3",
                            *[f"{k}={v}" for k, v in TINY.items()])
    assert code == 2 and "k=4" in err and "has k=3" in err and len(err.strip().splitlines()) == 1
    cfg_text = "model = dict(\n    backbone=dict(\n        type='ClustViT', embed_dims=64, num_layers=4, num_heads=4,\n        norm_cfg=dict(type='LN')),\n)"
    torch.save({"meta": {"cfg": cfg_text}, "state_dict": mmseg_state_dict()}, src)
    code, _, err = run_main(capsys, src, tmp_path / "o.safetensors", "--model", "cwfid_k3_ip3",
                            *[f"{k}={v}" for k, v in TINY.items()])
    assert code == 2 and "num_heads=4" in err and len(err.strip().splitlines()) == 1


def test_saved_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = cc.save_checkpoint(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))
