"""Segmentation metrics as small pure functions (numpy; torch tensors are accepted and moved to numpy).

Conventions: label maps hold class ids 0..C-1 and IGNORE_INDEX (255) for unlabelled pixels, which
no metric counts. A confusion matrix is int64 [C, C] with rows = ground truth, columns = prediction.
Undefined values (a class absent from both the ground truth and the prediction, an empty size
bucket) are NaN in arrays and None in summaries; means skip them.

Size-stratified recall (ClustViT paper): objects are the 8-connected components of each class in
the ground truth, bucketed by their area relative to the whole image (all H x W pixels, labelled or
not): small < 5 %, medium 5-15 %, large 15-30 %, huge >= 30 % (lower bounds inclusive). An object's
recall is the fraction of its pixels predicted as its class. Like the paper, every class counts,
background classes (soil, water) included, so a large background region is a "huge" object;
`exclude` drops classes (e.g. the background) from the objects.

The same objects by their size in patch tokens (area fraction x the patch tokens of the image at the
network input), where the paper's buckets put nearly every plant of a field image into "small": under one
token, 1-4, 4-16, 16-64 and >= 64 tokens (PATCH_BUCKETS). An object smaller than a token shares its patch
with another class, which a merging model must keep as a token to see it at all.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from .data.sample import IGNORE_INDEX
from .errors import InputError

# name, lower bound (inclusive), upper bound (exclusive) of an object's area / image area
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 0.05),
    ("medium", 0.05, 0.15),
    ("large", 0.15, 0.30),
    ("huge", 0.30, math.inf),
)
BUCKET_NAMES = tuple(name for name, _, _ in SIZE_BUCKETS)
# name, lower bound (inclusive), upper bound (exclusive) of an object's area in patch tokens at the network input
PATCH_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("< 1", 0.0, 1.0),
    ("1-4", 1.0, 4.0),
    ("4-16", 4.0, 16.0),
    ("16-64", 16.0, 64.0),
    (">= 64", 64.0, math.inf),
)
PATCH_BUCKET_NAMES = tuple(name for name, _, _ in PATCH_BUCKETS)


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


# ------------------------------------------------------------------------------- confusion matrix

def confusion_matrix(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Pixel counts [C, C] (rows: ground truth, columns: prediction) of one prediction.

    Args:
        pred: predicted class ids [H, W] (any integer dtype, values 0..C-1).
        target: ground-truth ids [H, W]; pixels equal to `ignore_index` are skipped.
        num_classes: C.
        out: if given, an int64 [C, C] array the counts are added to (accumulation), and returned.
    """
    pred, target = _numpy(pred), _numpy(target)
    if pred.shape != target.shape:
        raise InputError(f"confusion_matrix: prediction {pred.shape} and labels {target.shape} differ in shape")
    valid = target != ignore_index
    t, p = target[valid].astype(np.int64), pred[valid].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise InputError(f"labels hold class id {int(t.max())} but there are {num_classes} classes (and {ignore_index} = ignore)")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise InputError(f"prediction holds class id {int(p.max())} outside 0..{num_classes - 1}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    if out is None:
        return counts.astype(np.int64)
    out += counts
    return out


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class = TP / (TP + FP + FN); NaN for classes absent from both ground truth and prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean of the defined per-class IoUs (NaN classes excluded); NaN if none is defined."""
    iou = per_class_iou(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan


def per_class_accuracy(conf: np.ndarray) -> np.ndarray:
    """Recall per class = TP / ground-truth pixels of the class; NaN for classes absent from the ground truth."""
    conf = np.asarray(conf, dtype=np.float64)
    gt = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gt > 0, np.diag(conf) / gt, np.nan)


def pixel_accuracy(conf: np.ndarray) -> float:
    """Correct labelled pixels / labelled pixels (mmseg's aAcc); NaN without labelled pixels."""
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum()
    return float(np.trace(conf) / total) if total > 0 else math.nan


# --------------------------------------------------------------------------- size-stratified recall

def size_bucket(area_fraction: float, buckets=SIZE_BUCKETS) -> str:
    """Bucket name of an object covering `area_fraction` (0..1) of its image (see SIZE_BUCKETS), or of one
    `area_fraction` patch tokens large with buckets=PATCH_BUCKETS."""
    for name, lo, hi in buckets:
        if lo <= area_fraction < hi:
            return name
    raise ValueError(f"size_bucket: object size {area_fraction} is not in [0, inf)")


@dataclass(frozen=True)
class ObjectRecall:
    """One ground-truth object (8-connected component of one class)."""

    class_id: int
    pixels: int
    area_fraction: float  # pixels / (H * W)
    recall: float  # share of its pixels predicted as class_id
    bucket: str
    patches: float | None = None  # area in patch tokens at the network input (None: not given)
    patch_bucket: str | None = None  # its PATCH_BUCKETS name


def object_recalls(pred, target, ignore_index: int = IGNORE_INDEX, exclude: Iterable[int] = (),
                   patch_tokens: float | None = None) -> list[ObjectRecall]:
    """Every ground-truth object of one image with its recall (see the module docstring).

    Args:
        pred: predicted class ids [H, W].
        target: ground-truth ids [H, W] (`ignore_index` pixels belong to no object).
        exclude: class ids that are not treated as objects.
        patch_tokens: the image's patch tokens at the network input (e.g. 56 x 42 at 784x588 with 14-px
            patches); gives each object its size in tokens and PATCH_BUCKETS bucket.
    """
    pred, target = _numpy(pred), _numpy(target)
    if pred.shape != target.shape:
        raise InputError(f"object_recalls: prediction {pred.shape} and labels {target.shape} differ in shape")
    area = target.size
    skip = set(int(c) for c in exclude) | {ignore_index}
    out = []
    for cls in np.unique(target):
        cls = int(cls)
        if cls in skip:
            continue
        mask = (target == cls).astype(np.uint8)
        n, components = cv2.connectedComponents(mask, connectivity=8)
        pixels = np.bincount(components.ravel(), minlength=n)
        hits = np.bincount(components.ravel(), weights=(pred == cls).ravel(), minlength=n)
        for comp in range(1, n):  # 0 = not this class
            frac = float(pixels[comp]) / area
            patches = None if patch_tokens is None else frac * patch_tokens
            out.append(ObjectRecall(cls, int(pixels[comp]), frac, float(hits[comp] / pixels[comp]), size_bucket(frac),
                                    patches, None if patches is None else size_bucket(patches, PATCH_BUCKETS)))
    return out


@dataclass
class SizeRecall:
    """Accumulates object recalls over images; `summary` gives mean recall per size bucket (over all
    objects in it) and per class and bucket (over that class's objects), None where no object fell.

        acc = SizeRecall(num_classes=3, exclude=[0])
        for pred, labels in ...: acc.update(pred, labels)
        acc.summary(class_names)
    """

    num_classes: int
    exclude: Sequence[int] = ()
    ignore_index: int = IGNORE_INDEX
    # recalls[class_id][bucket] -> list of object recalls
    recalls: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    # by_patches[patch bucket] -> object recalls (images given patch_tokens only)
    by_patches: dict[str, list[float]] = field(default_factory=lambda: {b: [] for b in PATCH_BUCKET_NAMES})
    sized_images: int = 0  # images given patch_tokens

    def update(self, pred, target, patch_tokens: float | None = None) -> list[ObjectRecall]:
        """Add the objects of one image (`patch_tokens`: see object_recalls); returns them."""
        objects = object_recalls(pred, target, self.ignore_index, self.exclude, patch_tokens)
        for obj in objects:
            self.recalls.setdefault(obj.class_id, {b: [] for b in BUCKET_NAMES})[obj.bucket].append(obj.recall)
            if obj.patch_bucket is not None:
                self.by_patches[obj.patch_bucket].append(obj.recall)
        self.sized_images += patch_tokens is not None
        return objects

    def bucket_means(self) -> dict[str, float | None]:
        """{bucket: mean recall over all objects in it, or None}."""
        return {b: _mean([r for per in self.recalls.values() for r in per[b]]) for b in BUCKET_NAMES}

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-able: {"buckets": {name: [lo, hi]}, "mean": {bucket: recall|None}, "objects": {bucket: n},
        "per_class": {class: {bucket: recall|None}}, "per_class_objects": {class: {bucket: n}},
        "excluded_classes": [names], "by_patches": {"buckets": {name: [lo, hi]}, "mean": {bucket: recall|None},
        "objects": {bucket: n}} over PATCH_BUCKETS, or None if no image came with its patch tokens}.
        hi = None means no upper bound."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        per_class, per_class_n = {}, {}
        for cls in range(self.num_classes):
            if cls in set(self.exclude):
                continue
            per = self.recalls.get(cls, {b: [] for b in BUCKET_NAMES})
            per_class[names[cls]] = {b: _mean(per[b]) for b in BUCKET_NAMES}
            per_class_n[names[cls]] = {b: len(per[b]) for b in BUCKET_NAMES}
        return {
            "buckets": _bounds(SIZE_BUCKETS),
            "mean": self.bucket_means(),
            "objects": {b: sum(len(per[b]) for per in self.recalls.values()) for b in BUCKET_NAMES},
            "per_class": per_class,
            "per_class_objects": per_class_n,
            "excluded_classes": [names[c] for c in sorted(set(self.exclude)) if 0 <= c < len(names)],
            "by_patches": None if not self.sized_images else {
                "buckets": _bounds(PATCH_BUCKETS),
                "mean": {b: _mean(v) for b, v in self.by_patches.items()},
                "objects": {b: len(v) for b, v in self.by_patches.items()},
            },
        }


def _bounds(buckets) -> dict[str, list]:
    """{name: [lo, hi]} of (name, lo, hi) buckets, hi None for no upper bound (JSON)."""
    return {name: [lo, None if math.isinf(hi) else hi] for name, lo, hi in buckets}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def nan_to_none(value):
    """NaN floats -> None, recursively through dicts, lists and tuples; numpy scalars/arrays -> Python."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return nan_to_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
