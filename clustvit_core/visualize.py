"""Pictures of predictions and clusters: numpy image helpers (also used by the ROS node) and
matplotlib figures for the evaluator (drawn with the Agg canvas; pyplot and the global backend are
never touched, so importing this in a GUI or ROS process changes nothing).

Cluster colours: cluster 0 ("kept token") is black in cluster maps and untouched in overlays;
clusters 1..k get `cluster_colours(k)[1:]`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .palette import default_palette

IGNORE_COLOUR = (255, 255, 255)


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def cluster_colours(k: int) -> np.ndarray:
    """uint8 [k + 1, 3] RGB: row 0 (kept tokens) black, rows 1..k well-separated colours."""
    return np.asarray(default_palette(k + 1), dtype=np.uint8)


def colorize(labels, palette: Sequence[Sequence[int]], ignore_colour=IGNORE_COLOUR) -> np.ndarray:
    """Class ids [H, W] -> RGB uint8 [H, W, 3] through `palette` (one RGB triple per class);
    ids without a colour (e.g. 255 = ignore) get `ignore_colour`."""
    labels = _numpy(labels)
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    if labels.dtype == np.uint8 and len(palette) <= 256:  # OpenCV's table lookup: ~4x faster than indexing
        lut = np.tile(np.asarray(ignore_colour, np.uint8), (256, 1))
        lut[: len(palette)] = palette
        return cv2.LUT(cv2.merge([labels] * 3), lut[:, None, :])
    labels = labels.astype(np.int64)
    lut = np.tile(np.asarray(ignore_colour, np.uint8), (max(int(labels.max(initial=0)) + 1, len(palette)), 1))
    lut[: len(palette)] = palette
    return lut[labels]


def upsample_ids(cluster_ids, out_shape: tuple[int, int], input_shape: tuple[int, int] | None = None,
                 patch: int | None = None) -> np.ndarray:
    """Patch-grid ids [h, w] -> per-pixel ids [H, W] = out_shape (nearest, no blending).

    `input_shape` is the (height, width) of the network input the ids were computed on. The grid
    covers that input padded to multiples of `patch` (the model's patch size, needed with
    `input_shape`); the padding is cut off before scaling to `out_shape`. Without it, the grid is
    taken to cover exactly the image. Ids of -1 (left out of the sequence) come back as 0.
    """
    ids = _numpy(cluster_ids)
    if ids.ndim == 3 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 2:
        raise ValueError(f"cluster ids must be [h, w] (one image), got shape {ids.shape}")
    ids = np.maximum(ids, 0)  # -1 (letterbox padding left out of the sequence) is drawn as kept
    ids = ids.astype(np.uint8) if ids.max(initial=0) < 256 else ids.astype(np.int32)
    if input_shape is not None:
        if not patch:
            raise ValueError("upsample_ids: input_shape needs patch, the model's patch size (model.config.patch_size)")
        ids = np.repeat(np.repeat(ids, patch, axis=0), patch, axis=1)[: input_shape[0], : input_shape[1]]
    H, W = out_shape
    if ids.shape == (H, W):
        return ids
    return cv2.resize(ids, (W, H), interpolation=cv2.INTER_NEAREST_EXACT)


def cluster_map(cluster_ids, out_shape: tuple[int, int], k: int | None = None,
                input_shape: tuple[int, int] | None = None, patch: int | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] picture of a cluster assignment: kept tokens black, one colour per cluster.

    Args:
        cluster_ids: [h, w] (or [1, h, w]) ids, 0 = kept, 1..k = cluster (a model output's `cluster_ids`,
            or `pseudo_clusters`).
        out_shape: (H, W) of the picture.
        k: number of clusters (sets the colours; default: the largest id).
        input_shape, patch: see `upsample_ids`.
    """
    ids = upsample_ids(cluster_ids, out_shape, input_shape, patch)
    k = int(ids.max(initial=0)) if k is None else k
    return cluster_colours(max(k, int(ids.max(initial=0))))[ids]


