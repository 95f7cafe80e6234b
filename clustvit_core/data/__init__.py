"""Datasets for ClustViT training and evaluation: one registry, one item type.

Every dataset is a map-style sequence of `Sample`s (uint8 RGB image + uint8 label map, 255 = ignore)
with `name`, `class_names`, `palette` and `num_classes`. Build one with

    build_dataset("cwfid", split="train", root=None)

where `root=None` means the dataset's default location (an environment variable, see each module).
A model config's `dataset:` key names its dataset here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


@dataclass
class Sample:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    labels: np.ndarray  # uint8 [H, W] class ids, IGNORE_INDEX = not labelled
    name: str  # identifies the item in messages and outputs (e.g. the file stem)


def dataset_names() -> list[str]:
    from .registry import DATASETS

    return sorted(DATASETS)


def build_dataset(name: str, split: str, root=None, **kwargs):
    """A registered dataset split ('train', 'val' or 'test'); unknown names list the known ones."""
    from .registry import build

    return build(name, split, root, **kwargs)
