"""CWFID: 60 crop/weed field images (Haug & Ostermann, ECCV-W 2014; non-commercial research use only).

Layout: images/NNN_image.png, annotations/NNN_annotation.png (black soil = 0, green crop = 1,
red weed = 2), train_test_split.yaml. The published split lists image 28 in both train and test;
it is kept in test and dropped from train, with one warning per process.

`CWFIDDataset` (registry name 'cwfid'): splits 'train' (39 images) and 'test' (21); CWFID has no
validation split, so 'val' reads the test split.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..errors import InputError
from .base import FilePairDataset, require_dir, warn_once

ENV_ROOT = "CLUSTVIT_CWFID_ROOT"
PALETTE = [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
CLASS_NAMES = ["soil", "crop", "weed"]


def default_root() -> Path:
    """$CLUSTVIT_CWFID_ROOT, else ../shared/data/cwfid next to the project checkout."""
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT])
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cwfid"


def split_ids(root: str | Path | None = None) -> dict[str, list[int]]:
    """{'train': [...], 'test': [...]} image numbers, with train/test overlaps removed from train."""
    root = Path(root) if root else default_root()
    split_file = root / "train_test_split.yaml"
    if not split_file.is_file():
        raise InputError(f"{split_file} not found: point --data-root (or {ENV_ROOT}) at the CWFID folder")
    split = yaml.safe_load(split_file.read_text())
    train, test = list(split["train"]), list(split["test"])
    overlap = sorted(set(train) & set(test))
    if overlap:
        warn_once(("cwfid-overlap", str(split_file.resolve()), tuple(overlap)),
                  f"{split_file}: images {overlap} are listed in train and test; dropped from train")
        train = [i for i in train if i not in overlap]
    return {"train": train, "test": test}


def files(root: str | Path | None = None, split: str = "test") -> list[tuple[Path, Path]]:
    """(image, annotation) paths of one split ('train', 'test' or 'all')."""
    root = Path(root) if root else default_root()
    ids = split_ids(root)
    if split == "all":
        numbers = sorted(set(ids["train"]) | set(ids["test"]))
    elif split in ids:
        numbers = ids[split]
    else:
        raise InputError(f"CWFID split {split!r}: choose train, test or all")
    out = []
    for n in numbers:
        image, annotation = root / "images" / f"{n:03d}_image.png", root / "annotations" / f"{n:03d}_annotation.png"
        if not image.is_file():
            raise InputError(f"{image} not found: the CWFID folder at {root} is incomplete")
        if not annotation.is_file():
            raise InputError(f"{image}: no annotation {annotation}; the CWFID folder at {root} is incomplete")
        out.append((image, annotation))
    return out


class CWFIDDataset(FilePairDataset):
    """CWFID as Samples: colour annotations mapped through PALETTE (other colours -> 255); 'val' = 'test'."""

    name = "cwfid"
    title = "CWFID"
    env_var = ENV_ROOT
    class_names = tuple(CLASS_NAMES)
    palette = tuple(map(tuple, PALETTE))
    mask_palette = PALETTE
    SPLITS = {"train": "train", "val": "test", "test": "test"}

    @classmethod
    def default_root(cls) -> Path:
        return default_root()

    def find_pairs(self):
        fix = f"point --data-root (or {ENV_ROOT}) at the CWFID folder (images/, annotations/, train_test_split.yaml)"
        require_dir(self.root / "images", fix)
        require_dir(self.root / "annotations", fix)
        return files(self.root, self.source_split)
