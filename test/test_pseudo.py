import pytest
import torch

import clustvit_core as cc


def patches_to_mask(grid, mixed=(), with_ignore=()):
    """Blow a patch grid of class ids up to pixels (16 x 16 per patch), then spoil some patches."""
    mask = torch.tensor(grid).repeat_interleave(16, 0).repeat_interleave(16, 1)
    for r, c in mixed:
        mask[r * 16 + 5, c * 16 + 7] = 1 if mask[r * 16, c * 16] != 1 else 0
    for r, c in with_ignore:
        mask[r * 16 + 15, c * 16] = 255
    return mask


def test_pseudo_clusters_rank_by_pure_patches_with_ties_and_ignore():
    grid = [
        [2, 2, 1, 1],
        [0, 0, 0, 0],
        [255, 0, 3, 0],
        [0, 0, 0, 3],
    ]
    mask = patches_to_mask(grid, mixed=[(1, 3)], with_ignore=[(2, 1)])
    # pure patches: class 0 x7 (the mixed (1,3) and the 255-touched (2,1) don't count), classes 1, 2, 3 x2 each.
    # ranks: 0 -> 1; the tie 1/2/3 is broken by class id: 1 -> 2, 2 -> 3, 3 -> 4 (> k, so 0).
    out = cc.pseudo_clusters(mask[None], k=3, patch=16)
    assert out.tolist() == [[
        [3, 3, 2, 2],
        [1, 1, 1, 0],
        [0, 0, 0, 1],
        [1, 1, 1, 0],
    ]]
    assert cc.pseudo_clusters(mask[None], k=1, patch=16).tolist() == [[
        [0, 0, 0, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 1],
        [1, 1, 1, 0],
    ]]


def test_pseudo_clusters_label_by_rank_not_class_id_per_image():
    a = patches_to_mask([[5, 5], [5, 7]])
    b = patches_to_mask([[7, 7], [7, 5]])
    out = cc.pseudo_clusters(torch.stack([a, b]), k=2, patch=16)
    assert out.tolist() == [[[1, 1], [1, 2]], [[1, 1], [1, 2]]]


def test_pseudo_clusters_all_ignore_and_padding():
    assert cc.pseudo_clusters(torch.full((1, 32, 32), 255), k=3, patch=16).sum() == 0
    # 40 x 24 pixels: the last patch row/column overhang the image and are never pure
    out = cc.pseudo_clusters(torch.zeros(1, 40, 24, dtype=torch.long), k=2, patch=16)
    assert out.tolist() == [[[1, 0], [1, 0], [0, 0]]]


def test_pseudo_clusters_deterministic_and_rejects_k0():
    mask = torch.randint(0, 3, (2, 64, 64)).repeat_interleave(1, 0)
    assert torch.equal(cc.pseudo_clusters(mask, k=3, patch=16), cc.pseudo_clusters(mask.clone(), k=3, patch=16))
    with pytest.raises(ValueError, match="k must be >= 1"):
        cc.pseudo_clusters(mask, k=0, patch=16)
