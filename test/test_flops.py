import pytest
import torch

import clustvit_core as cc
from conftest import tiny_model


def analytic_vit_flops(D, depth, N, mlp_ratio=4):
    """Backbone FLOPs of a ViT with patch 16 on N patches (+ CLS), multiply-add = 2 FLOPs."""
    T = N + 1
    patch_embed = 2 * N * (3 * 16 * 16) * D
    per_block = 2 * T * D * 3 * D + 2 * T * D * D + 2 * 2 * T * D * mlp_ratio * D + 2 * 2 * T * T * D
    return patch_embed + depth * per_block


def test_vit_flops_match_analytic_count():
    vit = cc.build_model("cwfid_vit", embed_dim=192, depth=6, num_heads=3, patch_size=16, img_size=128)
    parts = cc.flop_breakdown(vit, torch.randn(1, 3, 128, 128))
    expected = analytic_vit_flops(192, 6, 64)
    assert parts["backbone"] == pytest.approx(expected, rel=0.02)
    assert parts["total"] == parts["backbone"] + parts["head"]
    assert parts["cluster"] == parts["regenerator"] == 0


def test_count_flops_per_image_follows_tokens():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 64, 64)
    ids = torch.zeros(2, 4, 4, dtype=torch.long)
    ids[1] = 1  # image 1: everything in one cluster
    flops = cc.count_flops(model, x, cluster_ids=ids)
    assert isinstance(flops, list) and len(flops) == 2
    assert flops[1] < 0.8 * flops[0]
    assert cc.count_flops(model, x[:1], cluster_ids=ids[:1]) == flops[0]


def test_breakdown_counts_cluster_and_regenerator():
    model = tiny_model().eval()
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :2] = 2  # 8 clustered tokens
    parts = cc.flop_breakdown(model, torch.randn(1, 3, 64, 64), cluster_ids=ids)
    D, H, N = 64, 32, 16
    assert parts["cluster"] == 2 * N * (D * H + H * 4)
    # regenerator: own half of fc1 and fc2 per clustered token, representative half once per cluster
    assert parts["regenerator"] == 2 * 8 * (D * D + D * D) + 2 * 3 * D * D


@pytest.mark.parametrize("restore", ["scores", "regenerate"])
def test_breakdown_attributes_a_merged_decoder_to_the_head(restore):
    """decoder_merge: the head runs on the merged sequence (fewer FLOPs than on the full grid), and its
    work (the decoder's Regenerator included) still counts as the head's."""
    full = tiny_model().eval()
    merged = tiny_model(decoder_merge=True, decoder_restore=restore).eval()
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :3] = 1  # 12 of 16 patches in one cluster: 5 tokens
    x = torch.randn(1, 3, 64, 64)
    a = cc.flop_breakdown(full, x, cluster_ids=ids)
    b = cc.flop_breakdown(merged, x, cluster_ids=ids)
    assert 0 < b["head"] < a["head"]
    assert b["total"] == b["backbone"] + b["head"]
    assert b["regenerator"] == 0  # the backbone regenerates nothing: the last block's sequence goes to the head
