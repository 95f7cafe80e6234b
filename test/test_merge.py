"""The merge / regenerate tensor functions on hand-made tensors."""
import pytest
import torch

from clustvit_core.merge import assign_clusters, attention_mask, cluster_means, merge_tokens, plan_merge, regenerate, unmerge_tokens


def test_assign_clusters_argmax_and_keep_bias():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 2.5], [0.0, 0.0, 5.0]]])
    assert assign_clusters(logits).tolist() == [[1, 0, 2]]
    # +1.5 on "keep": token 0 flips to keep (2.5 > 2.0), token 2 stays clustered (1.5 < 5).
    assert assign_clusters(logits, keep_bias=1.5).tolist() == [[0, 0, 2]]
    assert assign_clusters(logits, keep_bias=-10.0).tolist() == [[1, 2, 2]]


def test_plan_merge_two_images():
    # image 0: tokens 0 and 3 kept, 1 and 2 in cluster 1, cluster 2 empty -> 3 tokens
    # image 1: token 2 kept, 1 and 3 in cluster 1, token 0 alone in cluster 2 -> 3 tokens
    ids = torch.tensor([[0, 1, 1, 0], [2, 1, 0, 1]])
    plan = plan_merge(ids, k=2)
    assert plan.tokens.tolist() == [3, 3]
    assert plan.counts.tolist() == [[2, 0], [2, 1]]
    # slot space: 0..3 patches, 4 = cluster 1, 5 = cluster 2, 6 = padding
    assert plan.slots.tolist() == [[0, 3, 4], [2, 4, 5]]
    assert not plan.padded and attention_mask(plan) is None


def test_plan_merge_pads_and_masks_shorter_images():
    ids = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    plan = plan_merge(ids, k=3)
    assert plan.tokens.tolist() == [4, 1]
    assert plan.slots.tolist() == [[0, 1, 2, 3], [4, 7, 7, 7]]
    assert plan.valid.tolist() == [[True] * 4, [True, False, False, False]]
    mask = attention_mask(plan)
    assert mask.shape == (2, 1, 1, 5)
    assert mask[1, 0, 0].tolist() == [True, True, False, False, False]  # CLS + cluster token only


def test_merge_computes_plain_means_in_order():
    x = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [4.0, 6.0], [9.0, 9.0]]])
    ids = torch.tensor([[0, 2, 2, 0]])
    plan = plan_merge(ids, k=2)
    assert torch.equal(cluster_means(x, plan), torch.tensor([[[0.0, 0.0], [3.0, 4.0]]]))
    reduced = merge_tokens(x, plan)
    # kept tokens in raster order, then the mean of cluster 2; the empty cluster 1 is absent
    assert torch.equal(reduced, torch.tensor([[[1.0, 0.0], [9.0, 9.0], [3.0, 4.0]]]))


def test_merge_gradient_flows_through_means():
    x = torch.randn(1, 4, 3, requires_grad=True)
    plan = plan_merge(torch.tensor([[1, 1, 0, 1]]), k=1)
    merge_tokens(x, plan).sum().backward()
    # the kept token gets 1, each of the 3 cluster members 1/3
    assert torch.allclose(x.grad[0, :, 0], torch.tensor([1 / 3, 1 / 3, 1.0, 1 / 3]))


def test_unmerge_and_regenerate_put_tokens_back():
    ids = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    plan = plan_merge(ids, k=1)
    # processed reduced sequences: image 0 = [kept0, kept3, cluster1]; image 1 = [cluster1, pad, pad]
    y = torch.tensor([[[10.0], [13.0], [100.0]], [[200.0], [-1.0], [-1.0]]])
    grid, reps = unmerge_tokens(y, plan)
    assert grid[..., 0].tolist() == [[10.0, 0.0, 0.0, 13.0], [0.0, 0.0, 0.0, 0.0]]
    assert reps[..., 0].tolist() == [[100.0], [200.0]]

    x_ip = torch.arange(8.0).view(2, 4, 1)

    def expand(own, representatives, batch_index, cluster_index):
        return own + representatives[batch_index, cluster_index]

    out = regenerate(y, x_ip, plan, expand)
    assert out[..., 0].tolist() == [[10.0, 101.0, 102.0, 13.0], [204.0, 205.0, 206.0, 207.0]]


