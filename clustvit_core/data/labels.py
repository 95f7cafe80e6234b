"""Reading image and label files: RGB images, and label images (single-channel class ids, or RGB colour
masks mapped through a palette)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from .sample import IGNORE_INDEX


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; a clear error naming the file if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_labels(path: str | Path, palette: list[list[int]] | None = None) -> np.ndarray:
    """A label image as uint8 [H, W] class ids (255 = ignore).

    Single-channel files hold class ids. Colour files are mapped through `palette` (RGB per class);
    colours not in the palette become 255.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"{path}: not a readable label image")
    if raw.ndim == 2:
        return raw.astype(np.uint8) if raw.max(initial=0) <= 255 else _too_many(path)
    if palette is None:
        raise InputError(f"{path}: colour label image but no palette to map colours to class ids")
    rgb = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB).astype(np.int32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    labels = np.full(code.shape, IGNORE_INDEX, np.uint8)
    for class_id, (r, g, b) in enumerate(palette):
        labels[code == ((r << 16) | (g << 8) | b)] = class_id
    return labels


def _too_many(path) -> np.ndarray:
    raise InputError(f"{path}: label values above 255 are not supported")
