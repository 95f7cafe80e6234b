"""ADE20K scene parsing (SceneParsing / ADEChallengeData2016, Zhou et al. 2017), 150 classes.

Layout: ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/NAME.{jpg,png} (ROOT may also
be the ADEChallengeData2016 folder itself). Annotation value 0 is 'other' (not one of the 150 classes)
and becomes 255 = ignore; values 1..150 become class ids 0..149 (mmsegmentation's reduce_zero_label).
Splits: 'train' = training, 'val' = validation; the test images have no public annotations, so
'test' also reads validation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FilePairDataset, check_label_values, list_images, require_dir
from .labels import read_labels
from .sample import IGNORE_INDEX

ENV_ROOT = "CLUSTVIT_ADE20K_ROOT"
FOLDER = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "val": "validation"}

CLASS_NAMES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
]
# The usual ADE20K visualisation colours (as in mmsegmentation), RGB per class id.
_PALETTE_FLAT = (
    "120 120 120 180 120 120 6 230 230 80 50 50 4 200 3 120 120 80 140 140 140 204 5 255 230 230 230 4 250 7 "
    "224 5 255 235 255 7 150 5 61 120 120 70 8 255 51 255 6 82 143 255 140 204 255 4 255 51 7 204 70 3 "
    "0 102 200 61 230 250 255 6 51 11 102 255 255 7 71 255 9 224 9 7 230 220 220 220 255 9 92 112 9 255 "
    "8 255 214 7 255 224 255 184 6 10 255 71 255 41 10 7 255 255 224 255 8 102 8 255 255 61 6 255 194 7 "
    "255 122 8 0 255 20 255 8 41 255 5 153 6 51 255 235 12 255 160 150 20 0 163 255 140 140 140 250 10 15 "
    "20 255 0 31 255 0 255 31 0 255 224 0 153 255 0 0 0 255 255 71 0 0 235 255 0 173 255 31 0 255 "
    "11 200 200 255 82 0 0 255 245 0 61 255 0 255 112 0 255 133 255 0 0 255 163 0 255 102 0 194 255 0 "
    "0 143 255 51 255 0 0 82 255 0 255 41 0 255 173 10 0 255 173 255 0 0 255 153 255 92 0 255 0 255 "
    "255 0 245 255 0 102 255 173 0 255 0 20 255 184 184 0 31 255 0 255 61 0 71 255 255 0 204 0 255 194 "
    "0 255 82 0 10 255 0 112 255 51 0 255 0 194 255 0 122 255 0 255 163 255 153 0 0 255 10 255 112 0 "
    "143 255 0 82 0 255 163 255 0 255 235 0 8 184 170 133 0 255 0 255 92 184 0 255 255 0 31 0 184 255 "
    "0 214 255 255 0 112 92 255 0 0 224 255 112 224 255 70 184 160 163 0 255 153 0 255 71 255 0 255 0 163 "
    "255 204 0 255 0 143 0 255 235 133 255 0 255 0 235 245 0 255 255 0 122 255 245 0 10 190 212 214 255 0 "
    "0 204 255 20 0 255 255 255 0 0 153 255 0 41 255 0 255 204 41 0 255 41 255 0 173 0 255 0 245 255 "
    "71 0 255 122 0 255 0 255 184 0 92 255 184 255 0 0 133 255 255 214 0 25 194 194 102 255 0 92 0 255"
)
PALETTE = np.array(_PALETTE_FLAT.split(), int).reshape(-1, 3).tolist()
assert len(CLASS_NAMES) == len(PALETTE) == 150

# annotation value -> class id: 0 (other) -> 255, k -> k - 1
_LUT = np.concatenate([[IGNORE_INDEX], np.arange(255)]).astype(np.uint8)
_LUT[IGNORE_INDEX] = IGNORE_INDEX


class ADE20KDataset(FilePairDataset):
    """ADE20K as Samples (see module doc); 'test' = 'val' = the validation folder."""

    name = "ade20k"
    title = "ADE20K"
    env_var = ENV_ROOT
    class_names = tuple(CLASS_NAMES)
    palette = tuple(map(tuple, PALETTE))
    SPLITS = {"train": "train", "val": "val", "test": "val"}

    def find_pairs(self):
        base = self.root / FOLDER
        if not base.is_dir() and (self.root / "images").is_dir():
            base = self.root  # ROOT is the ADEChallengeData2016 folder itself
        fix = (f"point --data-root (or {ENV_ROOT}) at the folder holding {FOLDER}/images and {FOLDER}/annotations")
        sub = SPLIT_FOLDERS[self.source_split]
        images_dir = require_dir(base / "images" / sub, fix)
        masks_dir = require_dir(base / "annotations" / sub, fix)
        return self.pair_by_stem(list_images(images_dir), masks_dir, ".png")

    def load_labels(self, mask_path: Path) -> np.ndarray:
        raw = read_labels(mask_path)
        check_label_values(raw, len(CLASS_NAMES) + 1, mask_path)  # raw values 0..150 (or 255)
        return _LUT[raw]
