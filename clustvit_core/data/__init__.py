"""Datasets for ClustViT training and evaluation: one registry, one item type.

Every dataset is a map-style sequence of `Sample`s (uint8 RGB image + uint8 label map, 255 = ignore)
with `name`, `class_names`, `palette` and `num_classes`. Build one with

    build_dataset("cwfid", split="train", root=None)

where `root=None` means the dataset's default location (an environment variable, see each module).
A model config's `dataset:` key names its dataset here; `dataset_info(name)` gives its classes and
colours without reading any file.
"""
from __future__ import annotations

from .registry import DatasetInfo, dataset_info, dataset_names
from .registry import build as build_dataset
from .sample import IGNORE_INDEX, Sample

__all__ = ["IGNORE_INDEX", "DatasetInfo", "Sample", "build_dataset", "dataset_info", "dataset_names"]
