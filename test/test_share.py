"""CTS (token sharing): purity targets, the share -> unshare round trip, the policy's place in the model."""
import pytest
import torch

import clustvit_core as cc
from clustvit_core.errors import ConfigError, InputError
from clustvit_core.pseudo import block_purity
from clustvit_core.share import group_index, group_positions, groups_to_share, plan_sharing, share_tokens, unshare_tokens
from clustvit_core.train import compute_loss
from conftest import TINY


def test_block_purity_on_a_hand_made_mask():
    labels = torch.zeros(1, 8, 12, dtype=torch.long)  # blocks of 4: a 2 x 3 group grid
    labels[0, 0:4, 4:8] = 1  # a whole block of class 1: pure
    labels[0, 5, 1] = 2  # one pixel of another class: impure
    labels[0, 4:8, 8:12] = 255  # all ignored: not pure
    labels[0, 0:2, 8:12] = 255  # half ignored, the rest one class: pure
    expected = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]])
    assert torch.equal(block_purity(labels, 4, (2, 3)), expected)


def test_share_then_unshare_fills_all_four_cells():
    grid = (4, 5)  # odd width: the last column is never shared
    B, N, D = 2, 20, 3
    x = torch.randn(B, N, D)
    groups = torch.randn(B, 4, D)  # 2 x 2 groups
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.0, 1.0, 0.5, 0.4]])
    plan = plan_sharing(scores, grid, 2)
    assert plan.selected.tolist() == [[0, 2], [1, 2]] and plan.tokens == N - 6
    y = share_tokens(x, groups, plan)
    assert y.shape == (B, N - 6, D)
    full = unshare_tokens(y, plan)
    group_of = group_index(grid)
    for b in range(B):
        for n in range(N):
            g = int(group_of[n])
            want = groups[b, g] if g in plan.selected[b].tolist() else x[b, n]
            assert torch.equal(full[b, n], want), (b, n)
    assert (group_of[[4, 9, 14, 19]] == -1).all()  # last column outside the group grid


def test_group_positions_are_the_mean_of_four():
    pos = torch.arange(4 * 4 * 2, dtype=torch.float).reshape(1, 16, 2)
    g = group_positions(pos, (4, 4))
    torch.testing.assert_close(g[0, 0], pos[0, [0, 1, 4, 5]].mean(0))
    assert groups_to_share(1024, 256, 0.3) == 102 and groups_to_share(16, 4, 0.74) == 4


def test_no_sharing_equals_the_vit_and_sharing_reduces_tokens():
    torch.manual_seed(0)
    cts = cc.build_model("cwfid_cts", **TINY, cts_reduction=0.01).eval()  # rounds to 0 shared groups
    vit = cc.build_model("cwfid_vit", **TINY).eval()
    vit.load_state_dict({k: v for k, v in cts.state_dict().items() if not k.startswith("backbone.policy.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(cts(x).logits, vit(x).logits)
        shared = cc.build_model("cwfid_cts", **TINY, cts_reduction=0.3).eval()
        out = shared(x)
    assert out.tokens.tolist() == [10, 10] and out.policy_logits.shape == (2, 2, 2) and out.cluster_ids is None


def test_oracle_scores_share_the_pure_groups():
    model = cc.build_model("cwfid_cts", **TINY, cts_reduction=0.3).eval()
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, :32, 32:] = 1
    labels[0, 40, 5] = 2  # group (1, 0) impure
    labels[0, 5, 5] = 2  # group (0, 0) impure
    purity = block_purity(labels, 32, (2, 2))
    captured = {}
    original = unshare_tokens

    def spy(y, plan):
        captured["selected"] = plan.selected
        return original(y, plan)

    import clustvit_core.model as model_module
    model_module.unshare_tokens = spy
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64), share_scores=purity)
    finally:
        model_module.unshare_tokens = original
    assert captured["selected"].tolist() == [[1, 3]]  # the two pure groups
    with pytest.raises(InputError, match="share_scores given to a model without token sharing"):
        cc.build_model("cwfid_vit", **TINY)(torch.randn(1, 3, 64, 64), share_scores=purity)


def test_policy_learns_jointly_and_bad_configs_are_one_line():
    model = cc.build_model("cwfid_cts", **TINY).train()
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :20, :20] = 1
    loss, parts = compute_loss(model, torch.randn(2, 3, 64, 64), labels, aux_weight=0.1)
    assert "policy" in parts and "cluster" not in parts
    loss.backward()
    assert model.backbone.policy.score.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="cts_reduction and k/ip both set"):
        cc.build_model("cwfid_k3_ip3", **TINY, cts_reduction=0.3)
    with pytest.raises(ConfigError, match="cts_reduction=0.9"):
        cc.build_model("cwfid_cts", **TINY, cts_reduction=0.9)
