"""numpy-facing inference: HWC uint8 RGB images in, class masks and cluster maps out.

The ROS node, the evaluator and the benchmark all prepare images through `preprocess`, so the
normalization a model was trained with is applied in one place. `Segmenter` is the whole
image pipeline (load, preprocess, forward, labels at input resolution, token counts) that the ROS node
wraps, for one image or a batch (one camera or several); it knows nothing of ROS.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RESIZE_MODES

BACKENDS = ("auto", "torch", "onnxruntime")  # Segmenter(backend=...)
from .devices import autocast_dtype, resolve_device
from .errors import ConfigError, InputError
from .preprocessing import letterbox, preprocess, rescale_shape
from .registry import build_model


def model_device(model) -> torch.device:
    """Where a model's inputs go: the device of its parameters (an `OnnxModel` takes CPU tensors)."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _upsampled(logits: Tensor, size: tuple[int, int]) -> np.ndarray | Tensor:
    """Logits [C, h, w] bilinearly upsampled (half-pixel centres, as F.interpolate(align_corners=False)) to
    `size`: float32 numpy [H, W, C] on the CPU (OpenCV: several times faster than torch at camera
    resolutions for few classes), a torch [C, H, W] tensor elsewhere."""
    H, W = size
    if logits.device.type == "cpu" and logits.shape[0] <= 512:
        hwc = np.ascontiguousarray(logits.float().permute(1, 2, 0).numpy())
        if hwc.shape[:2] != (H, W):
            hwc = cv2.resize(hwc, (W, H), interpolation=cv2.INTER_LINEAR)
        return hwc.reshape(H, W, -1)
    return F.interpolate(logits[None].float(), size=(H, W), mode="bilinear", align_corners=False)[0]


def labels_at(logits: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Class ids [H, W] (int64 numpy) from logits [C, h, w]: bilinear upsampling to `size`, then argmax."""
    up = _upsampled(logits, size)
    return up.argmax(2) if isinstance(up, np.ndarray) else up.argmax(0).cpu().numpy()


def labels_and_confidence_at(logits: Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class ids [H, W] int64, confidence [H, W] uint8): the argmax of the upsampled logits and its softmax
    probability x 255 (rounded), e.g. for a ROS confidence image."""
    up = _upsampled(logits, size)
    if isinstance(up, np.ndarray):
        top = up.max(2, keepdims=True)
        probability = 1.0 / np.exp(up - top).sum(2)
        return up.argmax(2), np.rint(probability * 255).astype(np.uint8)
    probability, labels = up.softmax(0).max(0)
    return labels.cpu().numpy(), (probability * 255).round().to(torch.uint8).cpu().numpy()


def slide_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Input shape for slide inference: the image scaled to fit (4 * size, size), keeping its aspect
    ratio (mmseg's test-time Resize(scale=(2048, 512), keep_ratio=True) for size 512)."""
    return rescale_shape(h, w, 4 * size, size)


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"slide_logits: {name} must be a positive int or (h, w), got {value!r}")
    return pair


def slide_logits(model: nn.Module, image_tensor: Tensor, crop: int, stride: int, num_classes: int, *,
                 keep_bias: float = 0.0, window_outputs: list | None = None) -> Tensor:
    """mmseg 'slide' inference: class logits of a large image as the average over overlapping windows.

    Windows of crop x crop start every `stride` pixels; the last row/column of windows is moved
    back to end at the image border; each pixel's logits are the mean over the windows covering it
    (mmseg averages logits, not probabilities). Images smaller than `crop` run as one window.

    Args:
        model: a ClustViT (called as model(window, keep_bias=...) -> output with `.logits`).
        image_tensor: normalized float [B, 3, H, W] (usually B = 1).
        crop, stride: window side and step in pixels (int, or (h, w)).
        num_classes: channels of the returned logits.
        keep_bias: passed to the model.
        window_outputs: if a list, each window's (y0, x0, model output) is appended (token counts etc.).
    Returns:
        float [B, num_classes, H, W].
    """
    (ch, cw), (sh, sw) = _pair(crop, "crop"), _pair(stride, "stride")
    B, _, H, W = image_tensor.shape
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    logits = image_tensor.new_zeros((B, num_classes, H, W))
    count = image_tensor.new_zeros((1, 1, H, W))
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, H), min(c * sw + cw, W)
            y0, x0 = max(y1 - ch, 0), max(x1 - cw, 0)
            out = model(image_tensor[:, :, y0:y1, x0:x1], keep_bias=keep_bias)
            if out.logits.shape[1] != num_classes:
                raise InputError(f"slide_logits: the model gives {out.logits.shape[1]} classes, num_classes={num_classes}")
            logits[:, :, y0:y1, x0:x1] += out.logits
            count[:, :, y0:y1, x0:x1] += 1
            if window_outputs is not None:
                window_outputs.append((y0, x0, out))
    return logits / count


