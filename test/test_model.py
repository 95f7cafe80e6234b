"""ClustViT forward semantics: equivalences the design promises, gradients, and input errors."""
import pytest
import torch
import torch.nn.functional as F

import clustvit_core as cc
from conftest import TINY, plain_twin, tiny_model


@pytest.mark.parametrize("ip", [0, 1, 3])
@pytest.mark.parametrize("head", ["segmenter", "uper"])
def test_nothing_clustered_equals_plain_vit(head, ip):
    model = tiny_model(head=head, uper_channels=32, ip=ip).eval()
    vit = plain_twin(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, cluster_ids=torch.zeros(2, 4, 4, dtype=torch.long))
        ref = vit(x)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert out.tokens.tolist() == [16, 16] == ref.tokens.tolist()
    assert ref.cluster_ids is None and ref.cluster_logits is None


def test_keep_bias_large_keeps_everything_and_equals_vit():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, keep_bias=1e6)
        assert out.tokens.item() == 16 and out.cluster_ids.sum() == 0
        assert torch.allclose(out.logits, plain_twin(model)(x).logits, atol=1e-5)


@pytest.mark.parametrize("batch_mode", ["pad", "split"])
@pytest.mark.parametrize("head", ["segmenter", "uper"])
def test_batch_equals_each_image_alone(head, batch_mode):
    model = tiny_model(head=head, uper_channels=32).eval()
    model.backbone.batch_mode = batch_mode
    x = torch.randn(4, 3, 64, 64)
    ids = torch.randint(0, 4, (4, 4, 4))
    ids[0] = 2  # one cluster only: 1 token, the rest of the batch is longer -> padding
    ids[1] = 0  # nothing clustered: the longest sequence
    ids[2, :2] = 0  # cluster 3 may be empty here
    ids[2][ids[2] == 3] = 1
    with torch.no_grad():
        batch = model(x, cluster_ids=ids)
        for i in range(4):
            alone = model(x[i : i + 1], cluster_ids=ids[i : i + 1])
            assert torch.allclose(batch.logits[i], alone.logits[0], atol=1e-4), i
            assert batch.tokens[i] == alone.tokens[0]
        # the same with the Cluster module deciding
        batch = model(x, keep_bias=-0.5)
        for i in range(4):
            alone = model(x[i : i + 1], keep_bias=-0.5)
            assert torch.allclose(batch.logits[i], alone.logits[0], atol=1e-4)
            assert torch.equal(batch.cluster_ids[i], alone.cluster_ids[0])


def test_empty_clusters_have_no_effect():
    """A k=3 model whose cluster 3 is empty equals a k=2 model with the same weights: the empty cluster
    neither attends nor is attended (the reference code let it attend as a zero vector)."""
    k3 = tiny_model(k=3).eval()
    k2 = tiny_model(k=2).eval()
    k2.load_state_dict({k: v for k, v in k3.state_dict().items() if not k.startswith("backbone.cluster_mlp.fc2")}, strict=False)
    x = torch.randn(2, 3, 64, 64)
    ids = torch.randint(0, 3, (2, 4, 4))  # clusters 1 and 2 only
    with torch.no_grad():
        a, b = k3(x, cluster_ids=ids), k2(x, cluster_ids=ids)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.equal(a.tokens, b.tokens)
    expected = [(ids[i] == 0).sum().item() + len(set(ids[i].unique().tolist()) - {0}) for i in range(2)]
    assert a.tokens.tolist() == expected


def test_merging_changes_the_output_and_counts_tokens():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 64, 64)
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, 2:] = 1  # bottom half is one cluster
    with torch.no_grad():
        merged, full = model(x, cluster_ids=ids), model(x, cluster_ids=torch.zeros_like(ids))
    assert merged.tokens.item() == 8 + 1
    assert not torch.allclose(merged.logits, full.logits, atol=1e-3)
    assert torch.equal(merged.cluster_ids, ids)


@pytest.mark.parametrize("regenerator", ["mlp", "residual"])
def test_regenerator_grouped_form_equals_concat_form(regenerator):
    model = tiny_model(regenerator=regenerator)
    regen = model.backbone.regenerator
    torch.nn.init.normal_(regen.fc2.weight, std=0.1)  # a trained residual Regenerator's last layer is not zero
    own, reps = torch.randn(7, 64), torch.randn(2, 3, 64)
    b, c = torch.tensor([0, 0, 1, 1, 1, 0, 1]), torch.tensor([0, 2, 1, 1, 0, 2, 2])
    assert torch.allclose(regen(own, reps, b, c), regen.reference(own, reps[b, c]), atol=1e-5)


def test_untrained_residual_regenerator_hands_members_their_cluster_token():
    """regenerator=residual starts as a copy of the representative; the paper's MLP form does not."""
    own, reps = torch.randn(5, 64), torch.randn(1, 2, 64)
    b, c = torch.zeros(5, dtype=torch.long), torch.tensor([0, 1, 1, 0, 1])
    residual = tiny_model(regenerator="residual").backbone.regenerator
    assert torch.equal(residual(own, reps, b, c), reps[b, c])
    mlp = tiny_model().backbone.regenerator
    assert not torch.allclose(mlp(own, reps, b, c), reps[b, c], atol=1e-2)


def _two_pattern_case(model):
    """Position embedding zeroed and an image of two patterns (left half, right half): every patch token of a
    pattern is identical at every layer. Cluster ids merging the left half into one cluster."""
    model.backbone.pos_embed.data.zero_()
    x = torch.zeros(1, 3, 64, 64)
    x[..., :32] = 1.0
    x[..., 32:] = torch.linspace(-1, 1, 16).repeat(2)  # a 16-px pattern, the same in every right patch
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :, :2] = 1
    return x, ids


