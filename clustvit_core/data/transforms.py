"""Training and evaluation preprocessing, with mmsegmentation's semantics.

Training (`TrainTransform`) follows mmseg's standard semantic-segmentation pipeline
(RandomResize(scale=(4 * size, size), ratio_range=scale, keep_ratio=True) -> RandomCrop(size,
cat_max_ratio) -> RandomFlip(0.5) -> PhotoMetricDistortion -> normalize -> pad to size x size).
Evaluation (`EvalTransform`) is the plain resize that the ROS node and the benchmark use
(`clustvit_core.preprocess`); sliding-window inference lives with prediction (`clustvit_core.predictor`).

Why OpenCV and no augmentation library: mmseg itself resizes with cv2 (bilinear images, nearest
labels), and evaluation here does too, so training sees the same resampling kernel. The libraries
considered do not provide these semantics: albumentations (MIT) is unmaintained since July 2025
(its successor is AGPL), neither it nor torchvision.transforms.v2 has a `cat_max_ratio` crop, and
their colour jitters differ from mmseg's PhotoMetricDistortion (additive brightness, plain
multiplicative contrast, HSV-space saturation and hue), which is re-created here with cv2 in a few
lines. torchvision's random transforms also draw from torch's global generator, which the
bit-exact-resume requirement forbids.

Randomness: every random draw comes from `numpy.random.Generator`s built from the call's `seed`
(one stream for geometry, one for colour), so an output is a pure function of (inputs, seed): no
global RNG is read or changed, and threads, workers or the order of calls make no difference.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from ..preprocessing import preprocess, rescale_shape
from .base import parse_seed
from .sample import IGNORE_INDEX

CROP_TRIES = 10  # mmseg RandomCrop: re-draw the crop up to 10 times to satisfy cat_max_ratio
# mmseg PhotoMetricDistortion defaults
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # OpenCV hue units (0..179)


# ------------------------------------------------------------------------------------- helpers

def crop_box(labels: np.ndarray, size: int, rng: np.random.Generator, cat_max_ratio: float = 0.75,
             ignore_index: int = IGNORE_INDEX) -> tuple[int, int, int, int]:
    """A random (y0, y1, x0, x1) crop of at most size x size, as mmseg's RandomCrop chooses it.

    With cat_max_ratio < 1 the crop is re-drawn (up to CROP_TRIES times) until it holds at least
    two labelled classes and none covers cat_max_ratio or more of its labelled pixels (255 is not
    counted); if no try succeeds the last draw is used, as in mmseg.
    """
    h, w = labels.shape
    ch, cw = min(size, h), min(size, w)

    def draw():
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        return y0, y0 + ch, x0, x0 + cw

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(CROP_TRIES):
            y0, y1, x0, x1 = box
            counts = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=256)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """values * alpha + beta, clipped to 0..255 and truncated to uint8 (mmseg PhotoMetricDistortion.convert)."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image; each step applies with probability 0.5.

    Brightness (add U(-32, 32)); contrast (multiply by U(0.5, 1.5)), before or after the colour
    steps (coin flip); saturation (HSV S times U(0.5, 1.5)); hue (HSV H shifted by an integer in
    [-18, 18), modulo 180). Values are clipped to 0..255 after each step.
    """
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*CONTRAST_RANGE))
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*SATURATION_RANGE))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-HUE_DELTA, HUE_DELTA))) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*CONTRAST_RANGE))
    return image


def _check_pair(image, labels) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"TrainTransform: image must be a uint8 RGB array [H, W, 3], got shape "
                         f"{getattr(image, 'shape', None)} dtype {getattr(image, 'dtype', type(image).__name__)}")
    if not isinstance(labels, np.ndarray) or labels.shape != image.shape[:2]:
        raise InputError(f"TrainTransform: labels must be an array [H, W] = {list(image.shape[:2])} like the image, "
                         f"got shape {getattr(labels, 'shape', None)}")
    if labels.dtype != np.uint8:
        if not np.issubdtype(labels.dtype, np.integer) or labels.size and (labels.min() < 0 or labels.max() > 255):
            raise InputError(f"TrainTransform: labels must be uint8 class ids (255 = ignore), got dtype {labels.dtype}")
        labels = labels.astype(np.uint8)
    return labels


def _check_stats(mean, std, where: str) -> None:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"{where}: mean and std need 3 values each (RGB, 0-255 scale), std > 0; got {mean}, {std}")


# ------------------------------------------------------------------------------------ training

class TrainTransform:
    """mmseg-style training augmentation: (image, labels, seed) -> (normalized image, labels) tensors.

    Args:
        size: crop side in pixels; outputs are size x size.
        base_size: the short side the resize aims at before the random ratio (default `size`): a base
            larger than the crop trains on crops of a higher-resolution image (small objects stay visible).
        mean, std: RGB normalization on the 0-255 scale (the model config's `mean`/`std`).
        scale: (low, high) range of the random resize ratio; the image is scaled, keeping its aspect
            ratio, to fit (4 * base_size, base_size) * ratio (mmseg RandomResize scale=(2048, 512) for 512).
        cat_max_ratio: re-draw a crop (up to 10 times) in which one class covers >= this share of the
            labelled pixels; 1.0 disables the check.
        ignore_index: label of unlabelled pixels; also the label of padding.
        flip: horizontal flip with probability 0.5.
        photometric: mmseg PhotoMetricDistortion (brightness, contrast, saturation, hue).

    Steps: resize (image bilinear, labels nearest) -> crop -> flip -> photometric -> normalize ->
    pad at the bottom/right to size x size. As in mmseg, padding comes after normalization, so
    padded image pixels are 0 in normalized units (the mean colour) and padded labels are
    `ignore_index`.

    `__call__(image, labels, seed)`: image uint8 [H, W, 3] RGB, labels uint8 [H, W], seed int >= 0
    -> (float32 [3, size, size], int64 [size, size]). A pure function of its arguments (see the
    module docstring); geometry and colour use separate random streams, so turning `photometric`
    on or off leaves the labels of a seed unchanged.
    """

    def __init__(self, size: int, mean, std, scale=(0.5, 2.0), cat_max_ratio=0.75, ignore_index=IGNORE_INDEX,
                 flip=True, photometric=True, base_size: int | None = None):
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"TrainTransform: size must be a positive int, got {size!r}")
        if base_size is not None and (not isinstance(base_size, int) or base_size < 1):
            raise ConfigError(f"TrainTransform: base_size must be a positive int, got {base_size!r}")
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise ConfigError(f"TrainTransform: scale=(low, high) needs 0 < low <= high, got {tuple(scale)}")
        if not 0 < cat_max_ratio <= 1:
            raise ConfigError(f"TrainTransform: cat_max_ratio must lie in (0, 1], got {cat_max_ratio}")
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"TrainTransform: ignore_index must lie in 0..255, got {ignore_index}")
        _check_stats(mean, std, "TrainTransform")
        self.size = size
        self.base_size = base_size or size
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.scale = (lo, hi)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.flip = bool(flip)
        self.photometric = bool(photometric)

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, base_size={self.base_size}, scale={self.scale}, cat_max_ratio={self.cat_max_ratio}, "
                f"flip={self.flip}, photometric={self.photometric})")

    def __call__(self, image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[Tensor, Tensor]:
        labels = _check_pair(image, labels)
        geometry, colour = (np.random.default_rng(s) for s in np.random.SeedSequence(parse_seed(seed, 'TrainTransform')).spawn(2))

        # Random resize, keeping the aspect ratio (mmseg RandomResize + Resize(keep_ratio=True)).
        ratio = geometry.uniform(*self.scale)
        long_edge, short_edge = int(4 * self.base_size * ratio), int(self.base_size * ratio)
        h, w = rescale_shape(*labels.shape, long_edge, short_edge)
        if (h, w) != labels.shape:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)

        y0, y1, x0, x1 = crop_box(labels, self.size, geometry, self.cat_max_ratio, self.ignore_index)
        image, labels = image[y0:y1, x0:x1], labels[y0:y1, x0:x1]

        if self.flip and geometry.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        image, labels = np.ascontiguousarray(image), np.ascontiguousarray(labels)

        if self.photometric:
            image = photometric_distortion(image, colour)

        x = preprocess(image, image.shape[:2], self.mean, self.std)[0]  # the one normalization of the project
        y = torch.from_numpy(labels.astype(np.int64))
        pad_h, pad_w = self.size - x.shape[1], self.size - x.shape[2]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            y = F.pad(y, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return x, y


# ---------------------------------------------------------------------------------- evaluation

class EvalTransform:
    """Plain resize + normalization, exactly as the ROS node and the benchmark prepare images.

    `__call__(image uint8 [H, W, 3] RGB) -> float32 [3, h, w]` with (h, w) = size (int: square).
    """

    def __init__(self, size: int | tuple[int, int], mean, std):
        _check_stats(mean, std, "EvalTransform")
        self.size = size
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"

    def __call__(self, image: np.ndarray) -> Tensor:
        return preprocess(image, self.size, self.mean, self.std)[0]


__all__ = ["TrainTransform", "EvalTransform", "crop_box", "photometric_distortion"]
