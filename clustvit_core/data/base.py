"""The shared base of the file-pair datasets (`FilePairDataset`) and the checks every dataset uses."""
from __future__ import annotations

import operator
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from .labels import read_labels, read_rgb
from .sample import IGNORE_INDEX, Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_WARNED: set = set()  # keys of warn_once messages already given in this process


def warn_once(key, message: str, stacklevel: int = 3) -> None:
    """warnings.warn(message) the first time `key` is seen in this process, never again.

    (The warnings module's own once-per-location filter is not enough: the location changes with the
    caller, and test harnesses reset it.)
    """
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, stacklevel=stacklevel)


def resolve_root(root: str | Path | None, env_var: str, title: str, default: Path | None = None,
                 how: str = "--data-root (root=...)") -> Path:
    """The dataset folder: `root`, else $env_var, else `default`; a one-line error if none is set or it is missing.

    `how` names the argument that sets the folder, for the messages.
    """
    if root is None or str(root) == "":
        if os.environ.get(env_var):
            root = os.environ[env_var]
        elif default is not None:
            root = default
        else:
            raise ConfigError(f"no {title} folder given: pass {how} or set {env_var}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: {title} folder not found; pass {how} or set {env_var} to the {title} folder")
    return root


def require_dir(path: Path, fix: str) -> Path:
    """`path` if it is a folder, else an InputError naming it and the fix."""
    if not path.is_dir():
        raise InputError(f"{path}: folder not found; {fix}")
    return path


def parse_seed(seed, where: str) -> int:
    """`seed` as an int >= 0, else a ConfigError naming `where`."""
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}") from None
    if seed < 0:
        raise ConfigError(f"{where}: seed must be an int >= 0, got {seed}")
    return seed


def list_images(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly in `folder` (by suffix, case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def check_same_size(image: np.ndarray, labels: np.ndarray, image_path, mask_path) -> None:
    if image.shape[:2] != labels.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], labels.shape[:2]
        raise InputError(f"{mask_path}: mask is {mw}x{mh} (WxH) but its image {image_path} is {iw}x{ih}")


def check_label_values(labels: np.ndarray, num_classes: int, path, ignore: int = IGNORE_INDEX) -> None:
    """An InputError naming `path` and the offending values if a label is >= num_classes and not `ignore`."""
    if labels.size == 0 or int(labels.max()) < num_classes:
        return
    counts = np.bincount(labels.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= num_classes and v != ignore]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise InputError(f"{path}: label values {shown} are not class ids (0..{num_classes - 1}, or {ignore} = ignore)")


class FilePairDataset:
    """Base of the datasets made of (image file, label file) pairs.

    Subclasses set the class attributes below and implement `find_pairs()` (cheap checks only: folders
    and file names); `__getitem__` reads a pair, checks sizes and label values, and returns a Sample.
    `SPLITS` maps each accepted split name to the split whose files it reads (e.g. CWFID 'val' -> 'test').
    """

    name = ""
    title = ""  # the dataset's name in messages
    env_var = ""  # default root
    class_names: tuple = ()
    palette: tuple = ()  # RGB per class, for visualisation
    mask_palette = None  # colour label files: RGB per class id (read_labels); None = single-channel ids
    SPLITS: dict = {"train": "train", "val": "val", "test": "test"}
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", root: str | Path | None = None):
        self.split = self.check_split(split)
        self.source_split = self.SPLITS[self.split]
        self.class_names = list(self.class_names)
        self.palette = [list(c) for c in self.palette]
        self.root = resolve_root(root, self.env_var, self.title, self.default_root())
        self.pairs: list[tuple[Path, Path]] = self.find_pairs()

    # --- hooks
    @classmethod
    def default_root(cls) -> Path | None:
        return None

    def find_pairs(self) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def load_labels(self, mask_path: Path) -> np.ndarray:
        """Class ids of one label file, uint8 [H, W] (values are checked by the caller)."""
        return read_labels(mask_path, self.mask_palette)

    # --- shared
    @classmethod
    def check_split(cls, split) -> str:
        if split not in cls.SPLITS:
            valid = ", ".join(s if cls.SPLITS[s] == s else f"{s} (= {cls.SPLITS[s]})" for s in cls.SPLITS)
            raise ConfigError(f"dataset {cls.name!r}: unknown split {split!r}; valid splits: {valid}")
        return split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pair_by_stem(self, images: list[Path], mask_dir: Path, suffix: str = ".png") -> list[tuple[Path, Path]]:
        """(image, mask_dir/<image stem><suffix>) for each image; an error naming the first image without one."""
        masks = {p.name for p in mask_dir.iterdir()}
        pairs = []
        for image in images:
            mask = image.stem + suffix
            if mask not in masks:
                raise InputError(f"{image}: no mask {mask_dir / mask}; every image needs a label file")
            pairs.append((image, mask_dir / mask))
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        index = operator.index(index)
        n = len(self.pairs)
        if not -n <= index < n:
            raise IndexError(f"{self.title} {self.split}: index {index} out of range for {n} images")
        image_path, mask_path = self.pairs[index]
        image = read_rgb(image_path)
        labels = self.load_labels(mask_path)
        check_same_size(image, labels, image_path, mask_path)
        check_label_values(labels, self.num_classes, mask_path, self.ignore_index)
        return Sample(image=image, labels=labels, name=image_path.stem)

    def __repr__(self) -> str:
        alias = "" if self.source_split == self.split else f" (= {self.source_split})"
        return f"{type(self).__name__}(split={self.split!r}{alias}, root='{self.root}', {len(self)} images)"