@pytest.mark.parametrize("head", ["segmenter", "uper"])
def test_proportional_attention_makes_merging_identical_tokens_exact(head):
    """With proportional attention, one cluster token standing for m identical tokens acts as the m tokens
    did: an untrained residual Regenerator (a copy) then gives the unmerged model's output. Plain attention
    counts the cluster once, and the output changes."""
    for proportional in (True, False):
        torch.manual_seed(0)
        model = tiny_model(head=head, uper_channels=32, regenerator="residual", proportional_attention=proportional).eval()
        x, ids = _two_pattern_case(model)
        with torch.no_grad():
            merged, full = model(x, cluster_ids=ids), model(x, cluster_ids=torch.zeros_like(ids))
        assert merged.tokens.item() == 8 + 1
        assert torch.allclose(merged.logits, full.logits, atol=1e-5) == proportional, proportional


def test_proportional_attention_through_the_merged_decoder():
    torch.manual_seed(0)
    model = tiny_model(regenerator="residual", proportional_attention=True, decoder_merge=True,
                       decoder_restore="regenerate").eval()
    x, ids = _two_pattern_case(model)
    with torch.no_grad():
        merged, full = model(x, cluster_ids=ids), model(x, cluster_ids=torch.zeros_like(ids))
    assert torch.allclose(merged.logits, full.logits, atol=1e-5)


@pytest.mark.parametrize("batch_mode", ["pad", "split"])
def test_proportional_attention_batch_equals_each_image_alone(batch_mode):
    model = tiny_model(proportional_attention=True, decoder_merge=True).eval()
    model.backbone.batch_mode = batch_mode
    x = torch.randn(3, 3, 64, 64)
    ids = torch.randint(0, 4, (3, 4, 4))
    ids[0] = 2
    with torch.no_grad():
        batch = model(x, cluster_ids=ids)
        for i in range(3):
            alone = model(x[i : i + 1], cluster_ids=ids[i : i + 1])
            assert torch.allclose(batch.logits[i], alone.logits[0], atol=1e-4), i


def test_proportional_attention_under_autocast():
    """The float key mask follows autocast's dtype (scaled_dot_product_attention wants the query's)."""
    model = tiny_model(proportional_attention=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, keep_bias=-0.5)
    assert out.logits.shape == (2, 3, 64, 64) and torch.isfinite(out.logits).all()


def test_cluster_mlp_learns_only_from_aux_loss():
    model = tiny_model().train()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    labels[:, :32] = 0
    out = model(x)
    seg_loss = F.cross_entropy(out.logits, labels)
    seg_loss.backward(retain_graph=True)
    for name, p in model.backbone.cluster_mlp.named_parameters():
        assert p.grad is None or torch.all(p.grad == 0), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.regenerator.parameters()) or out.tokens.eq(16).all()
    assert model.backbone.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0

    model.zero_grad()
    targets = cc.pseudo_clusters(labels, k=3, patch=16).flatten(1)
    aux = F.cross_entropy(out.cluster_logits.flatten(0, 1), targets.flatten())
    aux.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.cluster_mlp.parameters())


def test_size_not_divisible_by_16_is_padded_and_cropped():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 50))
    assert out.logits.shape == (1, 3, 70, 50)
    assert out.cluster_ids.shape == (1, 5, 4)  # ceil(70/16) x ceil(50/16)


def test_other_input_size_resamples_position_embedding():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 128))
    assert out.logits.shape == (2, 3, 96, 128) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.randn(1, 4, 64, 64), r"expected \[B, 3, H, W\]"),
        (torch.randn(3, 64, 64), "add the batch dimension"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "normalized float"),
        (torch.randn(1, 3, 8, 64), "at least 16"),
    ],
)
def test_bad_images_raise_clear_errors(images, match):
    with pytest.raises(cc.InputError, match=match):
        tiny_model()(images)


@pytest.mark.parametrize(
    "ids, match",
    [
        (torch.zeros(1, 3, 3, dtype=torch.long), "expected \\[1, 4, 4\\]"),
        (torch.full((1, 4, 4), 7), "must lie in 0..3"),
        (torch.zeros(1, 4, 4), "integer tensor"),
    ],
)
def test_bad_cluster_ids_raise_clear_errors(ids, match):
    with pytest.raises(cc.InputError, match=match):
        tiny_model()(torch.randn(1, 3, 64, 64), cluster_ids=ids)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(k=0), "k=0"),
        (dict(ip=4), "ip=4"),
        (dict(ip=-1), "ip=-1"),
        (dict(head="fcn"), "head='fcn'"),
        (dict(regenerator="copy"), "regenerator='copy'.*mlp, residual"),
        (dict(proportional_attention="yes"), "proportional_attention='yes'"),
        (dict(refine_channels=-1), "refine_channels=-1.*0 \\(no refiner\\)"),
        (dict(refine_channels=2.5), "refine_channels=2.5"),
        (dict(backbone="huge"), "backbone='huge'"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(colour="red"), "unknown override"),
    ],
)
def test_bad_config_raises_clear_errors(overrides, match):
    with pytest.raises(cc.ConfigError, match=match):
        cc.build_model("cwfid_k3_ip3", **{**TINY, **overrides})


def test_unknown_model_lists_known_ones():
    with pytest.raises(cc.ConfigError, match=r"unknown model 'cwfid_k9'.*cwfid_k3_ip3"):
        cc.build_model("cwfid_k9")
