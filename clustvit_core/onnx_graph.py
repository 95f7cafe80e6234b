"""ClustViT as an exportable graph: one image, its token merging intact.

`ClustViT.forward` plans a padded batch and reads the longest sequence length on the host (`plan_merge`);
a traced graph would freeze that length. Here the same computation for ONE image is written with
data-dependent *shapes* instead: `nonzero` lists the kept tokens and the non-empty clusters, cluster
means are a one-hot matrix product (k is small), and every scatter of the regeneration is a gather by an
index computed with `cumsum`. ONNX has all of these (NonZero, CumSum, Gather, MatMul), so the exported
graph keeps each image's own token count and the `keep_bias` knob as a graph input.

Shapes (one image; N = h * w patch tokens, D width, k clusters):
    ids      [N]      long, 0 = kept, 1..k = cluster (the Cluster module's argmax)
    kept     [M]      indices of kept tokens, raster order
    present  [P]      cluster indices (0-based) that enter the sequence: the non-empty ones (or all k
                      with empty_clusters=zeros)
    reduced  [M + P, D]  kept tokens, then one mean per present cluster (= `merge.merge_tokens` order)

Tested against the eager model (`test/test_onnx.py`): same token counts, same logits.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .heads import UPerHead
from .model import ClustViT


def single_merge(x: Tensor, ids: Tensor, k: int, keep_empty: bool | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reduce one image's patch tokens.

    Args:
        x: [N, D] patch tokens at the injection point. ids: [N] long cluster ids.
        keep_empty: every cluster enters the sequence, an empty one as a zero token (the authors' forward);
            a bool or a bool tensor [].
    Returns:
        reduced [M + P, D], kept [M] long, present_mask [k] bool, counts [k] (members per cluster, x's dtype).
    """
    kept = torch.nonzero(ids == 0)[:, 0]
    one_hot = (ids[:, None] == torch.arange(1, k + 1, device=ids.device)[None]).to(x.dtype)  # [N, k]
    counts = one_hot.sum(0)  # [k]
    means = (one_hot.t() @ x) / counts.clamp(min=1)[:, None]  # [k, D]; zero for an empty cluster
    present_mask = counts > 0
    if isinstance(keep_empty, Tensor):
        present_mask = present_mask | keep_empty
    elif keep_empty:
        present_mask = torch.ones_like(present_mask)
    present = torch.nonzero(present_mask)[:, 0]
    return torch.cat([x[kept], means[present]], dim=0), kept, present_mask, counts


def single_size_bias(kept: Tensor, present_mask: Tensor, counts: Tensor) -> Tensor:
    """Proportional attention for one image (= `merge.attention_mask(..., proportional=True)`): log(patches
    each reduced token stands for), a kept token 0, a cluster token log(members) (an empty cluster kept as a
    zero token: 0). kept [M], present_mask [k], counts [k] as `single_merge` returns them -> [M + P]."""
    present = torch.nonzero(present_mask)[:, 0]
    return torch.cat([counts.new_zeros(kept.shape), counts[present].clamp(min=1).log()], dim=0)


def single_regenerate(y: Tensor, x_ip: Tensor, ids: Tensor, present_mask: Tensor, regenerator: nn.Module) -> Tensor:
    """Restore every patch token of one image after the reduced blocks (= `merge.regenerate`).

    Args:
        y: [M + P, D] processed reduced tokens. x_ip: [N, D] tokens as they were when merged.
        ids: [N] cluster ids. present_mask: [k] which clusters have a token in `y`.
        regenerator: the model's `Regenerator` (its split first layer: the representative half once per cluster).
    Returns:
        [N, D]: kept tokens from `y`, clustered ones regenerated from their own token and their cluster's.
    """
    is_kept = ids == 0
    num_kept = is_kept.sum()
    length = num_kept + present_mask.sum()  # rows of y, as a tensor (a traced graph keeps it dynamic)
    # row of each cluster's representative in y: after the M kept tokens, in cluster order (absent: any row)
    rep_rows = num_kept + torch.cumsum(present_mask.long(), 0) - 1
    reps = y[torch.minimum(rep_rows, length - 1).clamp(min=0)]  # [k, D]
    dim = regenerator.dim
    w_own, w_rep = regenerator.fc1.weight[:, :dim], regenerator.fc1.weight[:, dim:]
    per_cluster = F.linear(reps, w_rep, regenerator.fc1.bias)  # [k, D]
    clustered = torch.nonzero(~is_kept)[:, 0]  # [Nc]
    hidden = F.linear(x_ip[clustered], w_own) + per_cluster[ids[clustered] - 1]
    restored = regenerator.fc2(regenerator.act(hidden))  # [Nc, D]
    if regenerator.residual:
        restored = restored + reps[ids[clustered] - 1]
    # every grid position as a gather from [y; restored]: kept n -> its row in y, clustered n -> y rows + its rank
    table = torch.cat([y, restored.to(y.dtype)], dim=0)
    kept_rank = torch.cumsum(is_kept.long(), 0) - 1
    clustered_rank = torch.cumsum((~is_kept).long(), 0) - 1
    index = torch.where(is_kept, kept_rank, length + clustered_rank)
    return table[index]


