"""Evaluate a ClustViT / ViT on a dataset split: accuracy, size-stratified recall, tokens and FLOPs.

    python -m clustvit_core.evaluate cwfid_k3_ip3 --weights default --split test --out out/eval --show 4

From Python (e.g. the trainer's periodic validation):

    from clustvit_core.evaluate import evaluate
    result = evaluate(model, dataset, max_images=50, progress=False)
    result.miou, result.per_class["crop"].iou, result.tokens.mean

Prediction (`clustvit_core.predictor.predict_batch`, the path the benchmark shares): each image is
resized to the model size, or, with `slide=True`, scaled to fit (4 * size, size) and run as
overlapping size x size windows (mmseg 'slide' mode); logits are resized (bilinear) to the label
resolution before the argmax (`predictor.labels_at`), so every metric is computed on the original
label map. The result is an `EvalResult`; `EvalResult.to_dict()` is what metrics.json holds
(fractions in 0..1, undefined values null). Reports and README tables: `clustvit_core.eval_report`.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .data import IGNORE_INDEX, build_dataset
from .data.base import check_label_values
from .devices import DEVICE_HELP, resolve_device
from .eval_report import format_comparison, format_markdown, format_summary, format_sweep, write_report
from .errors import ClustViTError, ConfigError, InputError, cli_errors
from .flops import count_flops
from .metrics import (
    SizeRecall, confusion_matrix, mean_iou, nan_to_none, per_class_accuracy, per_class_iou, pixel_accuracy,
)
from .palette import default_palette
from .predictor import Prediction, SlideModel, labels_at, model_device, predict_batch
from .preprocessing import preprocess
from .pseudo import pseudo_clusters
from .readme import check_section, command_line, replace_section
from .registry import build_model, parse_overrides, split_key_values
from .visualize import save_example_figure

BACKENDS = ("torch", "onnxruntime")  # --backend

HISTOGRAM_BINS = 16
PROG = "python -m clustvit_core.evaluate"


# ------------------------------------------------------------------------------------------- result

@dataclass
class ClassMetrics:
    iou: float | None
    accuracy: float | None
    gt_pixels: int
    pred_pixels: int


@dataclass
class InputMode:
    mode: str  # "resize" | "slide"
    size: int | list[int]  # network input side (or [h, w]); slide: the window side
    stride: int | None = None  # slide only
    scale: list[int] | None = None  # slide only: [h, w] the image is resized to (None: fit (4 * size, size))

    def describe(self) -> str:
        """'resize to 784x588' or 'slide, crop 392x392, stride 261[, on 588x784]' (README tables)."""
        if self.mode != "slide":
            return f"resize to {_size_text(self.size)}"
        on = f", on {_size_text(self.scale)}" if self.scale else ""
        return f"slide, crop {_size_text(self.size)}, stride {self.stride}{on}"


def _size_text(size) -> str:
    """'512x512' of a side, 'HxW' of [h, w]."""
    return f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"


@dataclass
class TokenStats:
    """Tokens per image after merging (`full_mean`: before merging; `kept_fraction` = sum tokens / sum full)."""

    mean: float
    std: float
    min: float
    max: float
    full_mean: float
    kept_fraction: float
    histogram: dict  # {"edges": [...], "counts": [...]}


@dataclass
class FlopStats:
    mean: float
    std: float
    images: int


@dataclass
class ImageRecord:
    name: str
    tokens: int
    tokens_full: int
    classes_present: int
    gflops: float | None = None


@dataclass
class EvalResult:
    """What `evaluate` returns; `to_dict()` is the metrics.json schema (same field names, nested)."""

    model: str | None
    dataset: str
    num_images: int
    num_classes: int
    class_names: list[str]
    input: InputMode
    keep_bias: float
    clustering: bool
    miou: float | None
    pixel_accuracy: float | None
    mean_class_accuracy: float | None
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]  # rows: ground truth, columns: prediction
    size_recall: dict  # metrics.SizeRecall.summary(): buckets, mean, objects, per_class, per_class_objects, excluded_classes
    tokens: TokenStats
    classes_per_image: list[dict]  # [{classes, images, tokens_mean, tokens_std}]
    gflops: FlopStats | None
    seconds: float
    figures: list[str] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    # set by the CLI
    split: str | None = None
    data_root: str | None = None
    weights: str | None = None
    device: str | None = None
    torch_threads: int | None = None

    def to_dict(self) -> dict:
        """JSON-able (NaN -> None)."""
        return nan_to_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        """Read back a metrics.json."""
        d = dict(data)
        d["input"] = InputMode(**d["input"])
        d["per_class"] = {k: ClassMetrics(**v) for k, v in d["per_class"].items()}
        d["tokens"] = TokenStats(**d["tokens"])
        d["gflops"] = FlopStats(**d["gflops"]) if d.get("gflops") else None
        d["images"] = [ImageRecord(**r) for r in d.get("images", [])]
        return cls(**d)


# ------------------------------------------------------------------------------------- data items

def _describe(dataset) -> str:
    name = getattr(dataset, "name", None)
    return str(name) if isinstance(name, str) else type(dataset).__name__


def read_item(dataset, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, labels, name) of dataset[index]: a `Sample` (image, labels, name) or a tuple
    (image, labels[, name]); unreadable or malformed items raise InputError naming the item."""
    try:
        item = dataset[index]
    except ClustViTError:
        raise
    except (OSError, cv2.error) as exc:
        raise InputError(f"{_describe(dataset)} item {index}: could not be read ({str(exc).strip().splitlines()[-1]})") from None
    if isinstance(item, (tuple, list)):
        image, labels = item[0], item[1]
        name = str(item[2]) if len(item) > 2 else f"{index:05d}"
    else:
        image, labels, name = item.image, item.labels, str(getattr(item, "name", f"{index:05d}"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"{_describe(dataset)} item {index} ({name}): image must be uint8 RGB [H, W, 3], got "
                         f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}")
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{_describe(dataset)} item {index} ({name}): labels must be integer class ids [H, W], got "
                         f"{getattr(labels, 'shape', None)} {getattr(labels, 'dtype', type(labels).__name__)}")
    return image, labels, name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"


