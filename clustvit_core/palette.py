"""Class colours: the default palette of n classes (no torch, no model code)."""
from __future__ import annotations

import colorsys


def default_palette(n: int) -> list[list[int]]:
    """n well-separated RGB colours (deterministic), class 0 black."""
    colours = [[0, 0, 0]]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95 if i % 2 else 0.7)
        colours.append([int(r * 255), int(g * 255), int(b * 255)])
    return colours[:n]
