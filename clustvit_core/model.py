"""The ClustViT model: a plain ViT (timm blocks) with a Cluster module and a Regenerator, plus a head.

With `k=None` the very same class is the plain ViT baseline: every other line is shared, and its
state dict is the ClustViT's minus `backbone.cluster_mlp.*` and `backbone.regenerator.*`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .config import BACKBONES, ModelConfig
from .merge import MergePlan, assign_clusters, attention_mask, merge_tokens, plan_merge, reduced_position, regenerate
from .share import group_positions, group_tokens, groups_to_share, plan_sharing, share_tokens, unshare_tokens
from .errors import ConfigError, InputError
from .heads import DetailRefiner, SegmenterHead, UPerHead, init_linear_layers

SPLIT_MIN_TOKENS = 128  # see ClustViTBackbone.split_batches


def resample_pos_embed(pos_embed: Tensor, grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Position embeddings of one grid resampled to another: the one kernel of this package.

    Plain bicubic interpolation (align_corners=False, no antialiasing), as mmsegmentation's
    `VisionTransformer.resize_pos_embed` does, so that converted mmseg checkpoints give mmseg's outputs
    at any input size; our own checkpoints use the same kernel. (timm's `resample_abs_pos_embed`
    antialiases by default, which differs even when upsampling.)

    Args:
        pos_embed: [1, P + h0*w0, D], the P prefix tokens (CLS) first, then the grid in raster order.
        grid: (h, w) target grid; old_grid: (h0, w0).
    Returns:
        [1, P + h*w, D] in the input's dtype.
    """
    grid, old_grid = tuple(int(v) for v in grid), tuple(int(v) for v in old_grid)
    if grid == old_grid:
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    D = pos_embed.shape[-1]
    maps = patches.float().reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=grid, mode="bicubic", align_corners=False, antialias=False)
    patches = maps.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], D).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


@dataclass
class ClustViTOutput:
    """What `ClustViT.forward` returns.

    logits:         [B, num_classes, H, W] class scores at input resolution.
    cluster_ids:    [B, H/p, W/p] long (p = patch size), 0 = kept token, 1..k = cluster; None for the plain ViT.
    cluster_logits: [B, N, k + 1] Cluster-module logits (the auxiliary loss input); None for the plain ViT.
    tokens:         [B] long, patch-level sequence length after merging (kept + non-empty clusters); N for the ViT.
    policy_logits:  [B, gh, gw] CTS policy logits per 2x2 patch group (the auxiliary loss input); None unless CTS.
    """

    logits: Tensor
    cluster_ids: Tensor | None
    cluster_logits: Tensor | None
    tokens: Tensor
    policy_logits: Tensor | None = None


@dataclass
class BackboneOutput:
    features: list[Tensor]  # one [B, D, h, w] map per requested block index
    cluster_ids: Tensor | None  # [B, h, w]
    cluster_logits: Tensor | None  # [B, N, k + 1]
    tokens: Tensor  # [B]
    policy_logits: Tensor | None = None  # [B, gh, gw] (CTS)
    reduced: Tensor | None = None  # [B, L, D] final-normed merged sequence after the last block (decoder_merge)
    plan: MergePlan | None = None  # its merge plan (decoder_merge)
    x_ip: Tensor | None = None  # [B, N, D] patch tokens as they were merged (decoder_merge)


class PreMerge(NamedTuple):
    """A ClustViT's state at the merge (`ClustViTBackbone.prepare_merge`)."""

    features: dict  # {block index: [B, 1 + N, D] or patch tokens} requested before ip
    cls: Tensor  # [B, 1, D] the CLS token after block ip - 1
    x_ip: Tensor  # [B, N, D] patch tokens after block ip - 1
    cluster_logits: Tensor  # [B, N, k + 1]
    cluster_ids: Tensor  # [B, N] long in -1..k
    keep_empty: bool
    grid: tuple[int, int]  # (h, w)