def test_regenerate_with_nothing_clustered_is_identity_scatter():
    y = torch.randn(2, 3, 5)
    plan = plan_merge(torch.zeros(2, 3, dtype=torch.long), k=2)
    out = regenerate(y, torch.randn(2, 3, 5), plan, lambda *a: (_ for _ in ()).throw(AssertionError("called")))
    assert torch.equal(out, y)


def test_reduced_position_points_each_patch_at_its_token():
    from clustvit_core.merge import plan_merge, reduced_position

    ids = torch.tensor([[0, 2, 2, 0, 1, 0], [1, 1, 1, 1, 1, 0]])
    plan = plan_merge(ids, k=3)
    pos = reduced_position(plan)
    # image 0: kept 0, 3, 5 at 0..2, then cluster 1 at 3, cluster 2 at 4; image 1: kept 5 at 0, cluster 1 at 1
    assert pos.tolist() == [[0, 4, 4, 1, 3, 2], [1, 1, 1, 1, 1, 0]]


def test_decoder_merge_equals_the_model_when_nothing_merges_and_batches_equal_single_images():
    import clustvit_core as cc
    from conftest import tiny_model

    torch.manual_seed(0)
    merged = tiny_model(decoder_merge=True).eval()
    plain = tiny_model().eval()
    plain.load_state_dict(merged.state_dict())
    x = torch.randn(3, 3, 64, 64)
    x[0] *= 0.01  # a flat image: few tokens; the batch is padded
    with torch.no_grad():
        torch.testing.assert_close(merged(x, keep_bias=50.0).logits, plain(x, keep_bias=50.0).logits)
        out = merged(x)
        single = torch.cat([merged(x[i : i + 1]).logits for i in range(3)])
    assert len(set(out.tokens.tolist())) > 1
    torch.testing.assert_close(single, out.logits, atol=1e-4, rtol=0)
    with pytest.raises(cc.ConfigError, match="decoder_merge needs a ClustViT"):
        cc.build_model("cwfid_vit", decoder_merge=True)
    with pytest.raises(cc.ConfigError, match="decoder_restore='copy'; choose one of scores, regenerate"):
        cc.build_model("cwfid_k3_ip3_decmerge", decoder_restore="copy")
    with pytest.raises(cc.ConfigError, match="decoder_merge needs a ClustViT"):
        cc.build_model("cwfid_k3_ip3", decoder_merge=True, head="uper")


def test_decoder_regenerate_restores_each_patch_and_equals_the_model_when_nothing_merges():
    """decoder_restore="regenerate": the mask transformer runs on the merged sequence, then a second
    Regenerator restores every patch token; nothing merged = the plain model; members of one cluster get
    different masks (unlike "scores", where they share their cluster token's); batches = single images."""
    from conftest import tiny_model

    torch.manual_seed(0)
    regen = tiny_model(decoder_merge=True, decoder_restore="regenerate").eval()
    scores = tiny_model(decoder_merge=True).eval()
    plain = tiny_model().eval()
    sd = {k: v for k, v in regen.state_dict().items() if not k.startswith("decoder_regenerator.")}
    scores.load_state_dict(sd)
    plain.load_state_dict(sd)
    assert sum(p.numel() for p in regen.decoder_regenerator.parameters()) > 0
    x = torch.randn(3, 3, 64, 64)
    x[0] *= 0.01
    with torch.no_grad():
        torch.testing.assert_close(regen(x, keep_bias=50.0).logits, plain(x, keep_bias=50.0).logits)
        ids = torch.ones(1, 4, 4, dtype=torch.long)  # every patch in cluster 1: one token
        a, b = regen(x[1:2], cluster_ids=ids), scores(x[1:2], cluster_ids=ids)
        out = regen(x)
        single = torch.cat([regen(x[i : i + 1]).logits for i in range(3)])
    assert int(a.tokens[0]) == int(b.tokens[0]) == 1
    patch_scores = lambda logits: logits[0, :, 8::16, 8::16].flatten(1)  # noqa: E731 (patch centres)
    assert torch.allclose(patch_scores(b.logits), patch_scores(b.logits)[:, :1].expand(-1, 16))  # one score for all
    assert not torch.allclose(patch_scores(a.logits), patch_scores(a.logits)[:, :1].expand(-1, 16))
    assert len(set(out.tokens.tolist())) > 1
    torch.testing.assert_close(single, out.logits, atol=1e-4, rtol=0)


