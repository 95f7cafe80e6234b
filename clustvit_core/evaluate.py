"""Evaluate a ClustViT / ViT on a dataset split: accuracy, size-stratified recall, tokens and FLOPs.

    python -m clustvit_core.evaluate cwfid_k3_ip3 --weights default --split test --out out/eval --show 4

From Python (e.g. the trainer's periodic validation):

    from clustvit_core.evaluate import evaluate
    result = evaluate(model, dataset, max_images=50, progress=False)
    result["miou"], result["per_class"]["crop"]["iou"], result["tokens"]["mean"]

Prediction: each image is resized to the model size (`EvalTransform`, the preprocessing of the
ROS node and the benchmark), or, with `slide=True`, scaled to fit (4 * size, size) and run as
overlapping size x size windows (mmseg 'slide' mode); logits are resized (bilinear) to the
label resolution before the argmax, so every metric is computed on the original label map.

The result (also metrics.json; fractions in 0..1, undefined values None):
    model, dataset, num_images, num_classes, class_names, clustering, keep_bias, seconds,
    input: {mode: "resize" | "slide", size, stride (slide only)},
    miou, pixel_accuracy, mean_class_accuracy,
    per_class: {class: {iou, accuracy, gt_pixels, pred_pixels}},
    confusion_matrix: [[int]] (rows: ground truth, columns: prediction),
    size_recall: {buckets: {small|medium|large|huge: [lo, hi|None]}, mean: {bucket: recall}, objects: {bucket: n},
                  per_class: {class: {bucket: recall}}, per_class_objects: {class: {bucket: n}}, excluded_classes},
    tokens: {mean, std, min, max, full_mean, kept_fraction, histogram: {edges, counts}},
    classes_per_image: [{classes, images, tokens_mean, tokens_std}],
    gflops: {mean, std, images} | None, figures: [paths],
    images: [{name, tokens, tokens_full, classes_present, gflops}];
the CLI adds split, data_root, weights, device, torch_threads.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import build_dataset
from .data.base import check_label_values
from .data.transforms import EvalTransform
from .predictor import SlideModel, slide_logits, slide_shape
from .errors import ClustViTError, ConfigError, InputError, cli_errors
from .flops import count_flops
from .metrics import (
    BUCKET_NAMES, IGNORE_INDEX, SizeRecall, confusion_matrix, mean_iou, nan_to_none, per_class_accuracy,
    per_class_iou, pixel_accuracy,
)
from .palette import default_palette
from .preprocess import preprocess
from .pseudo import pseudo_clusters
from .readme import command_line, replace_section
from .registry import build_model, parse_overrides

HISTOGRAM_BINS = 16
PROG = "python -m clustvit_core.evaluate"


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

@torch.inference_mode()
def _predict(model, images: list[np.ndarray], size: int, mean, std, slide: bool, stride: int, keep_bias: float,
             device) -> list[dict]:
    """Per image: logits at network resolution, tokens (+ unmerged count), cluster ids, network input."""
    results = []
    if not slide:
        x = torch.stack([EvalTransform(size, mean, std)(im) for im in images]).to(device)
        out = model(x, keep_bias=keep_bias)
        full = math.ceil(size / 16) ** 2
        for j in range(len(images)):
            results.append({
                "logits": out.logits[j : j + 1], "tokens": int(out.tokens[j]), "full": full, "input": x[j : j + 1],
                "cluster_ids": None if out.cluster_ids is None else out.cluster_ids[j].cpu(),
            })
        return results
    for image in images:
        h, w = slide_shape(*image.shape[:2], size)
        x = preprocess(image, (h, w), mean, std).to(device)
        windows: list = []
        logits = slide_logits(model, x, size, stride, model.num_classes, keep_bias=keep_bias, window_outputs=windows)
        tokens = sum(int(out.tokens[0]) for _, _, out in windows)
        full = sum(math.ceil(o.logits.shape[-2] / 16) * math.ceil(o.logits.shape[-1] / 16) for _, _, o in windows)
        results.append({"logits": logits, "tokens": tokens, "full": full, "input": x, "cluster_ids": None})
    return results


def evaluate(model, dataset, *, size: int | None = None, max_images: int | None = None, batch_size: int = 1,
             slide: bool = False, stride: int | None = None, keep_bias: float = 0.0, flops_images: int | None = 0,
             recall_exclude: Sequence[int] = (), show: int = 0, out_dir: str | Path | None = None,
             progress: bool = True, device: str | torch.device | None = None) -> dict:
    """Evaluate `model` on `dataset` and return a JSON-able dict of metrics (schema: the module
    docstring; undefined values are None).

    Args:
        model: a ClustViT from `build_model` (its `config` gives size, normalization and class names).
            It runs on its own device, in eval mode; its training mode is restored afterwards.
        dataset: any map-style dataset (len, [i]) whose items are `Sample`s or (image, labels[, name])
            tuples: image uint8 [H, W, 3] RGB, labels integer [H, W] (255 = ignore), any resolution.
            `class_names` / `palette` / `num_classes` attributes are used when present.
        size: network input size (default: the model's `img_size`).
        max_images: evaluate only the first N images (None: all).
        batch_size: images per forward pass (resize mode; slide runs image by image).
        slide: mmseg slide inference instead of the plain resize; `stride` defaults to 2/3 of `size`.
        keep_bias: the model's runtime knob (> 0 keeps more tokens).
        flops_images: count FLOPs on the first N images (0: none, None or < 0: all).
        recall_exclude: class ids left out of the size-stratified recall (e.g. [0] for background).
        show: write this many example figures (Fig. 2 style) to `out_dir`.
        out_dir: folder for the figures (needed when show > 0).
        progress: show a progress bar.
        device: where the inputs go (default: the device of the model's parameters, which must be this one).
    """
    cfg = getattr(model, "config", {}) or {}
    num_classes = model.num_classes
    ds_classes = getattr(dataset, "num_classes", None)
    if ds_classes is not None and ds_classes != num_classes:
        raise ConfigError(f"dataset {_describe(dataset)} has {ds_classes} classes but the model predicts {num_classes}; "
                          f"use a model of this dataset or --set num_classes={ds_classes} with matching weights")
    class_names = list(getattr(dataset, "class_names", None) or cfg.get("class_names") or [f"class_{i}" for i in range(num_classes)])
    palette = list(getattr(dataset, "palette", None) or cfg.get("palette") or [])
    if len(palette) != num_classes:
        palette = default_palette(num_classes)
    size = int(size or cfg.get("img_size") or 512)
    if size < 16:
        raise ConfigError(f"size={size}: the network input needs at least 16 pixels per side")
    stride = int(stride or max(1, size * 2 // 3))
    mean, std = cfg.get("mean", [127.5] * 3), cfg.get("std", [127.5] * 3)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n <= 0:
        raise ConfigError(f"dataset {_describe(dataset)} has no images to evaluate")
    if show and out_dir is None:
        raise ConfigError("show > 0 needs out_dir, the folder for the figures")
    n_flops = n if flops_images is None or flops_images < 0 else min(int(flops_images), n)
    exclude = sorted({int(c) for c in recall_exclude})
    k = getattr(getattr(model, "backbone", None), "k", None)
    try:
        model_device = next(model.parameters()).device
    except StopIteration:
        model_device = torch.device("cpu")
    device = model_device if device is None else torch.device(device)
    if device.type != model_device.type or (device.index is not None and device.index != model_device.index):
        raise ConfigError(f"evaluate: device={device} but the model is on {model_device}; move it with model.to({str(device)!r})")

    conf = np.zeros((num_classes, num_classes), np.int64)
    size_recall = SizeRecall(num_classes, exclude)
    per_image: list[dict] = []
    figures: list[str] = []
    was_training = model.training
    model.eval()
    start_time = time.perf_counter()
    try:
        bar = tqdm(total=n, desc="evaluate", unit="img", disable=not progress, leave=False)
        for start in range(0, n, 1 if slide else max(1, int(batch_size))):
            stop = min(n, start + (1 if slide else max(1, int(batch_size))))
            items = [read_item(dataset, i) for i in range(start, stop)]
            for _, labels, name in items:
                check_label_values(labels, num_classes, name)
            preds = _predict(model, [im for im, _, _ in items], size, mean, std, slide, stride, keep_bias, device)
            for offset, ((image, labels, name), res) in enumerate(zip(items, preds)):
                index = start + offset
                with torch.inference_mode():
                    logits = F.interpolate(res["logits"].float(), size=labels.shape, mode="bilinear", align_corners=False)
                    pred = logits.argmax(1)[0].cpu().numpy()
                confusion_matrix(pred, labels, num_classes, out=conf)
                size_recall.update(pred, labels)
                present = np.unique(labels)
                record = {"name": name, "tokens": res["tokens"], "tokens_full": res["full"],
                          "classes_present": int(np.sum(present != IGNORE_INDEX)), "gflops": None}
                if index < n_flops:
                    if slide:
                        counted = count_flops(SlideModel(model, size, stride, num_classes, keep_bias), res["input"])
                    else:
                        counted = count_flops(model, res["input"], keep_bias=keep_bias)
                    record["gflops"] = float(counted) / 1e9
                per_image.append(record)
                if index < show:
                    figures.append(str(_example_figure(out_dir, index, name, image, labels, pred, res, model, k, size,
                                                        mean, std, keep_bias, palette, class_names)))
                bar.update(1)
        bar.close()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start_time
    return nan_to_none(_summarize(conf, size_recall, per_image, class_names, size, slide, stride, keep_bias, model,
                                  dataset, figures, seconds))


def _example_figure(out_dir, index, name, image, labels, pred, res, model, k, size, mean, std, keep_bias, palette,
                    class_names) -> Path:
    from .visualize import save_example_figure

    pseudo_ids = predicted_ids = None
    if k is not None:
        at_input = cv2.resize(labels.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        pseudo_ids = pseudo_clusters(torch.from_numpy(at_input), k)
        predicted_ids = res["cluster_ids"]
        tokens = res["tokens"]
        if predicted_ids is None:  # slide: show the clustering of the whole image at the model size
            with torch.inference_mode():
                x = preprocess(image, size, mean, std).to(res["input"].device)
                out = model(x, keep_bias=keep_bias)
            predicted_ids, tokens = out.cluster_ids[0].cpu(), int(out.tokens[0])
    else:
        tokens = None
    title = f"{index}: {name}"
    path = Path(out_dir) / f"example_{index:03d}.png"
    return save_example_figure(path, image, labels, pred, palette, pseudo_ids=pseudo_ids, predicted_ids=predicted_ids,
                               k=k, input_shape=(size, size), class_names=class_names, title=title, tokens=tokens)


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return (float(a.mean()), float(a.std())) if a.size else (math.nan, math.nan)


def _summarize(conf, size_recall, per_image, class_names, size, slide, stride, keep_bias, model, dataset, figures,
               seconds) -> dict:
    iou, acc = per_class_iou(conf), per_class_accuracy(conf)
    tokens = np.array([r["tokens"] for r in per_image], dtype=np.float64)
    full = np.array([r["tokens_full"] for r in per_image], dtype=np.float64)
    classes = np.array([r["classes_present"] for r in per_image], dtype=np.int64)
    t_mean, t_std = _mean_std(tokens)
    edges = np.linspace(0.0, float(full.max()), HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(tokens, bins=edges)
    by_classes = []
    for c in sorted(set(classes.tolist())):
        m, s = _mean_std(tokens[classes == c])
        by_classes.append({"classes": int(c), "images": int(np.sum(classes == c)), "tokens_mean": m, "tokens_std": s})
    flops = [r["gflops"] for r in per_image if r["gflops"] is not None]
    g_mean, g_std = _mean_std(flops)
    cfg = getattr(model, "config", {}) or {}
    return {
        "model": cfg.get("name"),
        "dataset": _describe(dataset),
        "num_images": len(per_image),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input": {"mode": "slide" if slide else "resize", "size": size, "stride": stride if slide else None},
        "keep_bias": float(keep_bias),
        "clustering": bool(getattr(model, "clustering", False)),
        "miou": mean_iou(conf),
        "pixel_accuracy": pixel_accuracy(conf),
        "mean_class_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan,
        "per_class": {
            name: {"iou": float(iou[i]), "accuracy": float(acc[i]), "gt_pixels": int(conf[i].sum()),
                   "pred_pixels": int(conf[:, i].sum())}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": conf.tolist(),
        "size_recall": size_recall.summary(class_names),
        "tokens": {"mean": t_mean, "std": t_std, "min": float(tokens.min()), "max": float(tokens.max()),
                   "full_mean": float(full.mean()), "kept_fraction": float(tokens.sum() / full.sum()),
                   "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}},
        "classes_per_image": by_classes,
        "gflops": {"mean": g_mean, "std": g_std, "images": len(flops)} if flops else None,
        "seconds": seconds,
        "figures": figures,
        "images": per_image,
    }


# ------------------------------------------------------------------------------------------ report

def _fmt(value, digits: int = 1, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def format_summary(result: dict) -> str:
    """The headline and per-class tables of `format_markdown`, without headings (for a README section)."""
    report = format_markdown(result).split("\n## Size-stratified")[0]
    return "\n".join(line for line in report.splitlines() if not line.startswith("#")).strip()


def format_sweep(results: list[dict]) -> str:
    """One row per keep_bias value: tokens, kept share, GFLOPs, mIoU and per-class IoU."""
    names = results[0]["class_names"]
    first = results[0]
    inp = first["input"]
    lines = [f"{first['num_images']} images of {first.get('dataset')}"
             + (f" ({first['split']})" if first.get("split") else "")
             + f", resize to {inp['size']}x{inp['size']}" * (inp["mode"] == "resize"), "",
             "| keep_bias | tokens / image | kept | GFLOPs / image | mIoU | " + " | ".join(names) + " |",
             "|---" * (5 + len(names)) + "|"]
    for r in results:
        tok = r["tokens"]
        gflops = "–" if r["gflops"] is None else f"{r['gflops']['mean']:.2f}"
        per_class = " | ".join(_fmt(r["per_class"][n]["iou"]) for n in names)
        lines.append(f"| {r['keep_bias']:g} | {tok['mean']:.0f} ± {tok['std']:.0f} (of {tok['full_mean']:.0f}) | "
                     f"{_fmt(tok['kept_fraction'])} % | {gflops} | {_fmt(r['miou'])} | {per_class} |")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """The human-readable report (metrics.md) of an `evaluate` result."""
    names = result["class_names"]
    inp = result["input"]
    mode = f"slide, crop {inp['size']}, stride {inp['stride']}" if inp["mode"] == "slide" else f"resize to {inp['size']}x{inp['size']}"
    lines = [f"# Evaluation: {result.get('model') or 'model'} on {result.get('dataset')}"
             + (f" ({result['split']})" if result.get("split") else ""), ""]
    if result.get("weights"):
        lines.append(f"weights: `{result['weights']}`  ")
    lines += [f"{result['num_images']} images, {mode}, keep_bias {result['keep_bias']:g}", ""]
    tok = result["tokens"]
    g = result["gflops"]
    lines += ["| mIoU | pixel acc. | mean class acc. | tokens / image | kept | GFLOPs / image |", "|---|---|---|---|---|---|",
              f"| {_fmt(result['miou'])} | {_fmt(result['pixel_accuracy'])} | {_fmt(result['mean_class_accuracy'])} | "
              f"{tok['mean']:.0f} ± {tok['std']:.0f} (of {tok['full_mean']:.0f}) | {_fmt(tok['kept_fraction'])} % | "
              + (f"{g['mean']:.2f} ± {g['std']:.2f} ({g['images']} images)" if g else "–") + " |", ""]
    lines += ["## Per class", "", "| class | IoU | acc. | GT pixels | predicted pixels |", "|---|---|---|---|---|"]
    for name in names:
        pc = result["per_class"][name]
        lines.append(f"| {name} | {_fmt(pc['iou'])} | {_fmt(pc['accuracy'])} | {pc['gt_pixels']} | {pc['pred_pixels']} |")
    sr = result["size_recall"]
    bounds = [f"{b} ({_bound(sr['buckets'][b])})" for b in BUCKET_NAMES]
    lines += ["", "## Size-stratified recall (%)", "",
              "Objects: 8-connected ground-truth components per class, by area / image area; recall = share of an "
              "object's pixels predicted as its class; – = no object of that size."
              + (f" Excluded classes: {', '.join(sr['excluded_classes'])}." if sr["excluded_classes"] else ""), "",
              "| | " + " | ".join(bounds) + " |", "|---|" + "---|" * len(BUCKET_NAMES),
              "| **all classes** | " + " | ".join(f"{_fmt(sr['mean'][b])} (n={sr['objects'][b]})" for b in BUCKET_NAMES) + " |"]
    for name, per in sr["per_class"].items():
        n_obj = sr["per_class_objects"][name]
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(per[b])} (n={n_obj[b]})" for b in BUCKET_NAMES) + " |")
    lines += ["", "## Tokens vs classes per image", "", "| GT classes present | images | tokens |", "|---|---|---|"]
    for row in result["classes_per_image"]:
        lines.append(f"| {row['classes']} | {row['images']} | {row['tokens_mean']:.0f} ± {row['tokens_std']:.0f} |")
    hist = tok["histogram"]
    lines += ["", "## Token histogram", "", "| tokens | images |", "|---|---|"]
    for lo, hi, c in zip(hist["edges"][:-1], hist["edges"][1:], hist["counts"]):
        lines.append(f"| {lo:.0f}–{hi:.0f} | {c} |")
    lines += ["", "## Confusion matrix (pixels; rows: ground truth, columns: prediction)", "",
              "| GT \\ pred | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _bound(pair) -> str:
    lo, hi = pair
    return f">= {100 * lo:g} %" if hi is None else f"{100 * lo:g}–{100 * hi:g} %"


def write_report(result: dict, out_dir: str | Path) -> list[Path]:
    """metrics.json, metrics.md, token_histogram.png and tokens_vs_classes.png in `out_dir`."""
    from .visualize import save_token_histogram, save_tokens_vs_classes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metrics.json", out / "metrics.md"]
    paths[0].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    paths[1].write_text(format_markdown(result))
    tokens = [r["tokens"] for r in result["images"]]
    full = int(round(result["tokens"]["full_mean"]))
    title = f"{result.get('model') or 'model'}: tokens per image"
    paths.append(save_token_histogram(out / "token_histogram.png", tokens, full, title=title))
    paths.append(save_tokens_vs_classes(out / "tokens_vs_classes.png", tokens, [r["classes_present"] for r in result["images"]], full))
    return paths


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
        "recall by object size (small < 5 %, medium 5-15 %, large 15-30 %, huge >= 30 % of the image), tokens per image "
        "(mean ± std, histogram, vs number of classes present) and GFLOPs per image. Writes metrics.json and "
        "metrics.md (also printed), token_histogram.png and tokens_vs_classes.png to --out; --show adds figures "
        "input | ground truth | prediction | pseudo-clusters | predicted clusters.",
        epilog="Examples:\n"
        f"  {PROG} cwfid_k3_ip3 --weights default                      # CWFID test split, 512x512\n"
        f"  {PROG} cwfid_k3_ip3 --weights run/best.safetensors --show 8 --out out/eval_cwfid\n"
        f"  {PROG} cwfid_vit --weights default --num-images 5 --flops-images all\n"
        f"  {PROG} ade20k_k3_ip3 --weights default --split val --slide --device cuda --batch 8\n"
        f"  {PROG} cwfid_k3_ip3 --weights default --keep-bias 1.0       # keep more tokens: slower\n"
        f"  {PROG} config/models/my_model.yaml --weights my.safetensors --data-root /data/cwfid --set img_size=384\n"
        "\n"
        "Which data: the model config's `dataset:` names it (--dataset overrides), --split picks train/val/test,\n"
        "--data-root its folder (default: the dataset's own, e.g. $CLUSTVIT_CWFID_ROOT).\n"
        "Which size: --size (default: the model's img_size). Logits are resized back to the label resolution, so\n"
        "metrics refer to the original label maps. --slide runs mmseg's sliding-window inference instead.\n"
        "Background: the size-stratified recall counts every class, as the ClustViT paper does; --recall-exclude\n"
        "soil (names or ids) leaves classes out. Undefined values (no object of a size, class absent) print as –\n"
        "and are null in metrics.json. Exit code 2 with a one-line message on bad input (missing weights,\n"
        "unreadable image files, unknown model or dataset).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL_NAME_OR_CONFIG", help="registry name (e.g. cwfid_k3_ip3) or path to a model .yaml")
    parser.add_argument("--weights", required=True, metavar="W",
                        help="trained weights: a .safetensors path, 'default' (the file the registry entry names, searched on "
                        "$CLUSTVIT_WEIGHTS, ./weights, ~/.cache/clustvit) or 'none' (random init, for smoke tests)")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the model config's `dataset:`)")
    parser.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default: the dataset's default location)")
    parser.add_argument("--split", default="test", help="dataset split: train, val or test (default test)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default out/eval/MODEL_SPLIT)")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="write example figures of the first N images (default 0)")
    parser.add_argument("--size", type=int, default=None, metavar="S", help="network input size, a multiple of 16 (default: the model's img_size)")
    parser.add_argument("--slide", action="store_true", help="sliding-window inference on the image scaled to fit (4S, S) (mmseg 'slide')")
    parser.add_argument("--stride", type=int, default=None, help="window step for --slide in pixels (default 2/3 of --size)")
    parser.add_argument("--keep-bias", type=float, nargs="+", default=[0.0], metavar="B",
                        help="added to the Cluster module's keep logit: > 0 keeps more tokens (default 0); several values "
                        "evaluate each (in out/.../keep_bias_B/) and print one sweep table: tokens, GFLOPs and mIoU per value")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
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
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="model config overrides, e.g. --set num_classes=3 img_size=384")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli_errors(PROG):
        if args.size is not None and (args.size < 16 or args.size % 16):
            raise ConfigError(f"--size {args.size}: use a positive multiple of 16")
        if args.batch < 1 or (args.num_images is not None and args.num_images < 1) or args.show < 0:
            raise ConfigError("--batch and --num-images must be >= 1, --show >= 0")
        if args.stride is not None and args.stride < 1:
            raise ConfigError(f"--stride {args.stride}: use a positive number of pixels")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
        if args.threads:
            torch.set_num_threads(args.threads)
        overrides = parse_overrides(args.overrides)
        weights = None if args.weights == "none" else args.weights
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ConfigError(f"--device {args.device}: not a device name; use cpu, cuda or cuda:N") from None
        torch.manual_seed(0)  # --weights none: the same random model every run
        model = build_model(args.model, weights=weights, **overrides).to(device)
        if weights is None:
            print(f"{PROG}: note: --weights none evaluates a randomly initialized model", file=sys.stderr)
        dataset_name = args.dataset or model.config.get("dataset")
        if not dataset_name:
            raise ConfigError(f"model {model.config.get('name')!r} names no dataset (`dataset:` in its YAML); pass --dataset NAME")
        dataset = build_dataset(dataset_name, args.split, args.data_root)
        class_names = list(getattr(dataset, "class_names", None) or model.config["class_names"])
        exclude = _class_ids(args.recall_exclude, class_names)
        base_dir = args.out or Path("out") / "eval" / f"{_safe(str(model.config.get('name')))}_{_safe(args.split)}"
        sweep = len(args.keep_bias) > 1
        results = []
        for keep_bias in args.keep_bias:
            out_dir = base_dir / f"keep_bias_{keep_bias:g}" if sweep else base_dir
            result = evaluate(model, dataset, size=args.size, max_images=args.num_images, batch_size=args.batch,
                              slide=args.slide, stride=args.stride, keep_bias=keep_bias, flops_images=args.flops_images,
                              recall_exclude=exclude, show=args.show, out_dir=out_dir, progress=not args.quiet)
            result.update({"dataset": dataset_name, "split": args.split, "data_root": args.data_root,
                           "weights": str(args.weights), "device": str(device), "torch_threads": torch.get_num_threads()})
            write_report(result, out_dir)
            results.append(result)
            if not args.quiet and not sweep:
                print(format_markdown(result))
            print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}"
                  + (f" and {len(result['figures'])} figures" if result["figures"] else ""), file=sys.stderr)
        text = format_sweep(results) if sweep else format_summary(results[0])
        if sweep and not args.quiet:
            print(text)
        if args.update_readme:
            replace_section(args.update_readme, args.readme_section, f"`{command_line('clustvit_core.evaluate', argv)}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
