"""Segmentation heads that read [B, D, h, w] token maps: Segmenter's mask transformer and UPerNet; and the
DetailRefiner, which sharpens their upsampled class scores with the input image's own pixels.

Attribute names follow mmsegmentation's `SegmenterMaskTransformerHead` and `UPerHead`
(`dec_proj`, `cls_emb`, `decoder_norm`, ...; `lateral_convs.N.conv/bn`, `psp_modules.N.1.conv/bn`, ...)
so converted checkpoints map one to one.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def init_linear_layers(module: nn.Module) -> None:
    """ViT initialization of every Linear inside `module`: truncated normal (std 0.02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


MASK_CONFIDENCE = 0.99  # the probability a fresh Segmenter head's logits can give one class (see mask_norm_scale)
MMSEG_MASK_EPS = 1e-5  # mmseg's mask_norm eps: every converted checkpoint needs it
FEW_CLASS_MASK_EPS = 1.0  # the few-class variant's mask_norm eps (SegmenterHead's mask_eps)


def mask_norm_scale(num_classes: int, eps: float = MMSEG_MASK_EPS, confidence: float = MASK_CONFIDENCE) -> float:
    """Initial `mask_norm.weight`: the smallest scale >= 1 at which the mask LayerNorm (epsilon `eps`) lets
    a pixel whose patch feature points at one class's feature give that class probability `confidence`.

    Such a pixel's C cosine scores are 1 and -1/(C-1) (class features spread evenly), variance
    1/(C-1); the LayerNorm turns them into w * (score - mean) / sqrt(1/(C-1) + eps), a margin of
    w * C/(C-1) / sqrt(1/(C-1) + eps) between that class and the rest, and
    p = 1 / (1 + (C-1) * exp(-margin)). With mmseg's eps and w = 1 that is the most any pixel can get:
    0.81 for C = 3, below the share of the majority class in most few-class data (soil: 93 % of CWFID
    pixels), so the loss never stops pushing every pixel towards it. C = 3 gives 2.49 (eps 1e-5) and
    4.32 (eps 1); from C = 80 on (eps 1e-5) it is 1, mmseg's init (ADE20K's 150 classes: p = 0.9993).
    """
    if num_classes < 2:
        return 1.0  # one class: the LayerNorm output is 0 whatever the weight
    c = num_classes
    margin = math.log((c - 1) * confidence / (1 - confidence))
    return max(1.0, margin * math.sqrt(1 / (c - 1) + eps) * (c - 1) / c)


class SegmenterHead(nn.Module):
    """Mask transformer (Strudel et al. 2021): patch tokens and learned class embeddings pass through
    `num_layers` transformer layers; masks are scalar products of L2-normalized patch and class features,
    normalized over the classes by `mask_norm`.

    With the default `mask_eps` the forward is mmsegmentation's `SegmenterMaskTransformerHead` (converted
    checkpoints need it); only the initialization of a fresh head differs (`init_weights`; converted or
    trained weights replace it). `mask_eps=FEW_CLASS_MASK_EPS` is the few-class variant: `mask_norm`,
    a LayerNorm over the C class scores of a pixel, scales them to unit variance whatever they are, so
    with few classes every pixel gets equally confident logits (3 classes: one angle per pixel on a
    circle of radius sqrt(3) * weight) and close scores get a gain of 1 / their spread. An eps as large
    as the scores' variance can get (cosines: at most 1) makes it a cosine classifier with a learned
    per-class temperature: confidence follows the scores and the gain stays bounded.
    """

    def __init__(self, in_dim: int, num_classes: int, num_layers: int = 2, num_heads: int = 6,
                 embed_dim: int | None = None, mask_eps: float = MMSEG_MASK_EPS):
        super().__init__()
        embed_dim = embed_dim or in_dim
        self.num_classes = num_classes
        norm = partial(nn.LayerNorm, eps=1e-5)
        self.layers = nn.ModuleList(Block(embed_dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(num_layers))
        self.dec_proj = nn.Linear(in_dim, embed_dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, embed_dim))
        self.patch_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.classes_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.decoder_norm = norm(embed_dim)
        self.mask_norm = nn.LayerNorm(num_classes, eps=mask_eps)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialization of a fresh head; converted or trained weights replace all of it.

        mmseg's `init_weights` draws every Linear and `cls_emb` with std 0.02 and sets `mask_norm.weight`
        to 1. Trained with AdamW on few, imbalanced classes (3-class CWFID: 93 % soil) that head predicts
        the majority class everywhere, for three reasons, each fixed here:
        - `dec_proj` (std 0.02): AdamW moves every weight by ~lr per step, 5 % of that std at lr 1e-3,
          and the first steps all push every pixel the same way (towards the class prior), so they add
          one vector to all patch tokens; every later normalization is per token, so the differences
          between pixels shrink (on DINOv2 features: from 0.31 to 0.03 of the mean token in 5 steps).
          Std 1/sqrt(in_dim) keeps the input's scale.
        - `cls_emb` (std 0.02, 20-40x smaller than the patch tokens) leaves the class tokens nearly
          identical: a pixel's class scores differ by ~0.002, about the mask LayerNorm's sqrt(eps), so
          the LayerNorm's output, i.e. the predicted class, follows noise at a gain of several hundred.
          Std 1 keeps the classes apart (scores differ by ~0.04).
        - `mask_norm.weight` 1 bounds the logits (`mask_norm_scale`): with 3 classes no pixel can get
          more than p = 0.81, below the majority class's share, so the push towards the prior never stops.
        """
        init_linear_layers(self)
        trunc_normal_(self.dec_proj.weight, std=self.dec_proj.in_features ** -0.5)
        trunc_normal_(self.cls_emb, std=1.0, a=-2.0, b=2.0)
        nn.init.constant_(self.mask_norm.weight, mask_norm_scale(self.num_classes, self.mask_norm.eps))
        nn.init.zeros_(self.mask_norm.bias)

    def forward(self, features: list[Tensor] | None = None, *, tokens: Tensor | None = None,
                valid: Tensor | None = None, restore: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Maps: `features`, a list whose last item is [B, D, h, w] -> [B, num_classes, h, w].

        Sequences (a ClustViT with decoder_merge): `tokens` [B, L, D], any token sequence (`valid` [B, L]:
        bool, False on padding, keeps padded tokens out of the attention; or float, added to the attention
        logits of each key: -inf on padding, log(cluster size) for proportional attention) -> mask scores
        [B, L, num_classes];
        with `restore` (decoded patch tokens [B, L, E] -> [B, N, E], e.g. a regeneration to the full grid)
        the scores of the N restored tokens [B, N, num_classes]. Called through the module either way, so
        that FLOP counts attribute the work to the head."""
        if tokens is not None:
            if restore is None:
                return self.forward_tokens(tokens, valid)
            decoded = self.decode(tokens, valid)
            c = self.num_classes
            return self.masks(torch.cat([restore(decoded[:, :-c]), decoded[:, -c:]], dim=1))
        x = features[-1]
        B, _, h, w = x.shape
        masks = self.forward_tokens(x.flatten(2).transpose(1, 2))  # [B, h*w, C]
        return masks.transpose(1, 2).reshape(B, self.num_classes, h, w)

    def forward_tokens(self, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        """Mask scores of any token sequence: tokens [B, L, D] -> [B, L, num_classes] (`valid` as in forward)."""
        return self.masks(self.decode(tokens, valid))

    def decode(self, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        """The mask transformer: tokens [B, L, D] -> [B, L + num_classes, E] (patch tokens, then the class
        tokens), before `decoder_norm`. `valid` as in `forward_tokens`."""
        B = tokens.shape[0]
        x = self.dec_proj(tokens)
        x = torch.cat([x, self.cls_emb.expand(B, -1, -1)], dim=1)
        mask = None
        if valid is not None:
            classes = valid.new_ones(B, self.num_classes) if valid.dtype == torch.bool else valid.new_zeros(B, self.num_classes)
            mask = torch.cat([valid, classes], dim=1)[:, None, None, :]
        for layer in self.layers:
            x = layer(x) if mask is None else layer(x, attn_mask=mask)
        return x

    def masks(self, x: Tensor) -> Tensor:
        """Decoded tokens [B, L + num_classes, E] (as `decode` returns them) -> mask scores [B, L, num_classes]."""
        x = self.decoder_norm(x)
        patches = F.normalize(self.patch_proj(x[:, : -self.num_classes]), dim=-1)
        classes = F.normalize(self.classes_proj(x[:, -self.num_classes :]), dim=-1)
        return self.mask_norm(patches @ classes.transpose(1, 2))


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU, named like mmcv's ConvModule (`conv`, `bn`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def _resize(x: Tensor, size) -> Tensor:
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """UPerNet (Xiao et al. 2018): pyramid pooling on the last map, FPN over all maps (all at stride 16 here)."""

    def __init__(self, in_dims: list[int], num_classes: int, channels: int = 512, pool_scales=(1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_dims[-1], channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvBNReLU(in_dims[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_dims[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_dims[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_dims) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: len(in_dims) maps [B, D_i, h, w] -> [B, num_classes, h, w]."""
        top = features[-1]
        pooled = [top] + [_resize(m(top), top.shape[-2:]) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.bottleneck(torch.cat(pooled, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        outs = [_resize(o, outs[0].shape[-2:]) for o in outs]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class DetailRefiner(nn.Module):
    """Pixel-level refinement of patch-level class scores: a small convolution stack reads the normalized
    image and the head's bilinearly upsampled logits and adds a correction to the logits.

    A head scores 14x14 or 16x16 patches; a leaf narrower than a patch seldom wins its patch, and bilinear
    upsampling of patch scores cannot draw it (scripts/measure_patch_ceiling.py: perfect patch scores give weed
    IoU 0 on the synthetic scenes at 224x224, perfect pixel scores 0.89). The refiner sees every input
    pixel's colour next to its patch's scores, so it can move a leaf's edge inside a patch. The last
    convolution starts at zero: an untrained refiner returns the head's logits unchanged, so a trained model
    keeps working when one is added (`init_from`). About 5.5 k multiply-adds per pixel at width 16 (0.55
    GFLOPs at 224x224, 5 at 784x588; about 8 ms at 224x224 on two CPU threads).

        images [B, 3, H, W] (normalized), logits [B, C, H, W] -> logits + correction [B, C, H, W]
    """

    def __init__(self, num_classes: int, channels: int = 16, in_chans: int = 3):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans + num_classes, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.convs[-1].weight)

    def forward(self, images: Tensor, logits: Tensor) -> Tensor:
        return logits + self.convs(torch.cat([images.to(logits.dtype), logits], dim=1))
