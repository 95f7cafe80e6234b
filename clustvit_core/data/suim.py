"""SUIM: underwater imagery, 8 classes (Islam et al., IROS 2020).

Layout (as downloaded; the test folder may also be called TEST):

    ROOT/train_val/images/NAME.jpg   ROOT/train_val/masks/NAME.bmp   [ROOT/train_val/masks_label/NAME.png]
    ROOT/test/images/NAME.jpg        ROOT/test/masks/NAME.bmp        [ROOT/test/masks_label/NAME.png]
    [ROOT/train_val/split.yaml]

Masks are RGB bitmaps whose channels are each 0 or 255: the class id is the three bits
(R >= 128) << 2 | (G >= 128) << 1 | (B >= 128), i.e. BW 000 waterbody 0, HD 001 divers 1,
PF 010 plants 2, WR 011 wrecks 3, RO 100 robots 4, RI 101 reefs 5, FV 110 fish 6, SR 111 seafloor 7.
Each channel is thresholded at 128 because real masks hold off-palette pixels (JPEG-like noise at
edges), so every pixel gets a class and none is ignored.

`python -m clustvit_core.data.suim_convert ROOT` writes single-channel label PNGs to masks_label/
(read instead of the bitmaps when present; otherwise masks are converted when loaded) and the
train/val split file: SUIM ships train_val and test only, so train/val is a seeded 85/15 split of
train_val (`make_split`, seed 0). Without the file the same split is computed in memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..errors import InputError
from .base import FilePairDataset, list_images, require_dir, warn_once
from .labels import read_labels, read_rgb

ENV_ROOT = "CLUSTVIT_SUIM_ROOT"
CLASS_NAMES = ["waterbody", "divers", "plants", "wrecks", "robots", "reefs", "fish", "seafloor"]
CODES = ["BW", "HD", "PF", "WR", "RO", "RI", "FV", "SR"]  # SUIM's class abbreviations, by class id
PALETTE = [[(i >> 2 & 1) * 255, (i >> 1 & 1) * 255, (i & 1) * 255] for i in range(8)]  # the mask colour of each id

TRAIN_VAL = "train_val"
TEST_DIRS = ("test", "TEST")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".bmp", ".png")
LABEL_DIR = "masks_label"
SPLIT_FILE = "split.yaml"  # in ROOT/train_val
SPLIT_SEED = 0
VAL_FRACTION = 0.15
CONVERT_HINT = "python -m clustvit_core.data.suim_convert ROOT"


def rgb_to_labels(rgb: np.ndarray) -> np.ndarray:
    """RGB mask uint8 [H, W, 3] -> class ids uint8 [H, W]: (R >= 128) << 2 | (G >= 128) << 1 | (B >= 128)."""
    bits = np.asarray(rgb, np.uint8) >> 7  # 1 where a channel is >= 128
    return (bits[..., 0] << 2) | (bits[..., 1] << 1) | bits[..., 2]


def split_dir(root: Path, which: str) -> Path:
    """ROOT/train_val, or ROOT/test (or ROOT/TEST) for which='test'; an error naming the folder if missing."""
    fix = f"point --data-root (or {ENV_ROOT}) at the SUIM folder holding train_val/ and test/"
    if which == "test":
        for name in TEST_DIRS:
            if (root / name).is_dir():
                return root / name
        return require_dir(root / TEST_DIRS[0], fix)
    return require_dir(root / TRAIN_VAL, fix)


def raw_mask(masks_dir: Path, stem: str) -> Path | None:
    """masks_dir/<stem>.bmp (or .png), or None."""
    for suffix in MASK_SUFFIXES:
        if (masks_dir / (stem + suffix)).is_file():
            return masks_dir / (stem + suffix)
    return None


def make_split(stems, seed: int = SPLIT_SEED, val_fraction: float = VAL_FRACTION) -> dict[str, list[str]]:
    """A deterministic train/val split of image stems: {'train': [...], 'val': [...]}, both sorted.

    The stems are sorted, permuted with numpy's default_rng(seed) and the first round(n * val_fraction)
    go to val (at least one and at most n - 1 when n >= 2). Depends only on the set of stems and the seed.
    """
    stems = sorted(set(stems))
    n = len(stems)
    n_val = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 else 0
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(stems[i] for i in order[:n_val])
    val_set = set(val)
    return {"train": [s for s in stems if s not in val_set], "val": val}


def write_split_file(path: Path, split: dict[str, list[str]], seed: int, val_fraction: float) -> None:
    header = (f"# SUIM train/val split of {path.parent.name}/images, written by {CONVERT_HINT}\n"
              f"# (seed {seed}, {round(100 * (1 - val_fraction))}/{round(100 * val_fraction)}); "
              "edit or delete it to change the split.\n")
    body = {"seed": seed, "val_fraction": val_fraction, "train": split["train"], "val": split["val"]}
    path.write_text(header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120))


def read_split_file(path: Path) -> dict[str, list[str]]:
    """{'train': [...], 'val': [...]} from a split file; stems in both are dropped from train (one warning)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable split file ({str(exc).splitlines()[0]}); "
                         f"delete it or rerun {CONVERT_HINT}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "val")):
        raise InputError(f"{path}: a split file needs 'train' and 'val' lists of image names; "
                         f"delete it or rerun {CONVERT_HINT}")
    train, val = [str(s) for s in data["train"]], [str(s) for s in data["val"]]
    overlap = sorted(set(train) & set(val))
    if overlap:
        shown = ", ".join(overlap[:5]) + (", ..." if len(overlap) > 5 else "")
        warn_once(("suim-overlap", str(path.resolve()), tuple(overlap)),
                  f"{path}: {len(overlap)} images ({shown}) are listed in train and val; dropped from train")
        train = [s for s in train if s not in set(overlap)]
    return {"train": train, "val": val}