def cluster_overlay(image: np.ndarray, cluster_ids, alpha: float = 0.5, k: int | None = None,
                    input_shape: tuple[int, int] | None = None, patch: int | None = None) -> np.ndarray:
    """The image with each cluster's pixels tinted in its colour; kept-token pixels untouched.

    Args:
        image: RGB uint8 [H, W, 3] (any size: the ids are scaled to it, see `upsample_ids`).
        cluster_ids: [h, w] or [1, h, w] ids of that image (0 = kept, 1..k = cluster).
        alpha: weight of the cluster colour (0 = no tint, 1 = solid colour).
        k, input_shape, patch: see `cluster_map`.
    Returns:
        a new RGB uint8 [H, W, 3] array.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"cluster_overlay: image must be uint8 [H, W, 3], got {getattr(image, 'shape', None)} "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    ids = upsample_ids(cluster_ids, image.shape[:2], input_shape, patch)
    k = max(int(ids.max(initial=0)), k or 0)
    colours = cluster_colours(k)[ids]
    blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
    return np.where((ids > 0)[..., None], blended, image)


# --------------------------------------------------------------------------- matplotlib figures

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def save_example_figure(path: str | Path, image: np.ndarray, labels, prediction, palette, *,
                        pseudo_ids=None, predicted_ids=None, k: int | None = None,
                        input_shape: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
                        title: str | None = None, tokens: int | None = None, patch: int | None = None) -> Path:
    """One row like the ClustViT paper's Fig. 2: input | ground truth | prediction | pseudo-clusters |
    predicted clusters (the cluster panels are left out when their ids are None, e.g. a plain ViT).

    `labels` and `prediction` are [H, W] class ids at the image's resolution; the cluster ids are
    patch grids of the network input (`input_shape`, the model's `patch` size), scaled to the image.
    """
    H, W = image.shape[:2]
    panels = [("input", image), ("ground truth", colorize(labels, palette)), ("prediction", colorize(prediction, palette))]
    if pseudo_ids is not None:
        panels.append(("pseudo-clusters", cluster_map(pseudo_ids, (H, W), k, input_shape, patch)))
    if predicted_ids is not None:
        name = "predicted clusters" + (f"\n{tokens} tokens" if tokens is not None else "")
        panels.append((name, cluster_map(predicted_ids, (H, W), k, input_shape, patch)))
    aspect = H / max(W, 1)
    fig = _figure(3.0 * len(panels), 3.0 * aspect + (0.9 if class_names else 0.5))
    axes = fig.subplots(1, len(panels))
    for ax, (name, picture) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if class_names:
        from matplotlib.patches import Patch

        handles = [Patch(color=np.asarray(c) / 255.0, label=n) for n, c in zip(class_names, palette)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def save_token_histogram(path: str | Path, tokens: Sequence[float], full: int | None = None,
                         title: str = "tokens per image") -> Path:
    """Histogram of patch tokens per image, with the mean (and the unmerged count `full`) marked."""
    tokens = np.asarray(tokens, dtype=np.float64)
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    hi = max(float(full or 0), float(tokens.max(initial=1)))
    ax.hist(tokens, bins=np.linspace(0, hi, 21) if hi > 0 else 10, color="#3b75af", edgecolor="white")
    if tokens.size:
        ax.axvline(tokens.mean(), color="#d62728", linestyle="--", label=f"mean {tokens.mean():.0f} ± {tokens.std():.0f}")
    if full:
        ax.axvline(full, color="black", linestyle=":", label=f"no merging: {full}")
    ax.set_xlabel("patch tokens after merging")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def save_tokens_vs_classes(path: str | Path, tokens: Sequence[float], classes: Sequence[int],
                           full: int | None = None, title: str = "tokens vs classes per image") -> Path:
    """The paper's Fig. 4: tokens per image against the number of ground-truth classes present
    (one box per class count, images as dots)."""
    tokens, classes = np.asarray(tokens, dtype=np.float64), np.asarray(classes, dtype=np.int64)
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    counts = sorted(set(classes.tolist()))
    if counts:
        ax.boxplot([tokens[classes == c] for c in counts], positions=counts, widths=0.5, showfliers=False)
        jitter = (np.random.default_rng(0).random(len(tokens)) - 0.5) * 0.25  # fixed: same figure every run
        ax.scatter(classes + jitter, tokens, s=8, alpha=0.5, color="#3b75af")
        ax.set_xticks(counts)
    if full:
        ax.axhline(full, color="black", linestyle=":", label=f"no merging: {full}")
        ax.legend(fontsize=8)
    ax.set_xlabel("ground-truth classes in the image")
    ax.set_ylabel("patch tokens after merging")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