def single_reduced_rows(ids: Tensor, present_mask: Tensor) -> Tensor:
    """Row of each patch in the reduced sequence of one image (= `merge.reduced_position`): its own row if
    kept, its cluster token's row if clustered. ids [N], present_mask [k] -> [N] long."""
    is_kept = ids == 0
    cluster_rows = is_kept.sum() + torch.cumsum(present_mask.long(), 0) - 1  # [k]
    kept_rank = torch.cumsum(is_kept.long(), 0) - 1
    return torch.where(is_kept, kept_rank, cluster_rows[(ids - 1).clamp(min=0)])


def adaptive_pool_matrix(size_in: int, size_out: int) -> Tensor:
    """[size_out, size_in] averaging matrix of `adaptive_avg_pool` along one axis: row i averages the inputs
    floor(i * n / o) .. ceil((i + 1) * n / o) - 1, as PyTorch's bins."""
    m = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class FixedAdaptiveAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d(out)` for one known input size, as two matrix products: exports to ONNX for
    any sizes (the exporter's AdaptiveAvgPool2d needs the output to divide the input)."""

    def __init__(self, size_in: tuple[int, int], size_out: int | tuple[int, int]):
        super().__init__()
        oh, ow = (size_out, size_out) if isinstance(size_out, int) else size_out
        self.register_buffer("rows", adaptive_pool_matrix(size_in[0], oh), persistent=False)  # [oh, h]
        self.register_buffer("cols", adaptive_pool_matrix(size_in[1], ow), persistent=False)  # [ow, w]

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, h, w] -> [B, C, oh, ow]."""
        return self.rows.to(x.dtype) @ x @ self.cols.t().to(x.dtype)


ATTENTION_KINDS = ("onnx", "ort")  # export_onnx(attention=...)


class _MultiHeadAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v over `num_heads` heads; exports as ONNX Runtime's fused contrib op
    com.microsoft.MultiHeadAttention (q, k, v [B, N, D] -> [B, N, D]) instead of MatMul/Softmax/MatMul."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
        B, N, D = q.shape
        heads = lambda t: t.reshape(B, t.shape[1], num_heads, D // num_heads).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(B, N, D)

    @staticmethod
    def symbolic(g, q, k, v, num_heads: int):
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=num_heads)


class FusedAttention(nn.Module):
    """timm's `Attention` (same qkv / proj weights, no q/k norm) whose core exports as one fused op."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        if not isinstance(getattr(attn, "q_norm", None), nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
            raise ConfigError("attention='ort' supports attention without q/k normalization only")
        self.qkv, self.proj, self.num_heads = attn.qkv, attn.proj, attn.num_heads

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, **_) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if attn_mask is None:
            return self.proj(_MultiHeadAttention.apply(q, k, v, self.num_heads))
        # a key bias (proportional attention after merging): standard ops; these blocks see the short sequence
        B, N, D = q.shape
        heads = lambda t: t.reshape(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


def fuse_attention(model: nn.Module) -> int:
    """Replace every timm `Attention` in `model` (backbone and head blocks) by `FusedAttention`, in place;
    the number replaced."""
    from timm.models.vision_transformer import Attention

    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, Attention)]
    for parent, name in targets:
        setattr(parent, name, FusedAttention(getattr(parent, name)))
    return len(targets)


class ExportGraph(nn.Module):
    """A ClustViT (or plain ViT) for one image of a fixed size, in ops that export to ONNX.

    forward(image [1, 3, H, W] normalized float, keep_bias [] float) ->
        logits [1, C, H, W], cluster_ids [1, h, w] long (all 0 for a plain ViT), tokens [1] long.
    With `oracle=True` a third input, oracle_ids [1, h, w] long, replaces the Cluster module's choice
    (the benchmark's oracle clusters); keep_bias is then unused. `attention`: "onnx" (standard ops, any
    runtime) or "ort" (ONNX Runtime's fused MultiHeadAttention contrib op: CPU / CUDA providers, not TensorRT).
    """

    def __init__(self, model: ClustViT, size: tuple[int, int], oracle: bool = False, attention: str = "onnx"):
        super().__init__()
        if model.config.sharing:
            raise ConfigError(f"{model.config.name}: ONNX export of CTS (token sharing) models is not supported; "
                              "export the ViT or ClustViT")
        self.oracle = bool(oracle) and model.clustering
        self.size = tuple(int(v) for v in size)
        p = model.backbone.patch_size
        if self.size[0] % p or self.size[1] % p:
            raise ValueError(f"size {self.size}: sides must be multiples of the patch size {p}")
        self.grid = (self.size[0] // p, self.size[1] // p)
        self.model = model = copy.deepcopy(model).eval()  # the caller's model is left as it is
        if attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention={attention!r}: choose from {', '.join(ATTENTION_KINDS)}")
        if attention == "ort":
            fuse_attention(model)
        bb = model.backbone
        if isinstance(model.head, UPerHead):
            for module in model.head.psp_modules:
                module[0] = FixedAdaptiveAvgPool2d(self.grid, module[0].output_size)
        # the position embedding at this size, resampled once (a constant of the graph)
        self.register_buffer("pos_embed", bb.position_embedding(self.grid).detach().clone(), persistent=False)

    def forward(self, image: Tensor, keep_bias: Tensor, oracle_ids: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        model, bb = self.model, self.model.backbone
        h, w = self.grid
        x = bb.patch_embed(image)
        x = torch.cat([bb.cls_token, x], dim=1) + self.pos_embed  # [1, 1 + N, D]
        out_indices = model.out_indices
        features: dict[int, Tensor] = {}
        masks: Tensor | None = None  # per-patch mask scores [N, C] of a decoder_merge model
        if not bb.clustering:
            for i, block in enumerate(bb.blocks):
                x = block(x)
                if i in out_indices:
                    features[i] = bb.norm(x[:, 1:]) if i == bb.depth - 1 else x[:, 1:]
            ids = torch.zeros(1, h * w, dtype=torch.long, device=image.device)
            # keep_bias does nothing here; used (x 0) so that every exported model has the same two inputs
            tokens = torch.full((1,), h * w, dtype=torch.long, device=image.device) + (keep_bias * 0).long()
        else:
            for i in range(bb.ip):
                x = bb.blocks[i](x)
                if i in out_indices:
                    features[i] = x[:, 1:]
            x_ip = x[0, 1:]  # [N, D]
            logits = bb.cluster_mlp(x_ip)  # [N, k + 1]
            keep = logits[:, :1] + keep_bias.to(logits.dtype)
            ids = torch.cat([keep, logits[:, 1:]], dim=1).argmax(dim=1)  # [N]
            if self.oracle:
                ids = oracle_ids.reshape(-1).long() + 0 * ids  # (+ 0 * ids: the Cluster module still runs, as eager)
            keep_empty = bb.empty_clusters == "zeros"
            if keep_empty:  # the authors' forward merges nothing (and adds no token) when the image holds one id
                single_id = (ids == ids[0]).all()
                ids = torch.where(single_id, torch.zeros_like(ids), ids)
                keep_empty = ~single_id
            reduced, kept, present_mask, counts = single_merge(x_ip, ids, bb.k, keep_empty)
            x = torch.cat([x[:, :1], reduced[None]], dim=1)
            decoder_merge = model.config.decoder_merge
            bias = single_size_bias(kept, present_mask, counts).to(x.dtype) if bb.proportional_attention else None
            mask = None if bias is None else torch.cat([bias.new_zeros(1), bias])[None, None, None, :]
            for i in range(bb.ip, bb.depth):
                x = bb.blocks[i](x) if mask is None else bb.blocks[i](x, attn_mask=mask)
                if decoder_merge and i == bb.depth - 1:  # the head runs on the merged sequence (see ClustViT)
                    masks = self._merged_masks(bb.norm(x[0, 1:]), x_ip, ids, present_mask, bias)  # [N, C]
                elif i in out_indices:
                    patches = single_regenerate(x[0, 1:], x_ip, ids, present_mask, bb.regenerator)[None]
                    features[i] = bb.norm(patches) if i == bb.depth - 1 else patches
            tokens = ((ids == 0).sum() + present_mask.sum())[None]  # [1]
            ids = ids[None]
        if masks is None:
            maps = [features[i].transpose(1, 2).reshape(1, bb.embed_dim, h, w) for i in sorted(features)]
            logits = model.head(maps)
        else:
            logits = masks.t().reshape(1, -1, h, w)
        logits = F.interpolate(logits, size=self.size, mode="bilinear", align_corners=False)
        if model.refiner is not None:
            logits = model.refiner(image, logits)
        return logits, ids.reshape(1, h, w), tokens.long()

    def _merged_masks(self, y: Tensor, x_ip: Tensor, ids: Tensor, present_mask: Tensor, bias: Tensor | None) -> Tensor:
        """decoder_merge (= `ClustViT._merged_masks` for one image): final-normed reduced tokens y [M + P, D]
        -> per-patch mask scores [N, C]. `bias` [M + P]: proportional attention's key bias, or None."""
        model = self.model
        valid = None if bias is None else bias[None]
        if model.decoder_regenerator is None:
            return model.head(tokens=y[None], valid=valid)[0][single_reduced_rows(ids, present_mask)]
        restore = lambda decoded: single_regenerate(decoded[0], x_ip, ids, present_mask, model.decoder_regenerator)[None]  # noqa: E731
        return model.head(tokens=y[None], valid=valid, restore=restore)[0]
