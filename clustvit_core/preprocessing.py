"""The ground floor of image preparation: RGB uint8 images -> normalized network input.

The data pipeline (evaluation transform), the predictor, the ROS node and the benchmark all prepare
images here, so the normalization a model was trained with is applied in one place. This module
imports nothing of the package above `errors`.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .errors import InputError


def rescale_shape(h: int, w: int, long_edge: float, short_edge: float) -> tuple[int, int]:
    """(new_h, new_w) of an h x w image scaled, keeping its aspect ratio, to fit long_edge x short_edge.

    mmcv's `rescale_size`: factor = min(long_edge / max(h, w), short_edge / min(h, w)), sides rounded
    to the nearest integer (at least 1).
    """
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def check_rgb(image, what: str = "image") -> np.ndarray:
    """`image` if it is a uint8 RGB array [H, W, 3], else a one-line InputError naming `what`."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"{what}: expected a uint8 RGB array [H, W, 3], got shape {shape} dtype {dtype}")
    return image


def normalize(batch: np.ndarray, mean, std) -> Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], (x - mean) / std per RGB channel (0-255 scale)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(images: np.ndarray | Sequence[np.ndarray], size: int | tuple[int, int], mean, std) -> Tensor:
    """RGB uint8 image(s) [H, W, 3] -> normalized float [B, 3, h, w] at the network size.

    Args:
        images: one [H, W, 3] array or a sequence of them (RGB channel order, 0-255).
        size: network input size, int (square) or (h, w); images of another size are resized
            (bilinear, OpenCV: the kernel the training pipeline uses).
        mean, std: per-channel RGB values on the 0-255 scale (the model config's `mean`/`std`).
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    h, w = (size, size) if isinstance(size, int) else size
    batch = []
    for i, image in enumerate(images):
        check_rgb(image, f"image {i}")
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        batch.append(image)
    return normalize(np.stack(batch), mean, std)


def letterbox(image: np.ndarray, size: tuple[int, int], mean) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 [H, W, 3] -> (uint8 [h, w, 3] = size, (h', w')): the image scaled to fit `size` keeping
    its aspect ratio (bilinear), at the top left, the rest filled with the `mean` colour, which
    normalizes to 0 (the uniform padding a ClustViT merges into one cluster). (h', w') is the image's part."""
    check_rgb(image)
    h, w = size
    H, W = image.shape[:2]
    scale = min(h / H, w / W)
    hh, ww = min(h, max(1, round(H * scale))), min(w, max(1, round(W * scale)))
    out = np.empty((h, w, 3), np.uint8)
    out[...] = np.clip(np.rint(np.asarray(mean, np.float64)), 0, 255).astype(np.uint8)
    out[:hh, :ww] = cv2.resize(image, (ww, hh), interpolation=cv2.INTER_LINEAR) if (hh, ww) != (H, W) else image
    return out, (hh, ww)