class SlideModel(nn.Module):
    """`model` wrapped so that calling it runs `slide_logits` (e.g. to count the FLOPs of slide inference)."""

    def __init__(self, model: nn.Module, crop, stride, num_classes: int, keep_bias: float = 0.0):
        super().__init__()
        self.model, self.crop, self.stride, self.num_classes, self.keep_bias = model, crop, stride, num_classes, keep_bias

    def forward(self, images: Tensor) -> Tensor:
        return slide_logits(self.model, images, self.crop, self.stride, self.num_classes, keep_bias=self.keep_bias)


@dataclass
class Prediction:
    """One image's forward pass, as `predict_batch` returns it.

    logits:      float [1, C, h, w] at network resolution (slide: at the scaled image's resolution).
    tokens:      tokens after merging, summed over windows for slide inference.
    patch_tokens: tokens before merging (likewise summed).
    input:       the normalized network input [1, 3, h, w] (on the model's device).
    cluster_ids: long [h/p, w/p] on the CPU (p = patch size), None for a plain ViT and for slide inference.
    """

    logits: Tensor
    tokens: int
    patch_tokens: int
    input: Tensor
    cluster_ids: Tensor | None


@torch.inference_mode()
def predict_batch(model: nn.Module, images: Sequence[np.ndarray], *, size: int | tuple[int, int] | None = None,
                  keep_bias: float = 0.0, slide: bool = False, stride: int | None = None,
                  slide_scale: tuple[int, int] | None = None) -> list[Prediction]:
    """The batch prediction path shared by the evaluator and the benchmark: RGB uint8 images -> `Prediction`s.

    Resize mode (default): every image resized to `size` (default the model's training size) and run as
    one batch. Slide mode: each image resized to `slide_scale` (h, w), default scaled to fit (4 * size, size),
    and run as overlapping size x size windows (mmseg 'slide'; `stride` default 2/3 of size). Class ids at
    any resolution: `labels_at`.
    """
    data = model.config.data
    h, w = data.check_size(size or data.input_size, "size")
    device = model_device(model)
    if not slide:
        x = preprocess(list(images), (h, w), data.mean, data.std).to(device)
        out = model(x, keep_bias=keep_bias)
        full = data.num_tokens((h, w))
        return [Prediction(out.logits[j : j + 1], int(out.tokens[j]), full, x[j : j + 1],
                           None if out.cluster_ids is None else out.cluster_ids[j].cpu()) for j in range(len(images))]
    if h != w:
        raise ConfigError(f"size={size}: slide inference takes square windows; give one side")
    stride = int(stride or max(1, h * 2 // 3))
    results = []
    for image in images:
        shape = tuple(slide_scale) if slide_scale else slide_shape(*image.shape[:2], h)
        x = preprocess(image, shape, data.mean, data.std).to(device)
        windows: list = []
        logits = slide_logits(model, x, h, stride, model.num_classes, keep_bias=keep_bias, window_outputs=windows)
        tokens = sum(int(out.tokens[0]) for _, _, out in windows)
        full = sum(data.num_tokens(o.logits.shape[-2:]) for _, _, o in windows)
        results.append(Prediction(logits, tokens, full, x, None))
    return results


def padding_patches(contents: Sequence[tuple[int, int]], size: tuple[int, int], patch: int) -> Tensor:
    """[B, h, w] bool: the patches of a letterboxed network input that hold only padding (the image's part of
    each input is its top-left `contents[b]` = (h', w') pixels): a ClustViT leaves them out of its sequence."""
    h, w = size[0] // patch, size[1] // patch
    rows = torch.arange(h)[:, None] * patch
    cols = torch.arange(w)[None, :] * patch
    return torch.stack([(rows >= ch) | (cols >= cw) for ch, cw in contents])


@dataclass
class Segmentation:
    """One image's result from `Segmenter`.

    labels:        uint8 [H, W] class ids at input resolution (uint16 when the model has > 255 classes).
    confidence:    uint8 [H, W], the winning class's softmax probability x 255, or None when not asked for.
    cluster_ids:   int64 [h/p, w/p] cluster of each patch token on the network grid (p = patch size; 0 = kept,
                   -1 = letterbox padding left out of the sequence), None for a plain ViT.
    class_pixels:  int64 [num_classes] pixels predicted as each class.
    patch_tokens:  tokens before merging; tokens: after merging (kept_tokens + clusters_used).
    network_size:  (h, w) of the network input.
    content_size:  (h, w) of the part of the network input that holds the image (= network_size when
                   stretched; smaller on one side with letterbox, the rest is padding).
    *_ms:          wall-clock times of the three stages (inference includes device synchronization).
    """

    labels: np.ndarray
    confidence: np.ndarray | None
    cluster_ids: np.ndarray | None
    class_pixels: np.ndarray
    patch_tokens: int
    tokens: int
    kept_tokens: int
    clusters_used: int
    network_size: tuple[int, int]
    content_size: tuple[int, int]
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


class Segmenter:
    """A registered model ready for inference on numpy images (what the ROS node runs).

        seg = Segmenter("synthetic_agri_k3_ip3")           # registry weights, device auto
        result = seg(rgb_uint8_hwc, keep_bias=0.0)        # -> Segmentation
        results = seg.segment_batch([front, rear])        # one forward pass -> [Segmentation, Segmentation]

    Args:
        model: registry name, model YAML path or config dict (see `clustvit_core.list_models`).
        weights: checkpoint path, or None / "" / "default" for the file the registry entry names.
            A model without weights is an error (never silent random weights).
        device: auto | cpu | cuda | cuda:N.
        precision: fp32 | fp16 | bf16 (autocast; fp16 needs CUDA).
        input_size: network input side in pixels (a multiple of the model's patch size); 0 = the model's training size.
        threads: torch CPU threads (0 = leave torch's default).
        resize_mode: "stretch" (resize to the network size; aspect ratio lost) or "letterbox" (scale to fit,
            keep the aspect ratio, pad with the mean colour; predictions cropped back to the image).
        backend: "torch", "onnxruntime" (the model, or weights, is an .onnx file from
            `python -m clustvit_core.export --onnx`) or "auto" (onnxruntime for an .onnx file).
        providers: onnxruntime providers in order of preference: cpu, cuda, tensorrt (fp16 with
            precision="fp16"; TensorRT engines cached in `engine_cache`).
        cuda_graphs: backend torch on a CUDA device: replay the model from CUDA graphs
            (`clustvit_core.cuda_graphs`; recorded per input batch size and reduced length on first use).
    """

    def __init__(self, model: str | dict, weights: str | None = None, *, device: str = "auto", precision: str = "fp32",
                 input_size: int = 0, threads: int = 0, resize_mode: str = "stretch", backend: str = "auto",
                 providers: Sequence[str] = ("cpu",), engine_cache: str | None = None, cuda_graphs: bool = False):
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode={resize_mode!r}: use one of {', '.join(RESIZE_MODES)}")
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r}: use one of {', '.join(BACKENDS)}")
        self.resize_mode = resize_mode
        onnx_file = next((str(f) for f in (model, weights) if isinstance(f, str) and f.endswith(".onnx")), None)
        self.backend = ("onnxruntime" if onnx_file else "torch") if backend == "auto" else backend
        if self.backend == "onnxruntime":
            from .onnx_runtime import OnnxModel

            if onnx_file is None:
                raise ConfigError(f"backend onnxruntime runs an .onnx file: give it as the model (or weights); "
                                  f"write one with python -m clustvit_core.export WEIGHTS FILE.onnx")
            if precision == "bf16" or (precision == "fp16" and "tensorrt" not in providers):
                raise ConfigError(f"precision={precision} with backend onnxruntime: ONNX Runtime runs the exported fp32 "
                                  "graph (fp16 only as TensorRT engines, providers tensorrt); use precision fp32")
            self.device = torch.device("cpu")  # the session's inputs and outputs live on the host
            self.autocast_dtype = None
            self.model = OnnxModel(onnx_file, providers, fp16=precision == "fp16", cache_dir=engine_cache,
                                   threads=threads)
            if input_size and self.model.size != self.model.config.data.check_size(int(input_size), "input_size"):
                raise ConfigError(f"input_size={input_size}: {onnx_file} was exported for "
                                  f"{self.model.size[1]}x{self.model.size[0]}; export it again with --size")
        else:
            if onnx_file is not None:
                raise ConfigError(f"{onnx_file}: an .onnx model runs with backend onnxruntime, not {backend}")
            self.device = resolve_device(device)
            self.autocast_dtype = autocast_dtype(precision, self.device)
            if threads:
                torch.set_num_threads(int(threads))
            self.model = build_model(model, weights="default" if weights in (None, "", "default") else weights)
            self.model.to(self.device)
        self.runner = self.model  # what a batch goes through (a GraphedModel with cuda_graphs)
        if cuda_graphs:
            if self.backend != "torch" or self.device.type != "cuda":
                raise ConfigError(f"cuda_graphs=true needs backend torch on a CUDA device (got backend {self.backend}, "
                                  f"device {self.device}); set cuda_graphs false, or device cuda")
            from .cuda_graphs import GraphedModel

            self.runner = GraphedModel(self.model.eval(), precision=precision)
            self.autocast_dtype = None  # the graphs apply the precision themselves
        self.cuda_graphs = bool(cuda_graphs)
        cfg = self.model.config
        self.config = cfg
        self.data = cfg.data
        self.name = cfg.name
        self.class_names = list(cfg.class_names)
        self.palette = np.asarray(cfg.palette, dtype=np.uint8)
        self.num_classes = cfg.num_classes
        self.k = cfg.k
        self.precision = precision
        self.size = self.data.check_size(int(input_size), "input_size") if input_size else self.data.input_size
        self.mean, self.std = cfg.mean, cfg.std
        self.label_dtype = np.uint8 if self.num_classes <= 255 else np.uint16

    def warm_up(self) -> None:
        """One forward pass on a blank image, so the first real frame does not pay for lazy
        initialization (CUDA context, kernel selection, allocator)."""
        self(np.zeros((*self.size, 3), np.uint8))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, image: np.ndarray, keep_bias: float = 0.0, confidence: bool = False) -> Segmentation:
        """Segment one RGB uint8 image [H, W, 3] (any size; resized to the network size and back);
        `confidence=True` also returns the per-pixel confidence image."""
        return self.segment_batch([image], keep_bias=keep_bias, confidence=confidence)[0]

    @torch.inference_mode()
    def segment_batch(self, images: Sequence[np.ndarray], keep_bias: float = 0.0,
                      confidence: bool = False) -> list[Segmentation]:
        """Segment RGB uint8 images [H, W, 3] (each of any size) in one forward pass: each is resized (or
        letterboxed) to the network size, so they stack; each keeps its own tokens, and its labels come back
        at its own resolution. One `Segmentation` per image, in order; `preprocess_ms` and `inference_ms`
        are the whole batch's (shared), `postprocess_ms` each image's own."""
        if not len(images):
            return []
        t0 = time.perf_counter()
        shapes = [image.shape[:2] for image in images]
        if self.resize_mode == "letterbox":
            boxed = [letterbox(image, self.size, self.mean) for image in images]
            inputs, contents = [b[0] for b in boxed], [b[1] for b in boxed]
        else:
            inputs, contents = list(images), [self.size] * len(images)
        x = preprocess(inputs, self.size, self.mean, self.std).to(self.device, non_blocking=True)
        self._sync()
        t1 = time.perf_counter()
        dtype = self.autocast_dtype
        kwargs = {}
        if self.resize_mode == "letterbox" and self.backend == "torch" and self.model.clustering:
            kwargs["drop_mask"] = padding_patches(contents, self.size, self.data.patch_size).to(self.device)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.runner(x, keep_bias=float(keep_bias), **kwargs)
        self._sync()
        t2 = time.perf_counter()
        network, times = tuple(x.shape[-2:]), (1e3 * (t1 - t0), 1e3 * (t2 - t1))
        return [self._result(out, j, shapes[j], contents[j], network, confidence, *times) for j in range(len(images))]

    def _result(self, out, j: int, shape, content, network, confidence: bool, preprocess_ms: float,
                inference_ms: float) -> Segmentation:
        """Image `j` of a batch's model output as a Segmentation at its input resolution `shape` (H, W)."""
        t0 = time.perf_counter()
        logits = out.logits[j, :, : content[0], : content[1]]  # letterbox: the image's part only
        if confidence:
            labels, conf = labels_and_confidence_at(logits, shape)
        else:
            labels, conf = labels_at(logits, shape), None
        labels = labels.astype(self.label_dtype, copy=False)
        class_pixels = np.bincount(labels.ravel(), minlength=self.num_classes)[: self.num_classes]
        patch_tokens = self.data.num_tokens(network)
        tokens = int(out.tokens[j])
        if out.cluster_ids is None:
            cluster_ids, kept = None, patch_tokens
        else:
            cluster_ids = out.cluster_ids[j].cpu().numpy()
            kept = int((cluster_ids == 0).sum())
        return Segmentation(
            labels=labels, confidence=conf, cluster_ids=cluster_ids, class_pixels=class_pixels, patch_tokens=patch_tokens,
            tokens=tokens, kept_tokens=kept, clusters_used=tokens - kept, network_size=network, content_size=tuple(content),
            preprocess_ms=preprocess_ms, inference_ms=inference_ms, postprocess_ms=1e3 * (time.perf_counter() - t0),
        )
