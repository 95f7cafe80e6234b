"""numpy-facing inference: HWC uint8 RGB images in, class masks and cluster maps out.

The ROS node, the evaluator and the benchmark all prepare images through `preprocess`, so the
normalization a model was trained with is applied in one place. `Segmenter` is the whole
single-image pipeline (load, preprocess, forward, labels at input resolution, token counts) that the
ROS node wraps; it knows nothing of ROS.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, InputError


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


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if torch sees a GPU, else cpu; 'cpu', 'cuda', 'cuda:N' as given (checked)."""
    device = str(device).strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but torch sees no CUDA device: use device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise ConfigError(f"device={device!r}: use auto, cpu, cuda or cuda:N")
    return dev


def labels_at(logits: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Class ids [H, W] (int64 numpy) from logits [C, h, w]: bilinear upsampling (half-pixel centres,
    as F.interpolate(align_corners=False)) to `size`, then argmax. On the CPU OpenCV does the resize
    (several times faster than torch at camera resolutions for few classes)."""
    H, W = size
    if logits.device.type == "cpu" and logits.shape[0] <= 512:
        hwc = np.ascontiguousarray(logits.float().permute(1, 2, 0).numpy())
        if hwc.shape[:2] != (H, W):
            hwc = cv2.resize(hwc, (W, H), interpolation=cv2.INTER_LINEAR)
        return hwc.reshape(H, W, -1).argmax(2)
    up = F.interpolate(logits[None].float(), size=(H, W), mode="bilinear", align_corners=False)
    return up[0].argmax(0).cpu().numpy()


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Segmentation:
    """One image's result from `Segmenter`.

    labels:        uint8 [H, W] class ids at input resolution (uint16 when the model has > 255 classes).
    cluster_ids:   int64 [h/16, w/16] cluster of each patch token on the network grid (0 = kept),
                   None for a plain ViT.
    class_pixels:  int64 [num_classes] pixels predicted as each class.
    patch_tokens:  tokens before merging; tokens: after merging (kept_tokens + clusters_used).
    network_size:  (h, w) of the network input.
    *_ms:          wall-clock times of the three stages (inference includes device synchronization).
    """

    labels: np.ndarray
    cluster_ids: np.ndarray | None
    class_pixels: np.ndarray
    patch_tokens: int
    tokens: int
    kept_tokens: int
    clusters_used: int
    network_size: tuple[int, int]
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


class Segmenter:
    """A registered model ready for single-image inference on numpy images (what the ROS node runs).

        seg = Segmenter("synthetic_agri_k3_ip3")           # registry weights, device auto
        result = seg(rgb_uint8_hwc, keep_bias=0.0)        # -> Segmentation

    Args:
        model: registry name, model YAML path or config dict (see `clustvit_core.list_models`).
        weights: checkpoint path, or None / "" / "default" for the file the registry entry names.
            A model without weights is an error (never silent random weights).
        device: auto | cpu | cuda | cuda:N.
        precision: fp32 | fp16 | bf16 (autocast; fp16 needs CUDA).
        input_size: network input side in pixels (multiple of 16); 0 = the model's training size.
        threads: torch CPU threads (0 = leave torch's default).
    """

    def __init__(self, model: str | dict, weights: str | None = None, *, device: str = "auto", precision: str = "fp32",
                 input_size: int = 0, threads: int = 0):
        from .registry import build_model

        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision=fp16 needs a CUDA device: use fp32 or bf16 on the CPU")
        if input_size and (input_size < 16 or input_size % 16):
            raise ConfigError(f"input_size={input_size}: must be a multiple of 16 (or 0 for the model's size)")
        if threads:
            torch.set_num_threads(int(threads))
        self.model = build_model(model, weights="default" if weights in (None, "", "default") else weights)
        self.model.to(self.device)
        cfg = self.model.config
        self.config = cfg
        self.name = cfg["name"]
        self.class_names = list(cfg["class_names"])
        self.palette = np.asarray(cfg["palette"], dtype=np.uint8)
        self.num_classes = self.model.num_classes
        self.k = cfg.get("k")
        self.precision = precision
        self.size = int(input_size) or int(cfg["img_size"])
        self.mean, self.std = cfg["mean"], cfg["std"]
        self.label_dtype = np.uint8 if self.num_classes <= 255 else np.uint16

    def warm_up(self) -> None:
        """One forward pass on a blank image, so the first real frame does not pay for lazy
        initialization (CUDA context, kernel selection, allocator)."""
        self(np.zeros((self.size, self.size, 3), np.uint8))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, keep_bias: float = 0.0) -> Segmentation:
        """Segment one RGB uint8 image [H, W, 3] (any size; resized to the network size and back)."""
        t0 = time.perf_counter()
        x = preprocess(image, self.size, self.mean, self.std).to(self.device, non_blocking=True)
        self._sync()
        t1 = time.perf_counter()
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.model(x, keep_bias=float(keep_bias))
        self._sync()
        t2 = time.perf_counter()
        H, W = image.shape[:2]
        labels = labels_at(out.logits[0], (H, W)).astype(self.label_dtype, copy=False)
        class_pixels = np.bincount(labels.ravel(), minlength=self.num_classes)[: self.num_classes]
        h, w = x.shape[-2:]
        patch_tokens = -(-h // 16) * -(-w // 16)
        tokens = int(out.tokens[0])
        if out.cluster_ids is None:
            cluster_ids, kept = None, patch_tokens
        else:
            cluster_ids = out.cluster_ids[0].cpu().numpy()
            kept = int((cluster_ids == 0).sum())
        t3 = time.perf_counter()
        return Segmentation(
            labels=labels, cluster_ids=cluster_ids, class_pixels=class_pixels, patch_tokens=patch_tokens,
            tokens=tokens, kept_tokens=kept, clusters_used=tokens - kept, network_size=(h, w),
            preprocess_ms=1e3 * (t1 - t0), inference_ms=1e3 * (t2 - t1), postprocess_ms=1e3 * (t3 - t2),
        )