def train_val_split(folder: Path, images: list[Path], split_file: Path | None = None) -> dict[str, list[str]]:
    """The train/val stems of train_val `folder`: from its split file if present, else `make_split`."""
    path = Path(split_file) if split_file else folder / SPLIT_FILE
    stems = [p.stem for p in images]
    if not path.is_file():
        if split_file:
            raise InputError(f"{path}: split file not found; pass an existing file or leave split_file unset")
        return make_split(stems)
    split = read_split_file(path)
    listed = set(split["train"]) | set(split["val"])
    missing = sorted(listed - set(stems))
    if missing:
        raise InputError(f"{path}: lists {missing[0]!r} ({len(missing)} names in all) but {folder / 'images'} has no "
                         f"such image; delete the split file or rerun {CONVERT_HINT}")
    unlisted = sorted(set(stems) - listed)
    if unlisted:
        raise InputError(f"{path}: image {folder / 'images' / unlisted[0]}.* ({len(unlisted)} in all) is in neither "
                         f"train nor val; delete the split file or rerun {CONVERT_HINT}")
    return split


class SUIMDataset(FilePairDataset):
    """SUIM as Samples: 'train'/'val' are the split of train_val/ (see module doc), 'test' is test/.

    Labels come from masks_label/NAME.png when present, else from masks/NAME.bmp via `rgb_to_labels`.
    `split_file`: a train/val split file other than ROOT/train_val/split.yaml.
    """

    name = "suim"
    title = "SUIM"
    env_var = ENV_ROOT
    class_names = tuple(CLASS_NAMES)
    palette = tuple(map(tuple, PALETTE))

    def __init__(self, split: str = "train", root: str | Path | None = None, split_file: str | Path | None = None):
        self.split_file = split_file
        super().__init__(split, root)

    def find_pairs(self):
        folder = split_dir(self.root, "test" if self.source_split == "test" else "train")
        images_dir, masks_dir, label_dir = folder / "images", folder / "masks", folder / LABEL_DIR
        require_dir(images_dir, f"SUIM keeps images in {folder.name}/images and masks in {folder.name}/masks")
        if not label_dir.is_dir():
            require_dir(masks_dir, f"SUIM keeps images in {folder.name}/images and masks in {folder.name}/masks")
        images = list_images(images_dir, IMAGE_SUFFIXES)
        if self.source_split != "test":
            keep = set(train_val_split(folder, images, self.split_file)[self.source_split])
            images = [p for p in images if p.stem in keep]
        labels = {p.name for p in label_dir.iterdir()} if label_dir.is_dir() else set()
        pairs = []
        for image in images:
            mask = label_dir / f"{image.stem}.png" if f"{image.stem}.png" in labels else raw_mask(masks_dir, image.stem)
            if mask is None:
                raise InputError(f"{image}: no mask {masks_dir / image.stem}.bmp; every image needs a mask")
            pairs.append((image, mask))
        return pairs

    def load_labels(self, mask_path: Path) -> np.ndarray:
        if mask_path.parent.name == LABEL_DIR:
            return read_labels(mask_path)
        return rgb_to_labels(read_rgb(mask_path))
