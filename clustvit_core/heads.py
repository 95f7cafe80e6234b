"""Segmentation heads that read [B, D, h, w] token maps: Segmenter's mask transformer and UPerNet.

Attribute names follow mmsegmentation's `SegmenterMaskTransformerHead` and `UPerHead`
(`dec_proj`, `cls_emb`, `decoder_norm`, ...; `lateral_convs.N.conv/bn`, `psp_modules.N.1.conv/bn`, ...)
so converted checkpoints map one to one.
"""
from __future__ import annotations

from functools import partial

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


class SegmenterHead(nn.Module):
    """Mask transformer (Strudel et al. 2021): patch tokens and learned class embeddings pass through
    `num_layers` transformer layers; masks are scalar products of L2-normalized patch and class features."""

    def __init__(self, in_dim: int, num_classes: int, num_layers: int = 2, num_heads: int = 6, embed_dim: int | None = None):
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
        self.mask_norm = norm(num_classes)
        trunc_normal_(self.cls_emb, std=0.02)
        init_linear_layers(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: list whose last item is [B, D, h, w] -> [B, num_classes, h, w]."""
        x = features[-1]
        B, _, h, w = x.shape
        x = self.dec_proj(x.flatten(2).transpose(1, 2))
        x = torch.cat([x, self.cls_emb.expand(B, -1, -1)], dim=1)
        for layer in self.layers:
            x = layer(x)
        x = self.decoder_norm(x)
        patches = F.normalize(self.patch_proj(x[:, : -self.num_classes]), dim=-1)
        classes = F.normalize(self.classes_proj(x[:, -self.num_classes :]), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # [B, h*w, C]
        return masks.transpose(1, 2).reshape(B, self.num_classes, h, w)


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
