"""ClustViT token merging and regeneration as small pure tensor functions.

Layout conventions (patch tokens only; the CLS token never takes part):
    x            [B, N, D]  patch tokens in raster order, N = h * w
    cluster_ids  [B, N]     long, 0 = keep the token as it is, 1..k = member of cluster j, -1 = leave the
                            token out altogether (e.g. letterbox padding): in no sequence, regenerated as zero
    reduced      [B, L, D]  kept tokens (raster order) followed by one mean per non-empty cluster,
                            right-padded to the longest sequence in the batch

Everything is computed from one `MergePlan`, so the same decision is reused to merge features and
to put the processed tokens back. No Python loop runs over tokens or images.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor


class MergePlan(NamedTuple):
    """Which token goes where when merging, and back when regenerating.

    The "slot space" of one image is N patch slots, then k cluster slots, then one padding slot:
    slot n < N is patch token n, slot N + j is the representative of cluster j + 1, slot N + k
    is the padding slot (a zero vector that is never attended).
    """

    cluster_ids: Tensor  # [B, N] long, 0 = kept, 1..k = cluster
    slots: Tensor  # [B, L] long, source slot of each position of the reduced sequence
    valid: Tensor  # [B, L] bool, False on padding
    counts: Tensor  # [B, k] long, members per cluster (0 = empty cluster: dropped, or a zero token with keep_empty)
    tokens: Tensor  # [B] long, reduced sequence length per image = kept + non-empty clusters (+ empty ones with keep_empty)
    k: int
    padded: bool  # some image is shorter than L, so attention needs a key mask


def assign_clusters(cluster_logits: Tensor, keep_bias: float | Tensor = 0.0) -> Tensor:
    """Hard assignment from cluster logits.

    Args:
        cluster_logits: [B, N, k + 1]; column 0 is "keep as is".
        keep_bias: added to the keep logit before the argmax; > 0 merges fewer tokens. A 0-dim tensor
            is added as it is (no host read: a CUDA graph replays it with whatever value it holds).
    Returns:
        [B, N] long cluster ids, 0 = kept.
    """
    if isinstance(keep_bias, Tensor):
        zeros = cluster_logits.new_zeros(cluster_logits.shape[-1] - 1)
        return (cluster_logits + torch.cat([keep_bias.reshape(1).to(cluster_logits.dtype), zeros])).argmax(dim=-1)
    if keep_bias:
        bias = torch.zeros(cluster_logits.shape[-1], dtype=cluster_logits.dtype, device=cluster_logits.device)
        bias[0] = keep_bias
        cluster_logits = cluster_logits + bias
    return cluster_logits.argmax(dim=-1)


def token_counts(cluster_ids: Tensor, k: int, keep_empty: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image reduced lengths, without reading anything on the host.

    Args:
        cluster_ids: [B, N] long in -1..k.
    Returns:
        tokens [B] (kept + non-empty clusters, + empty ones with keep_empty), counts [B, k] (members per
        cluster), present [B, N + k] bool (which slots of the slot space are in the sequence).
    """
    B, N = cluster_ids.shape
    members = (cluster_ids > 0).long()  # left-out tokens (-1) count nowhere
    counts = torch.zeros(B, k + 1, dtype=torch.long, device=cluster_ids.device).scatter_add_(
        1, cluster_ids.clamp(min=0), members)
    counts = counts[:, 1:]
    present = torch.cat([cluster_ids == 0, (counts > 0) | keep_empty], dim=1)  # [B, N + k]
    return present.sum(dim=1), counts, present


def plan_merge(cluster_ids: Tensor, k: int, keep_empty: bool = False, length: int | None = None) -> MergePlan:
    """Plan the reduced sequence of every image.

    Args:
        cluster_ids: [B, N] long in 0..k.
        k: number of clusters.
        keep_empty: False (ours): empty clusters are dropped from the sequence. True (the ClustViT
            authors' forward): every image gets all k cluster tokens, an empty one as a zero vector
            that the other tokens still attend to.
        length: None: L = max tokens over the batch, read on the host once (the sequence length decides
            tensor shapes, so this is the one unavoidable device sync). An int (at least every image's
            token count, at most N + k; the caller's promise): L = length, every row padded and masked, no
            host read (CUDA graphs captured per length, see `cuda_graphs`).
    Returns:
        MergePlan.
    """
    B, N = cluster_ids.shape
    tokens, counts, present = token_counts(cluster_ids, k, keep_empty)
    if length is None:
        shortest, length = torch.stack(torch.aminmax(tokens)).tolist()  # one host read for both
        padded = shortest < length
    else:
        padded = True
    # A stable sort of "absent" flags lists the present slots first, each group in slot order.
    order = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :length]
    valid = torch.arange(length, device=cluster_ids.device) < tokens[:, None]
    slots = torch.where(valid, order, torch.full_like(order, N + k))
    return MergePlan(cluster_ids, slots, valid, counts, tokens, k, padded)


def cluster_means(x: Tensor, plan: MergePlan) -> Tensor:
    """Plain mean of the member tokens of every cluster.

    Args:
        x: [B, N, D] patch tokens.
    Returns:
        [B, k, D]; zero for an empty cluster.
    """
    B, N, D = x.shape
    ids = plan.cluster_ids.clamp(min=0)  # left-out tokens (-1) go to column 0, which is discarded
    sums = x.new_zeros(B, plan.k + 1, D).scatter_add(1, ids[..., None].expand(-1, -1, D), x)
    return sums[:, 1:] / plan.counts.clamp(min=1)[..., None].to(x.dtype)