# ----------------------------------------------------------------------------------------- evaluate

def evaluate(model, dataset, *, size: int | tuple[int, int] | None = None, max_images: int | None = None,
             batch_size: int = 1, slide: bool = False, stride: int | None = None,
             slide_scale: tuple[int, int] | None = None, keep_bias: float = 0.0, flops_images: int | None = 0,
             recall_exclude: Sequence[int] = (), show: int = 0, out_dir: str | Path | None = None,
             progress: bool = True, device: str | torch.device | None = None) -> EvalResult:
    """Evaluate `model` on `dataset`.

    Args:
        model: a ClustViT (its `config` gives size, patch size, normalization and class names).
            It runs on its own device, in eval mode; its training mode is restored afterwards.
        dataset: any map-style dataset (len, [i]) whose items are `Sample`s or (image, labels[, name])
            tuples: image uint8 [H, W, 3] RGB, labels integer [H, W] (255 = ignore), any resolution.
            `class_names` / `palette` / `num_classes` attributes are used when present.
        size: network input side or (h, w) (default: the model's training size); slide: the window side.
        max_images: evaluate only the first N images (None: all).
        batch_size: images per forward pass (resize mode; slide runs image by image).
        slide: mmseg slide inference instead of the plain resize; `stride` defaults to 2/3 of `size`;
            each image is first resized to `slide_scale` (h, w), default: to fit (4 * size, size).
        keep_bias: the model's runtime knob (> 0 keeps more tokens).
        flops_images: count FLOPs on the first N images (0: none, None or < 0: all).
        recall_exclude: class ids left out of the size-stratified recall (e.g. [0] for background).
        show: write this many example figures (Fig. 2 style) to `out_dir`.
        out_dir: folder for the figures (needed when show > 0).
        progress: show a progress bar.
        device: where the inputs go (default: the device of the model's parameters, which must be this one).
    """
    cfg = model.config
    num_classes = cfg.num_classes
    ds_classes = getattr(dataset, "num_classes", None)
    if ds_classes is not None and ds_classes != num_classes:
        raise ConfigError(f"dataset {_describe(dataset)} has {ds_classes} classes but the model predicts {num_classes}; "
                          f"use a model of this dataset or num_classes={ds_classes} with matching weights")
    class_names = list(getattr(dataset, "class_names", None) or cfg.class_names)
    palette = list(getattr(dataset, "palette", None) or cfg.palette)
    if len(palette) != num_classes:
        palette = default_palette(num_classes)
    net_size = cfg.data.check_size(size or cfg.data.input_size, "size")
    if slide and net_size[0] != net_size[1]:
        raise ConfigError(f"size={net_size}: slide inference takes square windows; pass one side")
    stride = int(stride or max(1, net_size[0] * 2 // 3)) if slide else None
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n <= 0:
        raise ConfigError(f"dataset {_describe(dataset)} has no images to evaluate")
    if show and out_dir is None:
        raise ConfigError("show > 0 needs out_dir, the folder for the figures")
    n_flops = n if flops_images is None or flops_images < 0 else min(int(flops_images), n)
    exclude = sorted({int(c) for c in recall_exclude})
    on = model_device(model)
    device = on if device is None else torch.device(device)
    if device.type != on.type or (device.index is not None and device.index != on.index):
        raise ConfigError(f"evaluate: device={device} but the model is on {on}; move it with model.to({str(device)!r})")

    conf = np.zeros((num_classes, num_classes), np.int64)
    size_recall = SizeRecall(num_classes, exclude)
    patch_area = model.config.patch_size ** 2  # logits pixels per patch token at the network input (slide: at its scale)
    records: list[ImageRecord] = []
    figures: list[str] = []
    was_training = model.training
    model.eval()
    start_time = time.perf_counter()
    step = 1 if slide else max(1, int(batch_size))
    try:
        bar = tqdm(total=n, desc="evaluate", unit="img", disable=not progress, leave=False)
        for start in range(0, n, step):
            items = [read_item(dataset, i) for i in range(start, min(n, start + step))]
            for _, labels, name in items:
                check_label_values(labels, num_classes, name)
            preds = predict_batch(model, [im for im, _, _ in items], size=net_size, keep_bias=keep_bias, slide=slide,
                                  stride=stride, slide_scale=slide_scale)
            for offset, ((image, labels, name), res) in enumerate(zip(items, preds)):
                index = start + offset
                pred = labels_at(res.logits[0], labels.shape)
                confusion_matrix(pred, labels, num_classes, out=conf)
                size_recall.update(pred, labels, res.logits.shape[-2] * res.logits.shape[-1] / patch_area)
                record = ImageRecord(name, res.tokens, res.patch_tokens, int(np.sum(np.unique(labels) != IGNORE_INDEX)))
                if index < n_flops:
                    counted_model = SlideModel(model, net_size, stride, num_classes, keep_bias) if slide else model
                    kwargs = {} if slide else {"keep_bias": keep_bias}
                    record.gflops = float(count_flops(counted_model, res.input, **kwargs)) / 1e9
                records.append(record)
                if index < show:
                    figures.append(str(_example_figure(out_dir, index, name, image, labels, pred, res, model, net_size,
                                                        keep_bias, palette, class_names)))
                bar.update(1)
        bar.close()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start_time
    inp = InputMode("slide" if slide else "resize", net_size[0] if net_size[0] == net_size[1] else list(net_size), stride,
                    [int(v) for v in slide_scale] if slide and slide_scale else None)
    return _summarize(conf, size_recall, records, class_names, inp, keep_bias, model, dataset, figures, seconds)


def _example_figure(out_dir, index, name, image, labels, pred, res: Prediction, model, size, keep_bias, palette,
                    class_names) -> Path:
    k = model.config.k
    pseudo_ids = predicted_ids = tokens = None
    if k is not None:
        at_input = cv2.resize(labels.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        pseudo_ids = pseudo_clusters(torch.from_numpy(at_input), k, patch=model.config.patch_size)
        predicted_ids, tokens = res.cluster_ids, res.tokens
        if predicted_ids is None:  # slide: show the clustering of the whole image at the model size
            with torch.inference_mode():
                x = preprocess(image, size, model.config.mean, model.config.std).to(res.input.device)
                out = model(x, keep_bias=keep_bias)
            predicted_ids, tokens = out.cluster_ids[0].cpu(), int(out.tokens[0])
    path = Path(out_dir) / f"example_{index:03d}.png"
    return save_example_figure(path, image, labels, pred, palette, pseudo_ids=pseudo_ids, predicted_ids=predicted_ids,
                               k=k, input_shape=tuple(size), class_names=class_names, title=f"{index}: {name}",
                               tokens=tokens, patch=model.config.patch_size)


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return (float(a.mean()), float(a.std())) if a.size else (math.nan, math.nan)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _summarize(conf, size_recall, records: list[ImageRecord], class_names, inp: InputMode, keep_bias, model, dataset,
               figures, seconds) -> EvalResult:
    iou, acc = per_class_iou(conf), per_class_accuracy(conf)
    tokens = np.array([r.tokens for r in records], dtype=np.float64)
    full = np.array([r.tokens_full for r in records], dtype=np.float64)
    classes = np.array([r.classes_present for r in records], dtype=np.int64)
    t_mean, t_std = _mean_std(tokens)
    edges = np.linspace(0.0, float(full.max()), HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(tokens, bins=edges)
    by_classes = []
    for c in sorted(set(classes.tolist())):
        m, s = _mean_std(tokens[classes == c])
        by_classes.append({"classes": int(c), "images": int(np.sum(classes == c)), "tokens_mean": m, "tokens_std": s})
    flops = [r.gflops for r in records if r.gflops is not None]
    g_mean, g_std = _mean_std(flops)
    return EvalResult(
        model=model.config.name,
        dataset=_describe(dataset),
        num_images=len(records),
        num_classes=len(class_names),
        class_names=list(class_names),
        input=inp,
        keep_bias=float(keep_bias),
        clustering=model.config.clustering,
        miou=_finite(mean_iou(conf)),
        pixel_accuracy=_finite(pixel_accuracy(conf)),
        mean_class_accuracy=float(np.nanmean(acc)) if np.isfinite(acc).any() else None,
        per_class={name: ClassMetrics(_finite(iou[i]), _finite(acc[i]), int(conf[i].sum()), int(conf[:, i].sum()))
                   for i, name in enumerate(class_names)},
        confusion_matrix=conf.tolist(),
        size_recall=nan_to_none(size_recall.summary(class_names)),
        tokens=TokenStats(t_mean, t_std, float(tokens.min()), float(tokens.max()), float(full.mean()),
                          float(tokens.sum() / full.sum()), {"edges": edges.tolist(), "counts": counts.tolist()}),
        classes_per_image=by_classes,
        gflops=FlopStats(g_mean, g_std, len(flops)) if flops else None,
        seconds=seconds,
        figures=figures,
        images=records,
    )


# --------------------------------------------------------------------------------------------- CLI

def _flops_count(text: str) -> int:
    if text == "all":
        return -1
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}") from None


def _class_ids(items: list[str], class_names: list[str]) -> list[int]:
    ids = []
    for item in items:
        if item in class_names:
            ids.append(class_names.index(item))
        elif item.isdigit() and int(item) < len(class_names):
            ids.append(int(item))
        else:
            raise ConfigError(f"--recall-exclude {item}: not a class name or id; classes: {', '.join(class_names)}")
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a registry model on a dataset split: mIoU, per-class IoU, pixel accuracy, confusion matrix, "
        "recall by object size (small < 5 %, medium 5-15 %, large 15-30 %, huge >= 30 % of the image; and in patch tokens "
        "at the network input: < 1, 1-4, 4-16, 16-64, >= 64), tokens per image "
        "(mean ± std, histogram, vs number of classes present) and GFLOPs per image. Writes metrics.json and "
        "metrics.md (also printed), token_histogram.png and tokens_vs_classes.png to --out; --show adds figures "
        "input | ground truth | prediction | pseudo-clusters | predicted clusters.",
        epilog="Examples:\n"
        f"  {PROG} cwfid_k3_ip3 --weights default                      # CWFID test split, 512x512\n"
        f"  {PROG} cwfid_k3_ip3 --weights run/best.safetensors --show 8 --out out/eval_cwfid\n"
        f"  {PROG} cwfid_vit --weights default --num-images 5 --flops-images all\n"
        f"  {PROG} ade20k_k3_ip3 --weights default --split val --slide --device cuda --batch 8\n"
        f"  {PROG} cwfid_k3_ip3 --weights default --keep-bias 1.0       # keep more tokens: slower\n"
        f"  {PROG} config/models/my_model.yaml img_size=384 --weights my.safetensors --data-root /data/cwfid\n"
        f"  {PROG} cwfid_k3_ip3 --weights work_dirs/cwfid_k3_ip3/checkpoints/iter_0004000.safetensors\n"
        "\n"
        "Which data: the model config's `dataset:` names it (--dataset overrides), --split picks train/val/test,\n"
        "--data-root its folder (default: the dataset's own, e.g. $CLUSTVIT_CWFID_ROOT).\n"
        "KEY=VALUE after the model name overrides model settings (as in train), e.g. num_classes=3 img_size=384.\n"
        "Which size: --size (default: the model's img_size; a multiple of its patch size). Logits are resized back to the label resolution, so\n"
        "metrics refer to the original label maps. --slide runs mmseg's sliding-window inference instead.\n"
        "Background: the size-stratified recall counts every class, as the ClustViT paper does; --recall-exclude\n"
        "soil (names or ids) leaves classes out. Undefined values (no object of a size, class absent) print as –\n"
        "and are null in metrics.json. Exit code 2 with a one-line message on bad input (missing weights,\n"
        "unreadable image files, unknown model or dataset).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL_NAME_OR_CONFIG",
                        help="registry name (e.g. cwfid_k3_ip3) or path to a model .yaml; several models (each with its "
                        "--weights) are evaluated alike and compared in one table (e.g. a ViT and its ClustViT)")
    parser.add_argument("--weights", required=True, nargs="+", metavar="W",
                        help="trained weights, one per model: a .safetensors path (weights or a training checkpoint), 'default' (the file the registry entry names, searched on "
                        "$CLUSTVIT_WEIGHTS, ./weights, ~/.cache/clustvit) or 'none' (random init, for smoke tests)")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the model config's `dataset:`)")
    parser.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default: the dataset's default location)")
    parser.add_argument("--split", default="test", help="dataset split: train, val or test (default test)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default out/eval/MODEL_SPLIT)")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="write example figures of the first N images (default 0)")
    parser.add_argument("--size", nargs="+", default=None, metavar="S",
                        help="network input side, or H W; multiples of the model's patch size (default: the model's img_size)")
    parser.add_argument("--slide", action="store_true",
                        help="sliding-window inference with S x S windows on the image scaled to fit (4S, S) (mmseg 'slide')")
    parser.add_argument("--slide-scale", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="with --slide: resize each image to H x W first (e.g. the training scale) instead")
    parser.add_argument("--stride", type=int, default=None, help="window step for --slide in pixels (default 2/3 of --size)")
    parser.add_argument("--keep-bias", type=float, nargs="+", default=[0.0], metavar="B",
                        help="added to the Cluster module's keep logit: > 0 keeps more tokens (default 0); several values "
                        "evaluate each (in out/.../keep_bias_B/) and print one sweep table: tokens, GFLOPs and mIoU per value")
    parser.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch, or onnxruntime with --weights FILE.onnx (python -m clustvit_core.export --onnx); "
                        "FLOPs are counted with torch only (default torch)")
    parser.add_argument("--providers", nargs="+", default=["cpu"], metavar="P",
                        help="onnxruntime providers in order of preference: cpu, cuda, tensorrt (default cpu)")
    parser.add_argument("--batch", type=int, default=1, metavar="B", help="images per forward pass (default 1; --slide runs one at a time)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N", help="evaluate only the first N images (default: all)")
    parser.add_argument("--flops-images", type=_flops_count, default=4, metavar="N",
                        help="count FLOPs on the first N images, or 'all' (default 4; 0 skips)")
    parser.add_argument("--recall-exclude", nargs="+", default=[], metavar="CLASS", help="classes (names or ids) left out of the size-stratified recall")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--update-readme", type=Path, default=None, metavar="README",
                        help="also write the table between '<!-- BEGIN benchmark:SECTION -->' and '<!-- END benchmark:SECTION -->' of this file")
    parser.add_argument("--readme-section", default="eval", metavar="SECTION", help="marker name for --update-readme (default eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="model config overrides, e.g. num_classes=3 img_size=384 (as in train); for every model")
    return parser


def load_onnx_model(name: str, weights: str | None, overrides: dict, providers, threads: int = 0):
    """The OnnxModel of `--backend onnxruntime`: `weights` is the .onnx file, whose stored config must carry
    the name `name` (so a result is never filed under the wrong model)."""
    from .onnx_runtime import OnnxModel

    if not weights or not str(weights).endswith(".onnx"):
        raise ConfigError(f"--backend onnxruntime needs --weights FILE.onnx (got {weights!r}); "
                          "write one with python -m clustvit_core.export WEIGHTS FILE.onnx")
    if overrides:
        raise ConfigError(f"--backend onnxruntime: the .onnx file fixes the model; drop {' '.join(overrides)}")
    model = OnnxModel(weights, providers, threads=threads)
    if Path(str(name)).stem != model.config.name:  # a registry name or a YAML path named like the model
        raise ConfigError(f"{weights} holds model {model.config.name!r}, not {name!r}; name the model it was exported from")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    args.recall_exclude, given = split_key_values(args.recall_exclude)
    args.models, given_models = split_key_values(args.models)
    args.weights, given_weights = split_key_values(args.weights)
    args.size, given_size = split_key_values(args.size) if args.size else (None, [])
    args.overrides = given + given_models + given_weights + given_size + args.overrides
    with cli_errors(PROG):
        if args.update_readme:  # before the measurement, not after it
            check_section(args.update_readme, args.readme_section)
        if args.batch < 1 or (args.num_images is not None and args.num_images < 1) or args.show < 0:
            raise ConfigError("--batch and --num-images must be >= 1, --show >= 0")
        if args.stride is not None and args.stride < 1:
            raise ConfigError(f"--stride {args.stride}: use a positive number of pixels")
        if args.size is not None:
            if len(args.size) > 2 or not all(v.isdigit() for v in args.size):
                raise ConfigError(f"--size {' '.join(args.size)}: give one side or H W, in pixels")
            args.size = int(args.size[0]) if len(args.size) == 1 else tuple(int(v) for v in args.size)
        if args.slide_scale is not None and (not args.slide or min(args.slide_scale) < 1):
            raise ConfigError("--slide-scale H W: positive sides, and only with --slide")
        if len(args.weights) != len(args.models):
            raise ConfigError(f"{len(args.models)} model(s) and {len(args.weights)} --weights: give one weights file per model")
        if len(args.models) > 1 and len(args.keep_bias) > 1:
            raise ConfigError("several models and several --keep-bias values: compare models at one keep_bias, or sweep one model")
        if args.threads:
            torch.set_num_threads(args.threads)
        overrides = parse_overrides(args.overrides)
        device = resolve_device(args.device, what="--device")
        results = []
        for name, weights_arg in zip(args.models, args.weights):
            results += _evaluate_model(args, argv, name, weights_arg, overrides, device)
        if len(results) > 1 and len(args.models) > 1:
            text = format_comparison(results)
        elif len(results) > 1:
            text = format_sweep(results)
        else:
            text = format_summary(results[0])
        if len(results) > 1 and not args.quiet:
            print(text)
        if args.update_readme:
            replace_section(args.update_readme, args.readme_section, f"`{command_line('clustvit_core.evaluate', argv)}`\n\n{text}")
    return 0


def _evaluate_model(args, argv, name: str, weights_arg: str, overrides: dict, device) -> list[EvalResult]:
    """main() for one model: every --keep-bias value; reports written; the results."""
    weights = None if weights_arg == "none" else weights_arg
    torch.manual_seed(0)  # --weights none: the same random model every run
    if args.backend == "onnxruntime":
        model = load_onnx_model(name, weights, overrides, args.providers, args.threads or 0)
        flops_images, device = 0, model.device
    else:
        model = build_model(name, weights=weights, **overrides).to(device)
        flops_images = args.flops_images
    if args.size is not None:
        model.config.data.check_size(args.size, "--size")
    if weights is None:
        print(f"{PROG}: note: --weights none evaluates a randomly initialized model", file=sys.stderr)
    dataset_name = args.dataset or model.config.dataset
    if not dataset_name:
        raise ConfigError(f"model {model.config.name!r} names no dataset (`dataset:` in its YAML); pass --dataset NAME")
    dataset = build_dataset(dataset_name, args.split, args.data_root)
    class_names = list(getattr(dataset, "class_names", None) or model.config.class_names)
    exclude = _class_ids(args.recall_exclude, class_names)
    base_dir = Path("out") / "eval" / f"{_safe(str(model.config.name))}_{_safe(args.split)}"
    if args.out:
        base_dir = args.out / base_dir.name if len(args.models) > 1 else args.out
    sweep = len(args.keep_bias) > 1
    results = []
    for keep_bias in args.keep_bias:
        out_dir = base_dir / f"keep_bias_{keep_bias:g}" if sweep else base_dir
        result = evaluate(model, dataset, size=args.size, max_images=args.num_images, batch_size=args.batch,
                          slide=args.slide, stride=args.stride, slide_scale=args.slide_scale, keep_bias=keep_bias,
                          flops_images=flops_images,
                          recall_exclude=exclude, show=args.show, out_dir=out_dir, progress=not args.quiet)
        result.dataset, result.split, result.data_root = dataset_name, args.split, args.data_root
        result.weights, result.device, result.torch_threads = str(weights_arg), str(device), torch.get_num_threads()
        if args.backend == "onnxruntime":
            result.device = f"onnxruntime ({', '.join(model.providers)})"
        write_report(result, out_dir)
        results.append(result)
        if not args.quiet and not sweep and len(args.models) == 1:
            print(format_markdown(result))
        print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}"
              + (f" and {len(result.figures)} figures" if result.figures else ""), file=sys.stderr)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
