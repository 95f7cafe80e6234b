"""numpy-facing inference: HWC uint8 RGB images in, class masks and cluster maps out.

The ROS node, the evaluator and the benchmark all prepare images through `preprocess`, so the
normalization a model was trained with is applied in one place.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .errors import InputError


def preprocess(images: np.ndarray | Sequence[np.ndarray], size: int | tuple[int, int], mean, std) -> Tensor:
    """RGB uint8 image(s) [H, W, 3] -> normalized float [B, 3, h, w] at the network size.

    Args:
        images: one [H, W, 3] array or a sequence of them (RGB channel order, 0-255).
        size: network input size, int (square) or (h, w).
        mean, std: per-channel RGB values on the 0-255 scale (the model config's `mean`/`std`).
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    h, w = (size, size) if isinstance(size, int) else size
    batch = []
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise InputError(f"image {i}: expected a uint8 RGB array [H, W, 3], got shape {shape} dtype {dtype}")
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        batch.append(image)
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std
