"""The item every dataset yields and the ignore label: the ground floor of the data package (numpy only).

Every module that needs the ignore label (datasets, transforms, metrics, pseudo-clusters, training)
imports it from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255  # label value of unlabelled pixels: no loss, no metric, never a pure patch


@dataclass
class Sample:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    labels: np.ndarray  # uint8 [H, W] class ids, IGNORE_INDEX = not labelled
    name: str  # identifies the item in messages and outputs (e.g. the file stem)
