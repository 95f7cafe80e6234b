"""RumexWeeds: grassland images with dock weeds (Güldenring et al. 2023), 3 classes.

Raw layout (as downloaded): ROOT/<collection>/<seqN>/imgs/*.png with one CVAT-for-images 1.1 file
ROOT/<collection>/<seqN>/annotations_seg.xml per sequence (polygons labelled rumex_obtusifolius or
rumex_crispus), and split files ROOT/dataset_splits/random_{train,val,test}.txt listing image paths
relative to ROOT. `python -m clustvit_core.data.rumexweeds_prepare ROOT` rasterizes the polygons into

    ROOT/processed/{train,val,test}/images/NAME.png   ROOT/processed/{train,val,test}/masks/NAME.png

(masks: single-channel class ids, 0 background, 1 rumex_obtusifolius, 2 rumex_crispus), which is what
`RumexWeedsDataset` reads. ROOT may also be the processed folder itself.
"""
from __future__ import annotations

from pathlib import Path

from .base import FilePairDataset, list_images, require_dir

ENV_ROOT = "CLUSTVIT_RUMEXWEEDS_ROOT"
CLASS_NAMES = ["background", "rumex_obtusifolius", "rumex_crispus"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
PROCESSED = "processed"
PREPARE_HINT = "python -m clustvit_core.data.rumexweeds_prepare ROOT"


def processed_dir(root: Path) -> Path:
    """ROOT/processed, or ROOT itself when it already is a processed folder (holds train/images)."""
    if not (root / PROCESSED).is_dir() and (root / "train" / "images").is_dir():
        return root
    return require_dir(root / PROCESSED, f"run {PREPARE_HINT} first to rasterize the annotations")


class RumexWeedsDataset(FilePairDataset):
    """RumexWeeds as Samples, from ROOT/processed/<split>/{images,masks} (see module doc)."""

    name = "rumexweeds"
    title = "RumexWeeds"
    env_var = ENV_ROOT
    class_names = tuple(CLASS_NAMES)
    palette = tuple(map(tuple, PALETTE))

    def find_pairs(self):
        folder = processed_dir(self.root) / self.source_split
        fix = f"run {PREPARE_HINT} to write the {self.source_split} split"
        images_dir = require_dir(folder / "images", fix)
        masks_dir = require_dir(folder / "masks", fix)
        return self.pair_by_stem(list_images(images_dir), masks_dir, ".png")
