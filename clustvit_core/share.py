"""CTS (Content-aware Token Sharing; Lu, de Geus, Dubbelman, CVPR 2023) as small pure tensor functions:
the baseline ClustViT is compared with.

A policy network scores every 2x2 group of patches ("is this 2p x 2p block one class?"); the G best groups
of each image are *shared*: their four patch tokens are replaced by one token (the block downsampled x0.5
through the same patch embedding, its position embedding the mean of the four positions). After the
backbone every shared token is copied back to all four of its cells. G is the same for every image, so a
batch keeps one sequence length (no padding, unlike ClustViT's per-image token counts).

Layout (patch tokens only; h x w patch grid, N = h * w; groups on the gh x gw = (h // 2) x (w // 2) grid,
an odd last row / column is never shared):
    group_of   [N]      long, group index of each patch, -1 outside the group grid
    selected   [B, G]   long, shared group indices per image, ascending
    order      [B, N-4G] long, the unshared patches in raster order
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SharePlan(NamedTuple):
    selected: Tensor  # [B, G] long
    order: Tensor  # [B, N - 4G] long: unshared patch positions, raster order
    index: Tensor  # [B, N] long: row of each patch in [unshared outputs; shared outputs]
    tokens: int  # N - 3G, the sequence length (patch tokens) of every image


def groups_to_share(num_patches: int, num_groups: int, reduction: float) -> int:
    """G, the shared groups per image that remove `reduction` of the patch tokens (each removes 3), at most all."""
    return min(num_groups, int(round(reduction * num_patches / 3)))


def group_index(grid: tuple[int, int], device=None) -> Tensor:
    """[N] long: each patch's 2x2 group on the (h // 2) x (w // 2) group grid, -1 outside it."""
    h, w = grid
    rows = torch.arange(h, device=device)[:, None].expand(h, w)
    cols = torch.arange(w, device=device)[None, :].expand(h, w)
    gh, gw = h // 2, w // 2
    inside = (rows < 2 * gh) & (cols < 2 * gw)
    return torch.where(inside, (rows // 2) * gw + cols // 2, torch.full_like(rows, -1)).reshape(-1)


def plan_sharing(scores: Tensor, grid: tuple[int, int], num_shared: int) -> SharePlan:
    """Share the `num_shared` highest-scoring groups of each image.

    Args:
        scores: [B, gh * gw] policy scores (higher = more likely one class).
    """
    B = scores.shape[0]
    N = grid[0] * grid[1]
    group_of = group_index(grid, scores.device)  # [N]
    selected = scores.topk(num_shared, dim=1).indices.sort(dim=1).values if num_shared else \
        scores.new_zeros(B, 0, dtype=torch.long)
    is_shared_group = torch.zeros(B, scores.shape[1] + 1, dtype=torch.bool, device=scores.device)
    is_shared_group[:, :-1].scatter_(1, selected, True)  # the extra last column: "no group" (-1) is never shared
    shared = is_shared_group[:, group_of]  # [B, N]
    unshared_count = N - 4 * num_shared
    order = torch.argsort(shared.to(torch.uint8), dim=1, stable=True)[:, :unshared_count]
    # a shared patch reads its group's token: unshared outputs first, then one per selected group (ascending)
    rank_in_selected = torch.cumsum(is_shared_group[:, :-1].long(), dim=1) - 1  # [B, gh*gw]
    unshared_rank = torch.cumsum((~shared).long(), dim=1) - 1
    group_row = unshared_count + rank_in_selected.gather(1, group_of.clamp(min=0).expand(B, -1))
    index = torch.where(shared, group_row, unshared_rank)
    return SharePlan(selected, order, index, unshared_count + num_shared)


def group_tokens(images: Tensor, patch_embed, patch: int, grid: tuple[int, int]) -> Tensor:
    """[B, gh * gw, D]: each 2p x 2p block downsampled x0.5 (2x2 average) and embedded as one patch."""
    gh, gw = grid[0] // 2, grid[1] // 2
    blocks = images[:, :, : 2 * gh * patch, : 2 * gw * patch]
    return patch_embed(F.avg_pool2d(blocks, 2))


def group_positions(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """[1, gh * gw, D]: the mean of the four patch position embeddings of each group (pos: [1, N, D])."""
    h, w = grid
    gh, gw = h // 2, w // 2
    maps = pos.reshape(1, h, w, -1)[:, : 2 * gh, : 2 * gw].permute(0, 3, 1, 2)
    return F.avg_pool2d(maps, 2).flatten(2).transpose(1, 2)


def share_tokens(x: Tensor, groups: Tensor, plan: SharePlan) -> Tensor:
    """[B, N, D] patch tokens + [B, gh*gw, D] group tokens -> [B, N - 3G, D]: unshared (raster order), then shared."""
    D = x.shape[-1]
    kept = x.gather(1, plan.order[..., None].expand(-1, -1, D))
    shared = groups.gather(1, plan.selected[..., None].expand(-1, -1, D))
    return torch.cat([kept, shared], dim=1)


def unshare_tokens(y: Tensor, plan: SharePlan) -> Tensor:
    """[B, N - 3G, D] processed tokens -> [B, N, D]: every shared token copied to all four of its cells."""
    return y.gather(1, plan.index[..., None].expand(-1, -1, y.shape[-1]))