class ClusterMLP(nn.Module):
    """Per-token logits over {keep, cluster 1..k}: Linear(D->H) -> ReLU -> Linear(H->k+1)."""

    def __init__(self, dim: int, hidden: int, k: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, k + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SharePolicy(nn.Module):
    """CTS policy network: per 2x2 patch group, the logit that the group's block holds one class.

    A small CNN (four stride-2 3x3 convolutions, 16-32-64-64 channels, ReLU, then a 1x1 convolution) on the
    image resized so that each group is 16 x 16 pixels: about 0.25 GFLOPs for a 784 x 588 input. (The CTS
    authors use an ImageNet-pretrained EfficientNet-Lite0; none is reachable here, and the targets, block
    purity, are simple enough for a small net trained from scratch.)
    """

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(c, 1, 1)
        self.stride = 2 ** len(widths)

    def forward(self, images: Tensor, groups: tuple[int, int]) -> Tensor:
        """images [B, C, H, W] -> logits [B, gh, gw] for the (gh, gw) group grid."""
        gh, gw = groups
        x = F.interpolate(images, size=(gh * self.stride, gw * self.stride), mode="bilinear", align_corners=False)
        return self.score(self.features(x))[:, 0]


class Regenerator(nn.Module):
    """MLP(concat[own token at the injection point, processed representative]) -> restored token.

    Linear(2D->D) -> GELU -> Linear(D->D). `residual=False` (the paper's): the MLP's output is the token.
    `residual=True`: representative + the MLP's output, with the last layer initialized to zero
    (`zero_residual`), so that before training every member gets its cluster's token. `forward`
    computes the representative half of the first layer once per cluster instead of once per member
    (same result, fewer FLOPs); `reference` is the literal concat form.
    """

    def __init__(self, dim: int, residual: bool = False):
        super().__init__()
        self.dim = dim
        self.residual = bool(residual)
        self.fc1 = nn.Linear(2 * dim, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)
        self.zero_residual()

    def zero_residual(self) -> None:
        """Residual: the last layer to zero (restoring = copying the representative); draws no random
        numbers, so that models without it initialize exactly as before."""
        if self.residual:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def reset_parameters(self) -> None:
        """ViT initialization (`init_linear_layers`), then `zero_residual`."""
        init_linear_layers(self)
        self.zero_residual()

    def forward(self, own: Tensor, representatives: Tensor, batch_index: Tensor, cluster_index: Tensor) -> Tensor:
        """own [M, D], representatives [B, k, D], indices [M] -> [M, D] (see merge.RegenerateFn)."""
        w_own, w_rep = self.fc1.weight[:, : self.dim], self.fc1.weight[:, self.dim :]
        per_cluster = F.linear(representatives, w_rep, self.fc1.bias)  # [B, k, D]
        hidden = F.linear(own, w_own) + per_cluster[batch_index, cluster_index]
        out = self.fc2(self.act(hidden))
        return out + representatives[batch_index, cluster_index] if self.residual else out

    def reference(self, own: Tensor, representative: Tensor) -> Tensor:
        """own, representative: [..., D] -> [..., D]: the plain concat form `forward` must equal."""
        out = self.fc2(self.act(self.fc1(torch.cat([own, representative], dim=-1))))
        return out + representative if self.residual else out


class ClustViTBackbone(nn.Module):
    """ViT (patch size `patch_size`) with a CLS token; optionally clusters tokens before block `ip`.

    Key names equal timm's VisionTransformer (`cls_token`, `pos_embed`, `patch_embed.proj`,
    `blocks.N`, `norm`), so timm checkpoints load as they are.
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 512,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        k: int | None = 3,
        ip: int | None = 3,
        cluster_hidden: int | None = None,
        empty_clusters: str = "drop",
        cts_reduction: float | None = None,
        decoder_merge: bool = False,
        drop_path_rate: float = 0.0,
        regenerator: str = "mlp",
        proportional_attention: bool = False,
    ):
        super().__init__()
        if (k is None) != (ip is None):
            raise ConfigError(f"k={k} and ip={ip}: give both (ClustViT) or neither (plain ViT)")
        if k is not None:
            if int(k) != k or k < 1:
                raise ConfigError(f"k={k}: the number of clusters must be an integer >= 1 (use k=None, ip=None for a plain ViT)")
            if int(ip) != ip or not 0 <= ip < depth:
                raise ConfigError(f"ip={ip}: the injection point must be a block index in 0..{depth - 1} (depth={depth})")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.depth = depth
        self.k, self.ip = k, ip
        self.empty_clusters = empty_clusters  # "drop" | "zeros", see config.ModelConfig
        self.batch_mode = "auto"  # see split_batches
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path[i], norm_layer=norm) for i in range(depth)
        )
        self.norm = norm(embed_dim)
        if k is not None:
            self.cluster_mlp = ClusterMLP(embed_dim, cluster_hidden or 4 * embed_dim, k)
            self.regenerator = Regenerator(embed_dim, residual=regenerator == "residual")
        self.proportional_attention = bool(proportional_attention)  # see attention_mask
        self.decoder_merge = bool(decoder_merge)  # the last block's merged sequence goes to the head as it is
        self.cts_reduction = cts_reduction
        if cts_reduction is not None:
            if k is not None:
                raise ConfigError("cts_reduction with k/ip: a backbone shares tokens (CTS) or clusters them, not both")
            self.policy = SharePolicy(in_chans)
        self._init_weights()

    @property
    def clustering(self) -> bool:
        return self.k is not None

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        init_linear_layers(self)
        if self.clustering:
            self.regenerator.zero_residual()

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """[1, 1 + h*w, D], resampled (`resample_pos_embed`) when the input grid differs from the trained one.
        Without gradients the resampled table is kept for the next call with the same grid (until the
        parameter changes): the bicubic kernel cost 3.6 ms per image on an H200, more than the ViT-S's
        fp16 matrix products (scripts/profile_torch.py)."""
        grid = tuple(int(v) for v in grid)
        if grid == tuple(self.grid):
            return self.pos_embed
        if torch.is_grad_enabled():
            return resample_pos_embed(self.pos_embed, grid, self.grid)
        p = self.pos_embed
        key = (grid, p.device, p.dtype, p.data_ptr(), p._version)
        cached = getattr(self, "_resampled_pos_embed", None)
        if cached is None or cached[0] != key:
            # p.detach() keeps the storage the entry was made from alive, so no later tensor (after .to(), a
            # load into a new tensor, ...) can reuse its address and pass for it
            cached = (key, p.detach(), resample_pos_embed(p, grid, self.grid))
            self._resampled_pos_embed = cached
        return cached[2]

    def forward(self, images: Tensor, out_indices: tuple[int, ...], cluster_ids: Tensor | None = None, keep_bias: float | Tensor = 0.0,
                share_scores: Tensor | None = None, drop_mask: Tensor | None = None) -> BackboneOutput:
        """images [B, C, H, W] with H, W multiples of the patch size -> features after `out_indices` blocks.
        CTS: `share_scores` [B, gh, gw] (e.g. block purity of the ground truth: oracle sharing) replace the policy's.
        ClustViT: `drop_mask` [B, h, w] bool marks patches to leave out of the sequence (letterbox padding).
        A ClustViT runs as `prepare_merge` then `finish_merge` (the split a CUDA graph runner needs)."""
        B, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        if self.cts_reduction is not None:
            return self._forward_shared(images, self.patch_embed(images), (h, w), out_indices, share_scores)
        if not self.clustering:
            x = self._embed(images, (h, w))
            features = self._run_blocks(x, 0, None, None, out_indices)
            tokens = torch.full((B,), h * w, dtype=torch.long, device=images.device)
            return BackboneOutput(self._maps(features, h, w), None, None, tokens)
        state = self.prepare_merge(images, out_indices, cluster_ids, keep_bias, drop_mask)
        return self.finish_merge(state, out_indices)

    def _embed(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """[B, 1 + h*w, D]: CLS token and patch embeddings, plus position embeddings."""
        cls = self.cls_token.expand(images.shape[0], -1, -1)
        return torch.cat([cls, self.patch_embed(images)], dim=1) + self.position_embedding(grid)

    def prepare_merge(self, images: Tensor, out_indices: tuple[int, ...], cluster_ids: Tensor | None = None,
                      keep_bias: float | Tensor = 0.0, drop_mask: Tensor | None = None) -> PreMerge:
        """ClustViT up to the merge: patch embedding, the blocks before `ip`, the Cluster module's choice.
        Reads nothing on the host (unless empty_clusters "zeros" or checks of given ids on the CPU)."""
        B, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        x = self._embed(images, (h, w))
        features = self._run_blocks(x, 0, None, None, tuple(i for i in out_indices if i < self.ip), stop=self.ip)
        x = features.pop("x")
        x_ip = x[:, 1:]
        logits = self.cluster_mlp(x_ip)
        if cluster_ids is None:
            ids = assign_clusters(logits.detach(), keep_bias)
        else:
            ids = check_cluster_ids(cluster_ids, B, h, w, self.k).to(images.device)
        if drop_mask is not None:
            if tuple(drop_mask.shape) != (B, h, w):
                raise InputError(f"drop_mask has shape {tuple(drop_mask.shape)}, expected [{B}, {h}, {w}] (one flag per patch)")
            ids = torch.where(drop_mask.reshape(B, h * w).to(ids.device, torch.bool), torch.full_like(ids, -1), ids)
        keep_empty = self.empty_clusters == "zeros"
        if keep_empty and bool((ids == ids.view(-1)[0]).all()):
            ids = torch.zeros_like(ids)  # the authors' forward merges nothing when the batch holds a single id
            keep_empty = False
        return PreMerge(features, x[:, :1], x_ip, logits, ids, keep_empty, (h, w))

    def finish_merge(self, state: PreMerge, out_indices: tuple[int, ...], length: int | None = None) -> BackboneOutput:
        """ClustViT from the merge on: plan (`merge.plan_merge`, `length` as there), reduced blocks, regeneration."""
        features, cls, x_ip, logits, ids, keep_empty, (h, w) = state
        features = dict(features)
        B = x_ip.shape[0]
        plan = plan_merge(ids, self.k, keep_empty, length=length)
        later = tuple(i for i in out_indices if i >= self.ip)
        if plan.padded and length is None and not self.decoder_merge and self.split_batches(x_ip, plan):
            # Image by image: each reduced sequence is a prefix of its padded row (see MergePlan).
            parts = []
            for b in range(B):
                plan_b = plan_merge(ids[b : b + 1], self.k, keep_empty)
                x_b = torch.cat([cls[b : b + 1], merge_tokens(x_ip[b : b + 1], plan_b)], dim=1)
                parts.append(self._run_blocks(x_b, self.ip, plan_b, x_ip[b : b + 1], later))
            features.update({i: torch.cat([p[i] for p in parts]) for i in later})
        else:
            x = torch.cat([cls, merge_tokens(x_ip, plan)], dim=1)
            features.update(self._run_blocks(x, self.ip, plan, x_ip, later))
        reduced = features.pop("reduced", None)
        merged = reduced is not None
        return BackboneOutput(self._maps(features, h, w), plan.cluster_ids.view(B, h, w), logits, plan.tokens,
                              reduced=reduced, plan=plan if merged else None, x_ip=x_ip if merged else None)

    def _forward_shared(self, images: Tensor, patches: Tensor, grid: tuple[int, int], out_indices, share_scores) -> BackboneOutput:
        """CTS: the policy's best 2x2 groups become one token each (see `share`); every image the same length."""
        B = images.shape[0]
        h, w = grid
        groups = (h // 2, w // 2)
        pos = self.position_embedding(grid)
        policy_logits = self.policy(images, groups)  # [B, gh, gw]
        scores = policy_logits if share_scores is None else share_scores.to(policy_logits.dtype).reshape(policy_logits.shape)
        num_shared = groups_to_share(h * w, groups[0] * groups[1], self.cts_reduction)
        plan = plan_sharing(scores.detach().flatten(1), grid, num_shared)
        group_tok = group_tokens(images, self.patch_embed, self.patch_size, grid) + group_positions(pos[:, 1:], grid)
        x = share_tokens(patches + pos[:, 1:], group_tok, plan)
        x = torch.cat([self.cls_token.expand(B, -1, -1) + pos[:, :1], x], dim=1)
        features = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in out_indices:
                full = unshare_tokens(x[:, 1:], plan)
                features[i] = self.norm(full) if i == self.depth - 1 else full
        tokens = torch.full((B,), plan.tokens, dtype=torch.long, device=images.device)
        return BackboneOutput(self._maps(features, h, w), None, None, tokens, policy_logits)

    def split_batches(self, x: Tensor, plan) -> bool:
        """Whether images of different reduced lengths run the reduced blocks one by one instead of as one
        padded, masked batch. `batch_mode` "split" / "pad" decide. "auto" splits on CPU when the longest
        reduced sequence has >= SPLIT_MIN_TOKENS tokens: there, measured with
        `python -m clustvit_core.benchmark --batch 8 --batch-modes pad split`, splitting beat padding at
        512x512 (no compute on padding) and lost at 128x128 (per-image overhead). On GPUs it pads."""
        if self.batch_mode == "auto":
            return x.device.type == "cpu" and plan.slots.shape[1] >= SPLIT_MIN_TOKENS
        return self.batch_mode == "split"

    def _run_blocks(self, x: Tensor, start: int, plan, x_ip, out_indices, stop: int | None = None) -> dict:
        """Blocks start..stop-1 on [B, 1 + L, D]; returns {index: patch tokens [B, N, D]} for `out_indices`
        (regenerated if `plan`; the last block's output final-normed), and "x": the last sequence."""
        stop = self.depth if stop is None else stop
        mask = self.attention_mask(plan, x) if plan is not None else None
        out = {}
        for i in range(start, stop):
            x = self.blocks[i](x, attn_mask=mask)
            if i in out_indices and plan is not None and self.decoder_merge and i == self.depth - 1:
                out["reduced"] = self.norm(x[:, 1:])  # not regenerated: the head runs on the merged sequence
            elif i in out_indices:
                patches = x[:, 1:] if plan is None else regenerate(x[:, 1:], x_ip, plan, self.regenerator)
                out[i] = self.norm(patches) if i == self.depth - 1 else patches
        out["x"] = x
        return out

    def attention_mask(self, plan, x: Tensor) -> Tensor | None:
        """`merge.attention_mask` for the blocks after merging (proportional if so configured); a float mask
        in the dtype the attention computes in (autocast's, when on: SDPA wants the query's dtype)."""
        mask = attention_mask(plan, proportional=self.proportional_attention)
        if mask is not None and mask.dtype != torch.bool:
            kind = x.device.type
            mask = mask.to(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype)
        return mask

    def _maps(self, features: dict, h: int, w: int) -> list[Tensor]:
        """{index: [B, N, D]} -> [B, D, h, w] maps in index order."""
        return [features[i].transpose(1, 2).reshape(-1, self.embed_dim, h, w) for i in sorted(k for k in features if isinstance(k, int))]


def check_cluster_ids(cluster_ids: Tensor, batch: int, h: int, w: int, k: int) -> Tensor:
    """Validate externally given cluster ids ([B, h, w] or [B, h*w], values 0..k) -> [B, h*w] long."""
    if cluster_ids.dtype.is_floating_point or cluster_ids.dtype == torch.bool:
        raise InputError(f"cluster_ids must be an integer tensor, got {cluster_ids.dtype}")
    if tuple(cluster_ids.shape) not in ((batch, h, w), (batch, h * w)):
        raise InputError(f"cluster_ids has shape {tuple(cluster_ids.shape)}, expected [{batch}, {h}, {w}] (one id per patch)")
    if cluster_ids.device.type != "cpu":  # checked on the device: a host-side check would wait for the GPU
        torch._assert_async(((cluster_ids >= 0) & (cluster_ids <= k)).all(), f"cluster_ids must lie in 0..{k} (0 = keep)")
    else:
        lo, hi = (int(v) for v in torch.aminmax(cluster_ids))
        if lo < 0 or hi > k:
            raise InputError(f"cluster_ids must lie in 0..{k} (0 = keep), got values in {lo}..{hi}")
    return cluster_ids.reshape(batch, h * w).long()


class ClustViT(nn.Module):
    """ClustViT (or, with k=None and ip=None, the plain ViT) with a Segmenter or UPerNet head.

    The model owns its config: `model.config` is the `ModelConfig` it was built from (architecture,
    classes, and `model.config.data`, the input contract: size, patch size, mean/std).

        model = ClustViT(ModelConfig(num_classes=3, backbone="tiny", k=3, ip=3))
        model = build_model("cwfid_k3_ip3")          # the same through the registry
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ConfigError(f"ClustViT takes a ModelConfig, got {type(config).__name__}; use ModelConfig(**settings) or build_model(NAME)")
        self.config = config
        self.num_classes = config.num_classes
        depth, dim = config.depth, config.embed_dim
        self.backbone = ClustViTBackbone(
            img_size=config.data.input_size, patch_size=config.patch_size, embed_dim=dim, depth=depth,
            num_heads=config.num_heads, k=config.k, ip=config.ip, cluster_hidden=config.cluster_hidden,
            empty_clusters=config.empty_clusters, cts_reduction=config.cts_reduction,
            decoder_merge=config.decoder_merge, drop_path_rate=config.drop_path_rate,
            regenerator=config.regenerator, proportional_attention=config.proportional_attention,
        )
        if config.head == "segmenter":
            self.out_indices = (depth - 1,)
            self.head = SegmenterHead(dim, config.num_classes, num_layers=config.head_layers, num_heads=config.num_heads)
        else:
            indices = config.uper_indices or default_uper_indices(depth)
            if any(not 0 <= i < depth for i in indices) or list(indices) != sorted(set(indices)):
                raise ConfigError(f"uper_indices={list(indices)}: need increasing block indices in 0..{depth - 1}")
            self.out_indices = tuple(indices)
            self.head = UPerHead([dim] * len(indices), config.num_classes, channels=config.uper_channels)
        # decoder_merge with decoder_restore "regenerate": restores every patch token after the mask transformer
        self.decoder_regenerator = None
        if config.decoder_merge and config.decoder_restore == "regenerate":
            self.decoder_regenerator = Regenerator(dim, residual=config.regenerator == "residual")
            self.decoder_regenerator.reset_parameters()
        self.refiner = DetailRefiner(config.num_classes, config.refine_channels) if config.refine_channels else None

    @property
    def clustering(self) -> bool:
        return self.backbone.clustering

    def forward(self, images: Tensor, cluster_ids: Tensor | None = None, keep_bias: float = 0.0,
                share_scores: Tensor | None = None, drop_mask: Tensor | None = None) -> ClustViTOutput:
        """Segment normalized images.

        Args:
            images: float [B, 3, H, W], normalized as `config.data` says. H and W that are not
                multiples of the patch size p are zero-padded at the bottom/right; logits are cropped
                back to H x W, cluster ids cover the padded grid (ceil(H/p) x ceil(W/p)).
            cluster_ids: optional [B, ceil(H/p), ceil(W/p)] long in 0..k replacing the Cluster
                module's choice (oracle clustering); the module's logits are still computed.
            keep_bias: added to the "keep" logit before the argmax (> 0 merges fewer tokens).
            share_scores: CTS only: optional [B, ceil(H/p) // 2, ceil(W/p) // 2] scores replacing the policy's
                (oracle sharing, e.g. `pseudo.block_purity` of the ground truth).
            drop_mask: ClustViT only: optional [B, ceil(H/p), ceil(W/p)] bool, patches left out of the sequence
                after the injection point (cluster id -1; their outputs are meaningless): letterbox padding,
                which a model never trained on it would otherwise keep as tokens.
        """
        images = self.check_images(images)
        H, W = images.shape[-2:]
        p = self.backbone.patch_size
        pad_h, pad_w = -H % p, -W % p
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        self.check_inputs(cluster_ids, share_scores, drop_mask)
        out = self.backbone(images, self.out_indices, cluster_ids=cluster_ids, keep_bias=keep_bias, share_scores=share_scores,
                            drop_mask=drop_mask)
        return self.decode(images, out, (H, W))

    def decode(self, images: Tensor, out: BackboneOutput, size: tuple[int, int]) -> ClustViTOutput:
        """The head on the backbone's output: logits at the padded images' size, refined, cropped to `size`."""
        p = self.backbone.patch_size
        if out.reduced is not None:  # decoder_merge: the mask transformer on the merged sequence
            logits = self._merged_masks(out).transpose(1, 2).reshape(images.shape[0], -1, images.shape[-2] // p, images.shape[-1] // p)
        else:
            logits = self.head(out.features)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.refiner is not None:
            logits = self.refiner(images, logits)
        logits = logits[..., : size[0], : size[1]]
        return ClustViTOutput(logits, out.cluster_ids, out.cluster_logits, out.tokens, out.policy_logits)

    def _merged_masks(self, out: BackboneOutput) -> Tensor:
        """decoder_merge: per-patch mask scores [B, N, C] from the merged sequence [B, L, D].
        "scores": each patch takes the scores of its own token (kept) or its cluster's token;
        "regenerate": the decoded tokens are regenerated to every patch, then scored."""
        plan = out.plan
        mask = self.backbone.attention_mask(plan, out.reduced)  # [B, 1, 1, 1 + L]: the CLS column is not in the head
        valid = None if mask is None else mask[:, 0, 0, 1:]
        if self.decoder_regenerator is None:
            masks = self.head(tokens=out.reduced, valid=valid)  # [B, L, C]
            return masks.gather(1, reduced_position(plan)[..., None].expand(-1, -1, masks.shape[-1]))
        return self.head(tokens=out.reduced, valid=valid,
                         restore=lambda decoded: regenerate(decoded, out.x_ip, plan, self.decoder_regenerator))

    def check_inputs(self, cluster_ids: Tensor | None, share_scores: Tensor | None, drop_mask: Tensor | None) -> None:
        """The optional forward inputs fit this model (InputError naming the one that does not)."""
        if cluster_ids is not None and not self.clustering:
            raise InputError("cluster_ids given to a plain ViT (k=None): it has no Cluster module")
        if share_scores is not None and not self.config.sharing:
            raise InputError("share_scores given to a model without token sharing (cts_reduction is not set)")
        if drop_mask is not None and not self.clustering:
            raise InputError("drop_mask given to a model without a Cluster module (k is not set)")

    def check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise InputError(f"images must be a torch.Tensor [B, {self.backbone.in_chans}, H, W], got {type(images).__name__}")
        if images.dim() == 3:
            raise InputError(f"images has shape {tuple(images.shape)}: add the batch dimension, e.g. images[None]")
        if images.dim() != 4 or images.shape[1] != self.backbone.in_chans:
            raise InputError(
                f"images has shape {tuple(images.shape)}, expected [B, {self.backbone.in_chans}, H, W] (channels first, RGB)"
            )
        if not images.is_floating_point():
            raise InputError(f"images has dtype {images.dtype}: pass normalized float images (see clustvit_core.preprocess)")
        if min(images.shape[-2:]) < self.backbone.patch_size:
            raise InputError(f"images of {tuple(images.shape[-2:])} pixels: need at least {self.backbone.patch_size} per side")
        return images


def default_uper_indices(depth: int) -> tuple[int, ...]:
    """Four block indices ending at the last block, as in the reference configs (depth 12 -> 3, 5, 7, 11)."""
    for name, (_, d, _, _, indices) in BACKBONES.items():
        if d == depth:
            return indices
    if depth < 4:
        return tuple(range(depth))
    return tuple(sorted({round(depth * f) - 1 for f in (1 / 3, 1 / 2, 2 / 3)} | {depth - 1}))
