"""The dataset registry: name -> builder, the one way the trainer, evaluator and tools open a dataset.

    build("suim", "val", root=None)           # root None: the dataset's environment variable
    dataset_info("suim")                      # DatasetInfo: classes and colours, without touching any file

The dataset is the one source of its class names and palette (a model config's `dataset:` names it).
Every builder is called as builder(split, root, **kwargs) and returns a map-style dataset of
`clustvit_core.data.Sample`s with `name`, `class_names`, `palette`, `num_classes`, `ignore_index`
(255), `split` and `root`. Default folders: CLUSTVIT_CWFID_ROOT (else ../shared/data/cwfid),
CLUSTVIT_SUIM_ROOT, CLUSTVIT_RUMEXWEEDS_ROOT, CLUSTVIT_ADE20K_ROOT; synthetic datasets need none.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass

from ..errors import ConfigError
from . import synthetic
from .ade20k import ADE20KDataset
from .cwfid import CWFIDDataset
from .rumexweeds import RumexWeedsDataset
from .sample import IGNORE_INDEX, Sample
from .suim import SUIMDataset


class SyntheticDataset:
    """SyntheticScenes as a registry dataset: splits train (seed 0), val (seed 1), test (seed 2); no files.

    num_images: default 200 for train, 50 for val and test; size: int or (height, width), default 512.
    """

    kind = ""
    name = ""
    SPLITS = {"train": "train", "val": "val", "test": "test"}
    SEEDS = {"train": 0, "val": 1, "test": 2}
    DEFAULT_NUM_IMAGES = {"train": 200, "val": 50, "test": 50}
    ignore_index = IGNORE_INDEX
    root = None

    def __init__(self, split: str = "train", root=None, num_images: int | None = None, size=512):
        self.split = self.check_split(split)
        self.source_split = split
        if num_images is None:
            num_images = self.DEFAULT_NUM_IMAGES[split]
        self.scenes = synthetic.SyntheticScenes(self.kind, num_images, size, seed=self.SEEDS[split])
        self.class_names = list(self.scenes.class_names)
        self.palette = [list(c) for c in self.scenes.palette]

    @classmethod
    def check_split(cls, split) -> str:
        if split not in cls.SPLITS:
            raise ConfigError(f"dataset {cls.name!r}: unknown split {split!r}; valid splits: {', '.join(cls.SPLITS)}")
        return split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int):
        index = operator.index(index)
        image, labels = self.scenes[index]
        return Sample(image=image, labels=labels, name=f"{self.name}_{self.split}_{index % max(len(self), 1):05d}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, {self.scenes!r})"


class SyntheticAgri(SyntheticDataset):
    kind, name = "agri", "synthetic_agri"
    class_names, palette = tuple(synthetic.CLASS_NAMES["agri"]), tuple(synthetic.PALETTES["agri"])


class SyntheticUnderwater(SyntheticDataset):
    kind, name = "underwater", "synthetic_underwater"
    class_names, palette = tuple(synthetic.CLASS_NAMES["underwater"]), tuple(synthetic.PALETTES["underwater"])


DATASETS = {cls.name: cls for cls in (
    CWFIDDataset, SUIMDataset, RumexWeedsDataset, ADE20KDataset, SyntheticAgri, SyntheticUnderwater)}


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def _builder(name: str):
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def build(name: str, split: str, root=None, **kwargs):
    """The `split` ('train', 'val' or 'test') of dataset `name`; root None: the dataset's default folder.

    Unknown names, splits and options raise ConfigError listing the valid ones; missing or
    inconsistent files raise InputError naming the file.
    """
    builder = _builder(name)
    builder.check_split(split)
    params = inspect.signature(builder.__init__).parameters
    options = [p for p in params if p not in ("self", "split", "root")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise ConfigError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; its options: {valid}")
    return builder(split, root, **kwargs)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know of its dataset: the registry name and, per class id, a name and an RGB colour."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]  # [num_classes]
    palette: tuple[tuple[int, int, int], ...]  # [num_classes] RGB 0-255, for visualisation


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of dataset `name`, from its class attributes (no file is read, nothing is built).

    Unknown names raise a one-line ConfigError listing the known ones.
    """
    builder = _builder(name)
    palette = tuple(tuple(int(v) for v in c) for c in builder.palette)
    return DatasetInfo(name, len(builder.class_names), tuple(builder.class_names), palette)