def merge_tokens(x: Tensor, plan: MergePlan) -> Tensor:
    """Reduce patch tokens to [kept tokens, cluster means] (gradient flows through the means).

    Args:
        x: [B, N, D] patch tokens.
    Returns:
        [B, L, D] reduced tokens; padding rows are zero and must be masked (`plan.valid`).
    """
    B, N, D = x.shape
    pool = torch.cat([x, cluster_means(x, plan), x.new_zeros(B, 1, D)], dim=1)  # [B, N + k + 1, D]
    return pool.gather(1, plan.slots[..., None].expand(-1, -1, D))


def unmerge_tokens(y: Tensor, plan: MergePlan) -> tuple[Tensor, Tensor]:
    """Put processed reduced tokens back into slot space.

    Args:
        y: [B, L, D] processed reduced tokens.
    Returns:
        grid: [B, N, D] kept tokens at their grid positions, zero at clustered positions;
        representatives: [B, k, D] processed cluster tokens (zero for empty clusters).
    """
    B, L, D = y.shape
    N = plan.cluster_ids.shape[1]
    # Valid slots are unique, so adding into zeros writes them; all padding lands in the padding slot.
    pool = y.new_zeros(B, N + plan.k + 1, D).scatter_add(1, plan.slots[..., None].expand(-1, -1, D), y)
    return pool[:, :N], pool[:, N:N + plan.k]


RegenerateFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""(own [M, D], representatives [B, k, D], batch_index [M], cluster_index [M]) -> [M, D]"""


def regenerate(y: Tensor, x_ip: Tensor, plan: MergePlan, expand: RegenerateFn, dense: bool | None = None) -> Tensor:
    """Restore every patch token after the reduced blocks.

    Kept tokens go back to their grid positions; each clustered position gets
    expand(its own token at the injection point, its cluster's processed representative).

    Args:
        y: [B, L, D] processed reduced tokens.
        x_ip: [B, N, D] patch tokens as they were when merged.
        expand: the regenerator (see RegenerateFn).
        dense: expand every position and keep the clustered ones (no `nonzero`, so no wait for the device,
            at the cost of expanding the kept positions too) instead of gathering the clustered ones
            first. Default: dense on a GPU, where the host-device sync costs more than the extra rows.
    Returns:
        [B, N, D] patch tokens.
    """
    grid, representatives = unmerge_tokens(y, plan)
    clustered = plan.cluster_ids > 0  # [B, N]
    if dense is None:
        dense = y.device.type != "cpu"
    if dense:
        B, N, D = x_ip.shape
        batch_index = torch.arange(B, device=y.device)[:, None].expand(B, N).reshape(-1)
        cluster_index = (plan.cluster_ids - 1).clamp(min=0).reshape(-1)
        restored = expand(x_ip.reshape(B * N, D), representatives, batch_index, cluster_index).view(B, N, -1)
        return torch.where(clustered[..., None], restored.to(grid.dtype), grid)
    batch_index, token_index = clustered.nonzero(as_tuple=True)
    if batch_index.numel() == 0:
        return grid
    cluster_index = plan.cluster_ids[batch_index, token_index] - 1
    restored = expand(x_ip[batch_index, token_index], representatives, batch_index, cluster_index)
    return grid.index_put((batch_index, token_index), restored.to(grid.dtype))


def reduced_position(plan: MergePlan) -> Tensor:
    """Where each patch lives in the reduced sequence: its own position if kept, its cluster token's if not.

    Returns:
        [B, N] long in 0..L-1 (for `gather` from [B, L, ...] outputs of the reduced sequence).
    """
    B, L = plan.slots.shape
    N = plan.cluster_ids.shape[1]
    positions = torch.arange(L, device=plan.slots.device).expand(B, -1)
    pos_of_slot = plan.slots.new_zeros(B, N + plan.k + 1).scatter(1, plan.slots, positions)  # padding: slot N + k
    patch = torch.arange(N, device=plan.slots.device).expand(B, -1)
    slot_of_patch = torch.where(plan.cluster_ids <= 0, patch, N + plan.cluster_ids - 1)  # left out: any slot
    return pos_of_slot.gather(1, slot_of_patch)


def token_sizes(plan: MergePlan) -> Tensor:
    """How many patches each position of the reduced sequence stands for.

    Returns:
        [B, L] float: 1 for a kept token, the member count for a cluster token (at least 1: an empty
        cluster's zero token with empty_clusters=zeros counts as one), 0 on padding.
    """
    B, N = plan.cluster_ids.shape
    table = torch.cat([plan.counts.new_ones(B, N), plan.counts.clamp(min=1), plan.counts.new_zeros(B, 1)], dim=1)
    return table.gather(1, plan.slots).to(torch.float32)


def attention_mask(plan: MergePlan, prefix: int = 1, proportional: bool = False) -> Tensor | None:
    """Key mask for scaled_dot_product_attention over [prefix tokens (CLS), reduced sequence].

    Plain: boolean, True = may be attended, or None when nothing is padded. Proportional attention (ToMe's):
    an additive float mask, log(patches each key stands for) (`token_sizes`; 0 for the prefix, -inf on
    padding), so that a cluster token gets the attention weight its members would have had together.

    Returns:
        [B, 1, 1, prefix + L] bool or float, or None.
    """
    B = plan.valid.shape[0]
    if proportional:
        bias = token_sizes(plan).log()  # padding: log 0 = -inf
        return torch.cat([bias.new_zeros(B, prefix), bias], dim=1)[:, None, None, :]
    if not plan.padded:
        return None
    keep = torch.cat([plan.valid.new_ones(B, prefix), plan.valid], dim=1)
    return keep[:, None, None, :]