def test_left_out_tokens_are_in_no_sequence_and_regenerate_as_zero():
    x = torch.arange(6 * 2, dtype=torch.float).reshape(1, 6, 2)
    ids = torch.tensor([[0, 1, 1, -1, -1, 0]])
    plan = plan_merge(ids, k=2)
    assert plan.tokens.tolist() == [3] and plan.counts.tolist() == [[2, 0]]  # kept 0 and 5, cluster 1
    reduced = merge_tokens(x, plan)
    torch.testing.assert_close(reduced[0], torch.stack([x[0, 0], x[0, 5], x[0, 1:3].mean(0)]))
    grid = regenerate(reduced, x, plan, lambda own, reps, b, c: reps[b, c])
    assert grid[0, 3].abs().sum() == 0 and grid[0, 4].abs().sum() == 0
    torch.testing.assert_close(grid[0, 1], x[0, 1:3].mean(0))


def test_drop_mask_leaves_padding_out_and_the_segmenter_uses_it_for_letterbox(tmp_path):
    import numpy as np

    import clustvit_core as cc
    from clustvit_core.predictor import Segmenter, padding_patches
    from conftest import tiny_model

    model = tiny_model().eval()
    x = torch.randn(1, 3, 64, 64)
    drop = torch.zeros(1, 4, 4, dtype=torch.bool)
    drop[:, 3:, :] = True  # the last patch row: padding
    with torch.no_grad():
        full, dropped = model(x, keep_bias=50.0), model(x, keep_bias=50.0, drop_mask=drop)
    assert int(full.tokens[0]) == 16 and int(dropped.tokens[0]) == 12
    assert (dropped.cluster_ids[0, 3] == -1).all()
    assert padding_patches([(40, 64)], (64, 64), 16)[0].sum() == 4  # rows from 48 on: padding only
    with pytest.raises(cc.InputError, match="drop_mask given to a model without a Cluster module"):
        tiny_model(k=None, ip=None)(x, drop_mask=drop)
    weights = cc.save_checkpoint(tmp_path / "w.safetensors", model.state_dict(), model.config)
    seg = Segmenter(model.config.to_dict(), str(weights), device="cpu", resize_mode="letterbox")
    wide = np.zeros((32, 128, 3), np.uint8)  # letterboxed into 64x64: 16 rows of image, 48 of padding
    result = seg(wide, keep_bias=50.0)  # nothing merged: the tokens are the image's patches only
    assert result.tokens == 4 and result.labels.shape == (32, 128)


@pytest.mark.parametrize("residual", [False, True])
def test_dense_regenerate_equals_the_gathered_one(residual):
    """The GPU path (every position expanded, clustered ones kept) gives the CPU path's tokens, left-out
    positions (-1) and images with nothing clustered included."""
    from clustvit_core.model import Regenerator

    torch.manual_seed(0)
    ids = torch.tensor([[0, 2, 2, 0, 1, -1], [0, 0, 0, 0, 0, 0], [3, 3, 1, 1, 0, 2]])
    plan = plan_merge(ids, k=3)
    x_ip = torch.randn(3, 6, 8)
    y = torch.randn(3, plan.slots.shape[1], 8)
    regenerator = Regenerator(8, residual=residual)
    torch.nn.init.normal_(regenerator.fc2.weight)
    with torch.no_grad():
        gathered = regenerate(y, x_ip, plan, regenerator, dense=False)
        dense = regenerate(y, x_ip, plan, regenerator, dense=True)
    torch.testing.assert_close(dense, gathered)
    assert gathered[0, 5].abs().sum() == 0  # left out: zero in both


def test_resampled_position_embedding_is_reused_until_the_parameter_changes():
    from conftest import tiny_model

    backbone = tiny_model().eval().backbone
    with torch.no_grad():
        first = backbone.position_embedding((5, 3))
        assert backbone.position_embedding((5, 3)) is first  # kept
        assert backbone.position_embedding((4, 4)) is backbone.pos_embed  # the trained grid: the parameter itself
        backbone.pos_embed.add_(1.0)  # an optimizer step or a load: recomputed
        again = backbone.position_embedding((5, 3))
    assert again is not first
    torch.testing.assert_close(again, first + 1.0)
    with torch.no_grad():  # moved away and back (new tensors, fresh version counters), changed on the way: recomputed
        backbone.double()
        backbone.pos_embed.mul_(2.0)
        backbone.float()
        moved = backbone.position_embedding((5, 3))
    torch.testing.assert_close(moved, 2.0 * again)
    out = backbone.position_embedding((5, 3))  # with gradients: computed, differentiable
    assert out.requires_grad and out is not again
