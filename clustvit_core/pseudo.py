"""Pseudo-clusters: the training target of the Cluster module, derived from a label mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.sample import IGNORE_INDEX


def pseudo_clusters(labels: Tensor, k: int, patch: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cluster targets from a label mask (after augmentation/resizing).

    A patch is *pure* when all its pixels carry one class (patches touching `ignore_index` are not
    pure). Per image, classes are ranked by their number of pure patches, ties broken by the
    lower class id; pure patches of the classes ranked 1..k get that rank as label, every other
    patch gets 0 ("keep"). Sizes not divisible by `patch` are padded with `ignore_index`, so edge
    patches that overhang the image are never pure.

    Args:
        labels: [B, H, W] integer class ids (or [H, W]).
        k: number of clusters, >= 1.
    Returns:
        [B, ceil(H / patch), ceil(W / patch)] long in 0..k.
    """
    if k < 1:
        raise ValueError(f"pseudo_clusters: k must be >= 1, got {k}")
    squeeze = labels.dim() == 2
    if squeeze:
        labels = labels[None]
    if labels.dim() != 3:
        raise ValueError(f"pseudo_clusters: labels must be [B, H, W], got shape {tuple(labels.shape)}")
    labels = labels.long()
    B, H, W = labels.shape
    pad_h, pad_w = -H % patch, -W % patch
    if pad_h or pad_w:
        labels = F.pad(labels, (0, pad_w, 0, pad_h), value=ignore_index)
    h, w = labels.shape[1] // patch, labels.shape[2] // patch
    cells = labels.view(B, h, patch, w, patch).permute(0, 1, 3, 2, 4).reshape(B, h * w, patch * patch)
    first = cells[..., 0]
    pure = (cells == first[..., None]).all(dim=-1) & (first != ignore_index)  # [B, h*w]
    patch_class = torch.where(pure, first, torch.zeros_like(first))
    num_classes = int(patch_class.max()) + 1
    counts = torch.zeros(B, num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, patch_class, pure.long())
    # Stable descending sort: equal counts keep ascending class id order.
    _, ranked = torch.sort(counts, dim=1, descending=True, stable=True)
    rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(1, num_classes + 1, device=labels.device).expand(B, -1))
    rank = torch.where((rank <= k) & (counts > 0), rank, torch.zeros_like(rank))
    out = torch.where(pure, rank.gather(1, patch_class), torch.zeros_like(patch_class)).view(B, h, w)
    return out[0] if squeeze else out


def block_purity(labels: Tensor, block: int, grid: tuple[int, int], ignore_index: int = IGNORE_INDEX) -> Tensor:
    """CTS policy targets: 1.0 where a block x block square holds a single class, else 0.0.

    The image's top-left grid[0] * block x grid[1] * block pixels are cut into blocks (for CTS, a block is a
    2x2 group of patches). Ignored pixels do not count; a block with no labelled pixel is not pure.

    Args:
        labels: [B, H, W] integer class ids (H >= grid[0] * block, W >= grid[1] * block).
    Returns:
        [B, grid[0], grid[1]] float in {0, 1}.
    """
    gh, gw = grid
    B = labels.shape[0]
    cells = labels[:, : gh * block, : gw * block].long()
    cells = cells.reshape(B, gh, block, gw, block).permute(0, 1, 3, 2, 4).reshape(B, gh, gw, block * block)
    valid = cells != ignore_index
    big = torch.iinfo(torch.long).max
    lo = torch.where(valid, cells, torch.full_like(cells, big)).amin(-1)
    hi = torch.where(valid, cells, torch.full_like(cells, -1)).amax(-1)
    return ((lo == hi) & valid.any(-1)).float()


def _resize_labels(labels, size) -> Tensor:
    """uint8/int label map [H, W] (numpy) resized (nearest) to `size` (a side or (h, w)) -> [1, h, w] long."""
    import cv2

    h, w = (size, size) if isinstance(size, int) else size
    return torch.from_numpy(cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST))[None].long()


def oracle_ids(labels, size, k: int, patch: int) -> Tensor:
    """Oracle clusters: the pseudo-clusters of a label map (numpy [H, W]) resized (nearest) to the network
    input `size` (a side or (h, w)) -> [1, h / patch, w / patch] long."""
    return pseudo_clusters(_resize_labels(labels, size), k, patch=patch)


def oracle_purity(labels, size, patch: int) -> Tensor:
    """CTS oracle: block purity of a label map (numpy [H, W]) resized (nearest) to the network input `size`
    (a side or (h, w)) -> [1, h / patch // 2, w / patch // 2]."""
    resized = _resize_labels(labels, size)
    h, w = resized.shape[-2:]
    return block_purity(resized, 2 * patch, ((h // patch) // 2, (w // patch) // 2))
