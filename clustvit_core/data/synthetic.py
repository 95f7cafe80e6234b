"""Deterministic synthetic segmentation scenes for fast tests, the demo model and speed benchmarks.

Two kinds of scene, both background-dominated like real field and underwater images (most 16x16
patches hold a single background class, the regime that ClustViT's token merging targets):

* ``"agri"``, a top-down view of a field; classes 0 soil, 1 crop, 2 weed. Textured brown soil
  (noise, furrows along the crop rows, pebbles, an illumination gradient, plant shadows); crop
  plants are rosettes of broad elliptical medium-green leaves planted in rows; weeds are smaller
  plants with narrow (grass-like), lobed or thin leaves, yellowish or dark green, scattered
  anywhere, under or over the crops. Vegetation covers roughly 5-25 % of the pixels.
* ``"underwater"``, a side view; classes 0 water, 1 seafloor, 2 fish, 3 reef. Blue-green water
  with a vertical gradient, caustics and light rays in the upper part; a sandy sea floor with a
  wavy boundary and ripples; irregular reef blobs (some with branches) on the floor; fish
  (elliptical body, forked tail, dorsal fin, eye) in varied colours, sometimes a school. Fish and
  reef cover roughly 5-20 % of the pixels.

Every object is drawn with the same polygon into the label map (no anti-aliasing) and into the
image (anti-aliased), so labels match the pixels; only the image has soft edges (anti-aliasing and
a mild blur), as in a photograph. A scene is a pure function of (kind, seed, size); object sizes
scale with sqrt(height * width) / 512. numpy and OpenCV only, no per-pixel Python loops.
"""
from __future__ import annotations

import math
import operator

import cv2
import numpy as np

from ..errors import ConfigError
from .base import parse_seed

SCENES = ("agri", "underwater")
CLASS_NAMES = {"agri": ["soil", "crop", "weed"], "underwater": ["water", "seafloor", "fish", "reef"]}
# Colours for visualising label maps (clustvit_core.visualize.colorize): RGB per class id.
PALETTES = {
    "agri": [(125, 90, 60), (40, 200, 40), (235, 45, 45)],
    "underwater": [(30, 80, 160), (215, 195, 135), (255, 150, 0), (205, 50, 175)],
}

_SHIFT = 4  # cv2 fixed-point bits: polygon vertices have 1/16 pixel precision
_ONE = float(1 << _SHIFT)
_AA, _HARD = cv2.LINE_AA, cv2.LINE_8


# --------------------------------------------------------------------------------------- public API

def make_scene(kind: str, seed: int, size: int | tuple[int, int] = 512) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene.

    Args:
        kind: one of SCENES ("agri", "underwater").
        seed: int >= 0; the scene is a pure function of (kind, seed, size).
        size: int (square) or (height, width), each >= 16.
    Returns:
        (image uint8 [H, W, 3] RGB, labels uint8 [H, W] with class ids indexing CLASS_NAMES[kind]).
    """
    _check_kind(kind, "make_scene")
    h, w = _parse_size(size)
    rng = np.random.default_rng(np.random.SeedSequence([parse_seed(seed, 'make_scene'), SCENES.index(kind)]))
    return _agri(rng, h, w) if kind == "agri" else _underwater(rng, h, w)


class SyntheticScenes:
    """Map-style dataset: ``len(ds) == num_images``, ``ds[i] -> (image uint8 [H, W, 3] RGB, labels uint8 [H, W])``.

    Item i is ``make_scene(kind, seed * 1_000_000 + i, size)`` (see `scene_seed`), so datasets
    with different seeds (e.g. train seed=0, val seed=1) share no scene while num_images <= 10**6.
    """

    def __init__(self, kind: str = "agri", num_images: int = 100, size: int | tuple[int, int] = 512,
                 seed: int = 0):
        _check_kind(kind, "SyntheticScenes")
        try:
            num_images = operator.index(num_images)
        except TypeError:
            raise ConfigError(f"SyntheticScenes: num_images must be an int >= 0, got {num_images!r}") from None
        if num_images < 0:
            raise ConfigError(f"SyntheticScenes: num_images must be an int >= 0, got {num_images}")
        self.kind = kind
        self.num_images = num_images
        self.size = _parse_size(size)
        self.seed = parse_seed(seed, 'SyntheticScenes')
        self.class_names = list(CLASS_NAMES[kind])
        self.num_classes = len(self.class_names)
        self.palette = list(PALETTES[kind])

    def scene_seed(self, index: int) -> int:
        """The make_scene seed of item `index`."""
        return self.seed * 1_000_000 + index

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = operator.index(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"SyntheticScenes: index out of range for {self.num_images} images")
        return make_scene(self.kind, self.scene_seed(index), self.size)

    def __repr__(self) -> str:
        return (f"SyntheticScenes(kind={self.kind!r}, num_images={self.num_images}, "
                f"size={self.size}, seed={self.seed})")


# ------------------------------------------------------------------------------------------ helpers

def _check_kind(kind, where: str) -> None:
    if not isinstance(kind, str) or kind not in SCENES:
        raise ConfigError(f"{where}: unknown scene kind {kind!r}; valid kinds: {', '.join(SCENES)}")


def _parse_size(size) -> tuple[int, int]:
    try:
        if isinstance(size, (tuple, list)):
            if len(size) != 2:
                raise TypeError
            h, w = operator.index(size[0]), operator.index(size[1])
        else:
            h = w = operator.index(size)
    except TypeError:
        raise ConfigError(f"size must be an int or a (height, width) pair of ints, got {size!r}") from None
    if h < 16 or w < 16:
        raise ConfigError(f"size must be at least 16 pixels per side (one 16x16 patch), got {size!r}")
    return h, w


def _scale(h: int, w: int) -> tuple[float, float]:
    """(s, area): object scale (1 at 512x512; small images show a zoomed-in part of a scene rather than
    a miniature: s >= 0.25) and the image area in units of a 512x512 scene at that scale."""
    s = max(math.sqrt(h * w) / 512.0, 0.25)
    return s, h * w / (512.0 * s) ** 2


def _smooth(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise [h, w] float32 (std ~0.7) with features of about `cell` pixels (bicubic-upsampled grid)."""
    cell = max(cell, 1.0)
    grid = rng.standard_normal((max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _smooth1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    grid = rng.standard_normal((1, max(2, math.ceil(n / max(cell, 1.0)) + 1)), dtype=np.float32)
    return cv2.resize(grid, (n, 1), interpolation=cv2.INTER_CUBIC)[0]


def _rgb(lum: np.ndarray, colour, add=None) -> np.ndarray:
    """float32 [h, w, 3] = lum * colour (+ add per channel), built per channel (3-wide broadcasts are slow)."""
    chans = [lum * np.float32(c) for c in colour]
    if add is not None:
        for ch, a in zip(chans, add):
            if a is not None:
                ch += a
    return cv2.merge(chans)


def _fixed(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy) * _ONE).astype(np.int32)


def _colours(c: np.ndarray) -> list:
    """[k, 3] (or [3]) float colours -> clipped python lists for cv2."""
    return np.clip(c, 0, 255).tolist()


def _to_world(u, v, cx, cy, angle):
    """Local (u along the axis, v across) -> image (x, y): rotated by `angle`, shifted to (cx, cy)."""
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + u * ca - v * sa, cy + u * sa + v * ca], axis=-1)


def _half(h: int, w: int):
    """Half-resolution grid: (h2, w2, x [1, w2], y [h2, 1]) with x, y the full-resolution coordinates of its pixels."""
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    x = (np.arange(w2, dtype=np.float32) * 2 + 0.5)[None, :]
    y = (np.arange(h2, dtype=np.float32) * 2 + 0.5)[:, None]
    return h2, w2, x, y


def _leaves(cx, cy, angles, lengths, half_widths, bends, start, taper, fullness, lobes, lobe_depth, n=24):
    """Leaf polygons, vectorized over leaves (every argument is a [L] array).

    A leaf grows from (cx, cy) + start * length along its angle; at t in [0, 1] along its bent
    midrib the half width is half_width * sin(pi * t**taper)**fullness, cut by `lobes` notches of
    relative depth `lobe_depth`. Returns (outline [L, 2n-2, 2], right half [L, 2n-2, 2],
    midrib [L, n, 2]) in pixels.
    """
    def col(a):
        return np.asarray(a, np.float64)[:, None]

    t = np.linspace(0.0, 1.0, n)[None, :]
    lengths = col(lengths)
    hw = col(half_widths) * np.sin(np.pi * t ** col(taper)) ** col(fullness)
    hw *= 1.0 - col(lobe_depth) * (0.5 - 0.5 * np.cos(2 * np.pi * col(lobes) * t))
    u = (col(start) + t) * lengths
    v = col(bends) * lengths * t * t
    cx, cy, ang = col(cx), col(cy), col(angles)
    left = _to_world(u, v + hw, cx, cy, ang)
    right = _to_world(u, v - hw, cx, cy, ang)
    mid = _to_world(u, v, cx, cy, ang)
    outline = np.concatenate([left, right[:, -2:0:-1]], axis=1)
    half = np.concatenate([right, mid[:, -2:0:-1]], axis=1)
    return outline, half, mid


def _finish(rng, img: np.ndarray, labels: np.ndarray, texture: np.ndarray, class_amp, blur: float, grain: float,
            vignette: float) -> np.ndarray:
    """Per-class texture, white balance, vignette, blur and sensor noise on a uint8 RGB image."""
    h, w = labels.shape
    lum = np.asarray(class_amp, np.float32)[labels]
    lum *= texture
    lum += 1.0
    if vignette:
        yn = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
        xn = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
        lum *= 1.0 - (vignette * 0.5) * (xn * xn + yn * yn)
    gain = _rgb(lum, rng.uniform(0.95, 1.05, 3))  # with a white balance
    out = cv2.multiply(img, gain, dtype=cv2.CV_8U)
    out = cv2.GaussianBlur(out, (5, 5), blur)
    noise = np.frombuffer(rng.bytes(h * w * 3), np.uint8).reshape(h, w, 3)
    k = grain / 73.9  # std of uniform random bytes
    return cv2.addWeighted(out, 1.0, noise, k, -127.5 * k)


# ------------------------------------------------------------------------------------- agricultural

def _agri(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s, area = _scale(h, w)
    diag = math.hypot(h, w)
    light = rng.uniform(0, 2 * math.pi)  # direction the sun comes from, in the image plane

    # ---- crop positions: rows along `theta`, gaps, jitter ---------------------------------------
    theta = rng.uniform(0, math.pi)
    d = np.array([math.cos(theta), math.sin(theta)])
    nrm = np.array([-math.sin(theta), math.cos(theta)])
    row_sp = rng.uniform(115, 165) * s
    row_off = rng.uniform(0, row_sp)
    plant_sp = rng.uniform(55, 90) * s
    growth = rng.uniform(0.62, 1.3)
    centre = np.array([w / 2.0, h / 2.0])
    reach = 0.5 * diag + 40 * s
    c_n, c_d = float(centre @ nrm), float(centre @ d)
    rows = row_off + row_sp * np.arange(math.floor((c_n - reach - row_off) / row_sp),
                                        math.ceil((c_n + reach - row_off) / row_sp) + 1)
    along = c_d - reach + rng.uniform(0, plant_sp) + plant_sp * np.arange(int(2 * reach / plant_sp) + 1)
    rr, aa = np.meshgrid(rows, along, indexing="ij")
    rr = rr.ravel() + rng.normal(0, 0.05 * row_sp, rr.size)
    aa = aa.ravel() + rng.normal(0, 0.12 * plant_sp, aa.size)
    pos = rr[:, None] * nrm + aa[:, None] * d
    margin = 35 * s * growth
    keep = ((pos[:, 0] > -margin) & (pos[:, 0] < w + margin) & (pos[:, 1] > -margin) & (pos[:, 1] < h + margin)
            & (rng.random(len(pos)) > rng.uniform(0.03, 0.2)))
    pos = pos[keep]

    # ---- plants: one row per leaf group, (class, cx, cy, start, taper, fullness, lobes, lobe depth,
    # colour jitter, r, g, b), and the group's per-leaf (angles, lengths, half widths, bends) ----
    crops, weeds = [], []
    crop_base = np.array([rng.uniform(50, 85), rng.uniform(120, 160), rng.uniform(35, 65)])
    for cx, cy in pos:
        colour = crop_base * rng.uniform(0.9, 1.1)
        size = growth * rng.uniform(20, 30) * s
        n = int(rng.integers(5, 9))
        ang = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n) / n + rng.normal(0, 0.15, n)
        lens = size * rng.uniform(0.75, 1.1, n)
        crops.append(((1, cx, cy, 0.06, 0.7, 0.5, 0, 0.0, 0.07, *colour),
                      (ang, lens, lens * rng.uniform(0.24, 0.32, n), rng.normal(0, 0.08, n))))
        m = int(rng.integers(2, 4))  # younger inner leaves: smaller, lighter, on top
        ang = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(m) / m + rng.normal(0, 0.2, m)
        lens = 0.5 * size * rng.uniform(0.8, 1.1, m)
        crops.append(((1, cx, cy, 0.06, 0.7, 0.5, 0, 0.0, 0.07, *(colour * 1.1)),
                      (ang, lens, lens * rng.uniform(0.26, 0.34, m), rng.normal(0, 0.05, m))))

    weed_growth = rng.uniform(0.7, 1.2)
    for _ in range(max(int(area >= 0.5), int(rng.poisson(rng.uniform(4, 16) * area)))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.55:
            colour = (rng.uniform(140, 175), rng.uniform(160, 195), rng.uniform(40, 75))  # yellowish green
        else:
            colour = (rng.uniform(28, 55), rng.uniform(70, 100), rng.uniform(22, 45))  # dark green
        style = rng.random()
        if style < 0.35:  # grass: long narrow blades fanning out
            n = int(rng.integers(3, 8))
            ang = rng.uniform(0, 2 * math.pi) + rng.normal(0, 0.7, n)
            lens = weed_growth * rng.uniform(16, 34, n) * s
            shape = (0.0, 0.5, 1.0, 0, 0.0)
            hws = np.maximum(lens * rng.uniform(0.045, 0.07, n), 1.3)
            bends = rng.normal(0, 0.2, n)
        elif style < 0.7:  # lobed leaves
            n = int(rng.integers(4, 8))
            ang = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n) / n + rng.normal(0, 0.2, n)
            lens = weed_growth * rng.uniform(8, 16, n) * s
            shape = (0.0, 1.0, 1.0, int(rng.integers(2, 4)), rng.uniform(0.35, 0.5))
            hws = lens * rng.uniform(0.3, 0.38, n)
            bends = rng.normal(0, 0.05, n)
        else:  # small rosette of thin leaves
            n = int(rng.integers(4, 9))
            ang = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n) / n + rng.normal(0, 0.2, n)
            lens = weed_growth * rng.uniform(9, 18, n) * s
            shape = (0.0, 0.8, 1.0, 0, 0.0)
            hws = np.maximum(lens * rng.uniform(0.1, 0.16, n), 1.2)
            bends = rng.normal(0, 0.1, n)
        weeds.append(((2, cx, cy, *shape, 0.06, *colour), (ang, lens, hws, bends)))

    under = rng.random(len(weeds)) < 0.5  # weeds drawn under or over the crops
    groups = [g for g, u in zip(weeds, under) if u] + crops + [g for g, u in zip(weeds, under) if not u]
    counts = [len(g[1][0]) for g in groups]
    per = np.repeat(np.array([g[0] for g in groups], np.float64), counts, axis=0)  # [L, 12]
    ang, lens, hws, bends = (np.concatenate([g[1][i] for g in groups]) for i in range(4))
    outline, half, midrib = _leaves(per[:, 1], per[:, 2], ang, lens, hws, bends, *per[:, 3:8].T)
    outline, half, midrib = _fixed(outline), _fixed(half), _fixed(midrib[:, 1:-5])
    cls = per[:, 0].astype(np.int64).tolist()
    colours = per[:, 9:12] * rng.uniform(1 - per[:, 8], 1 + per[:, 8])[:, None]
    shade = (0.1 * np.cos(ang - math.pi / 2 - light))[:, None]  # the half facing the light is brighter
    dark, bright, ribs = _colours(colours * (1 - shade)), _colours(colours * (1 + shade)), _colours(colours * 1.25)

    labels = np.zeros((h, w), np.uint8)
    for i, c in enumerate(cls):
        cv2.fillPoly(labels, [outline[i]], c, _HARD, _SHIFT)

    # ---- soil at half resolution: noise, furrows on the rows, tillage stripes, light gradient ----
    h2, w2, x, y = _half(h, w)
    low = _smooth(rng, h2, w2, 55 * s)
    mid = _smooth(rng, h2, w2, 14 * s)
    proj = x * np.float32(nrm[0]) + y * np.float32(nrm[1])
    furrow = np.cos((proj - np.float32(row_off)) * np.float32(2 * math.pi / row_sp) + 0.6 * low)  # +1 on ridges
    tillage = np.cos(proj * np.float32(2 * math.pi * int(rng.integers(3, 7)) / row_sp) + 1.5 * mid)
    lum = 0.12 * low + 0.07 * mid + rng.uniform(0.03, 0.09) * furrow + 0.025 * tillage
    lum += 1.0
    g = rng.uniform(0, 2 * math.pi)
    grad = x * np.float32(math.cos(g) * 2 / diag) + y * np.float32(math.sin(g) * 2 / diag)
    grad -= np.float32((w / 2 * math.cos(g) + h / 2 * math.sin(g)) * 2 / diag)
    lum *= 1.0 + rng.uniform(0.05, 0.2) * grad
    # plant shadows: the vegetation mask, shifted away from the light and blurred
    lut = np.full(256, 255, np.uint8)
    lut[0] = 0
    shadow = cv2.resize(cv2.LUT(labels, lut), (w2, h2), interpolation=cv2.INTER_AREA)
    off = rng.uniform(1.0, 2.5) * s  # half-resolution pixels
    move = np.float32([[1, 0, off * math.cos(light + math.pi)], [0, 1, off * math.sin(light + math.pi)]])
    shadow = cv2.warpAffine(shadow, move, (w2, h2), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    k = 2 * int(1.2 * s) + 3
    shadow = cv2.blur(shadow, (k, k))
    lum *= 1.0 - np.float32(rng.uniform(0.25, 0.45) / 255.0) * shadow
    v = rng.uniform(85, 135)
    soil_base = np.array([v, v * rng.uniform(0.7, 0.78), v * rng.uniform(0.46, 0.58)])
    soil = cv2.convertScaleAbs(_rgb(lum, soil_base, add=(5.0 * mid, None, None)))
    img = cv2.resize(soil, (w, h), interpolation=cv2.INTER_LINEAR)

    # pebbles and clods (image only: they are soil)
    for _ in range(int(rng.poisson(rng.uniform(10, 45) * area))):
        grey = rng.uniform(0.3, 0.8)
        colour = (soil_base * (1 - grey) + grey * soil_base.mean()) * rng.uniform(0.75, 1.5)
        ax = rng.uniform(1.2, 4.5) * s
        cv2.ellipse(img, (int(rng.uniform(0, w) * _ONE), int(rng.uniform(0, h) * _ONE)),
                    (int(ax * _ONE), int(ax * rng.uniform(0.5, 1.0) * _ONE)), rng.uniform(0, 180), 0, 360,
                    _colours(colour), -1, _AA, _SHIFT)

    # ---- leaves in the image: the label polygons, anti-aliased, two-tone halves, crop midribs ----
    for i, c in enumerate(cls):
        cv2.fillPoly(img, [outline[i]], dark[i], _AA, _SHIFT)
        cv2.fillPoly(img, [half[i]], bright[i], _AA, _SHIFT)
        if c == 1:
            cv2.polylines(img, [midrib[i]], False, ribs[i], 1, _AA, _SHIFT)

    fine = _smooth(rng, h, w, 4 * s)
    image = _finish(rng, img, labels, fine, (0.09, 0.08, 0.07), blur=rng.uniform(0.5, 0.9),
                    grain=rng.uniform(2.0, 4.5), vignette=rng.uniform(0.0, 0.15))
    return image, labels


# --------------------------------------------------------------------------------------- underwater

_FISH_COLOURS = np.array([
    (185, 190, 195), (225, 205, 60), (235, 125, 45), (60, 100, 180), (70, 72, 85), (200, 70, 70),
    (140, 90, 170), (230, 230, 210),
], np.float64)
_REEF_COLOURS = np.array([
    (130, 95, 75), (135, 75, 125), (200, 115, 80), (115, 125, 75), (190, 120, 140), (95, 90, 85),
], np.float64)


def _blob(rng, cx, cy, rx, ry, n=40):
    """Irregular closed outline: an ellipse with random low-order radial harmonics."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    k = np.arange(2, 7)[:, None]
    amp = rng.uniform(0, 0.22, 5)[:, None] / np.sqrt(k - 1)
    r = 1.0 + (amp * np.sin(k * t + rng.uniform(0, 2 * math.pi, 5)[:, None])).sum(0)
    return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], axis=-1)


def _underwater(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s, area = _scale(h, w)
    h2, w2, x, y = _half(h, w)  # the smooth background is rendered at half resolution

    # ---- water: vertical gradient, caustics and light rays near the surface -------------------
    green = rng.uniform()
    top = (np.array([70, 165, 215]) * (1 - green) + np.array([95, 190, 170]) * green) * rng.uniform(0.85, 1.08)
    bottom = (np.array([10, 45, 95]) * (1 - green) + np.array([15, 70, 70]) * green) * rng.uniform(0.8, 1.25)
    gamma = rng.uniform(0.7, 1.3)
    t = (np.arange(h) / max(h - 1, 1)) ** gamma
    water_rows = top[None] * (1 - t[:, None]) + bottom[None] * t[:, None]  # [h, 3] colour per image row
    t2 = np.clip(y / max(h - 1, 1), 0, 1) ** gamma
    hc = max(2, int(math.ceil(0.3 * h)))  # caustics in the upper 60 % (half-resolution rows)
    fade = np.clip(1.0 - y[:hc] / (2 * hc), 0, 1) ** 1.5
    n1 = np.abs(_smooth(rng, hc, w2, 15 * s))
    n2 = np.abs(_smooth(rng, hc, w2, 6.5 * s))
    caustic = np.clip(1.0 - 1.8 * n1, 0, 1) ** 4 + 0.7 * np.clip(1.0 - 1.8 * n2, 0, 1) ** 4
    slope = np.float32(rng.uniform(-0.4, 0.4))
    ray_x = x + slope * y[:hc]
    rays = np.sin(ray_x * np.float32(2 * math.pi / (rng.uniform(40, 90) * s))) \
        * np.sin(ray_x * np.float32(2 * math.pi / (rng.uniform(110, 200) * s)) + np.float32(rng.uniform(0, 6.3)))
    bright = np.zeros((h2, w2), np.float32)
    bright[:hc] = (rng.uniform(25, 50) * caustic + rng.uniform(8, 18) * np.maximum(rays, 0)) * fade
    water = cv2.merge([bright + (top[c] * (1 - t2) + bottom[c] * t2).astype(np.float32) for c in range(3)])
    img = cv2.resize(cv2.convertScaleAbs(water), (w, h), interpolation=cv2.INTER_LINEAR)

    # ---- sea floor below a wavy boundary ------------------------------------------------------
    xs = np.arange(w, dtype=np.float64)
    y0 = rng.uniform(0.5, 0.72) * h
    boundary = (y0 + rng.uniform(3, 20) * s * np.sin(2 * math.pi * xs / (rng.uniform(0.5, 1.5) * w) + rng.uniform(0, 6.3))
                + rng.uniform(2, 8) * s * np.sin(2 * math.pi * xs / (rng.uniform(60, 160) * s) + rng.uniform(0, 6.3))
                + rng.uniform(2, 7) * s * _smooth1d(rng, w, 24 * s))
    boundary = np.clip(boundary, 0.3 * h, h - 2).astype(np.float32)
    labels = (np.arange(h, dtype=np.float32)[:, None] >= boundary[None, :]).astype(np.uint8)
    ys = int(boundary.min()) // 2  # first half-resolution row that holds sea floor
    yy = y[ys:]
    tint = rng.uniform(0.15, 0.35)
    sand = np.array([rng.uniform(175, 215), rng.uniform(160, 190), rng.uniform(115, 145)]) * (1 - tint) \
        + tint * 2.0 * bottom
    m = _smooth(rng, h2 - ys, w2, 20 * s)
    a = rng.uniform(-0.3, 0.3)
    period = rng.uniform(12, 22) * s
    ripple = np.sin((x * np.float32(math.cos(a)) + yy * np.float32(2.5 * math.sin(a) + 1.2))
                    * np.float32(2 * math.pi / period) + 2.5 * m)
    lum = 1.0 + 0.06 * ripple + 0.1 * m
    dist = np.clip((yy - boundary[None, ::2]) * np.float32(1.0 / (h - y0 + 1)), 0, 1)
    haze = (1 - dist) ** 2 * np.float32(rng.uniform(0.3, 0.6))  # far (near the boundary) fades into the water
    haze_colour = water_rows[min(int(y0), h - 1)]
    lum *= 1 - haze
    floor = cv2.convertScaleAbs(_rgb(lum, sand, add=[haze * np.float32(c) for c in haze_colour]))
    floor = cv2.resize(floor, (w, h - 2 * ys), interpolation=cv2.INTER_LINEAR)
    cv2.copyTo(floor, labels[2 * ys:], img[2 * ys:])  # writes into img

    # ---- reef: irregular blobs (some with branches) on the floor, up to a cover target --------
    target = rng.uniform(0.04, 0.13) * h * w
    floor_mean = sand * 0.55
    for _ in range(8):
        x0 = rng.uniform(0, w)
        yb = float(boundary[min(int(x0), w - 1)])
        base_y = yb + rng.uniform(0.03, 0.35) * (h - yb)
        r = min(rng.uniform(22, 60) * s, 0.2 * min(h, w))
        near = (1 - min(1.0, (base_y - yb) / (h - y0 + 1))) ** 2  # far reefs fade into the water
        colour = _REEF_COLOURS[rng.integers(len(_REEF_COLOURS))] * rng.uniform(0.8, 1.15)
        colour = colour * (1 - 0.5 * near) + 0.5 * near * haze_colour
        cv2.ellipse(img, (int(x0 * _ONE), int((base_y - 0.05 * r) * _ONE)), (int(0.9 * r * _ONE), int(0.15 * r * _ONE)),
                    0, 0, 360, _colours(floor_mean), -1, _AA, _SHIFT)  # contact shadow (image only)
        for _ in range(int(rng.integers(2, 5))):
            rx = r * rng.uniform(0.5, 1.0)
            pts = _fixed(_blob(rng, x0 + rng.normal(0, 0.6 * r), base_y - rng.uniform(0.1, 0.7) * rx, rx,
                               rx * rng.uniform(0.55, 0.9)))
            cv2.fillPoly(img, [pts], _colours(colour * rng.uniform(0.85, 1.15)), _AA, _SHIFT)
            cv2.fillPoly(labels, [pts], 3, _HARD, _SHIFT)
        if rng.random() < 0.4:  # branching coral
            thick = max(2, int(rng.uniform(2.5, 5.0) * s))
            for _ in range(int(rng.integers(3, 8))):
                px, py = x0 + rng.normal(0, 0.5 * r), base_y - rng.uniform(0.3, 0.8) * r
                ang = -math.pi / 2 + rng.normal(0, 0.5)
                pts = [(px, py)]
                for _ in range(int(rng.integers(2, 5))):
                    ang += rng.normal(0, 0.35)
                    step = rng.uniform(8, 18) * s
                    px, py = px + step * math.cos(ang), py + step * math.sin(ang)
                    pts.append((px, py))
                line = _fixed(pts)
                cv2.polylines(img, [line], False, _colours(colour * rng.uniform(0.9, 1.2)), thick, _AA, _SHIFT)
                cv2.polylines(labels, [line], False, 3, thick, _HARD, _SHIFT)
        if np.count_nonzero(labels == 3) >= target:
            break

    # ---- fish: ellipse body, forked tail, dorsal fin, eye; sometimes a school ------------------
    fish = []
    for _ in range(max(int(area >= 0.5), int(rng.poisson(rng.uniform(3, 9) * area)))):
        fish.append((rng.uniform(-0.03, 1.03) * w, rng.uniform(0.06 * h, y0 + 0.1 * (h - y0)),
                     rng.uniform(22, 80) * s, int(rng.integers(len(_FISH_COLOURS))), float(rng.choice([-1.0, 1.0])),
                     rng.normal(0, 0.15)))
    if rng.random() < 0.4 * min(1.0, area):  # a school of similar fish
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1 * h, 0.8 * y0)
        length, ci = rng.uniform(16, 30) * s, int(rng.integers(len(_FISH_COLOURS)))
        facing, tilt = float(rng.choice([-1.0, 1.0])), rng.normal(0, 0.1)
        for _ in range(int(rng.integers(5, 15))):
            fish.append((cx + rng.normal(0, 3 * length), cy + rng.normal(0, 1.2 * length),
                         length * rng.uniform(0.85, 1.15), ci, facing, tilt + rng.normal(0, 0.08)))
    fish.sort(key=lambda f: f[2])  # small (far) ones first
    phi = np.linspace(0, 2 * math.pi, 28, endpoint=False)
    for cx, cy, length, ci, facing, tilt in fish:
        a = length / 2
        b = a * rng.uniform(0.3, 0.45)
        hz = min(0.6, max(0.0, 1 - length / (70 * s)) * 0.8)  # small = far = hazier
        colour = _FISH_COLOURS[ci] * rng.uniform(0.85, 1.1) * (1 - hz) + hz * water_rows[int(np.clip(cy, 0, h - 1))]
        angle = tilt if facing > 0 else math.pi - tilt

        def world(u, v):  # fish frame: u towards the head, v up (mirrored when facing left)
            return _to_world(np.asarray(u, float), -np.asarray(v, float) * facing, cx, cy, angle)

        body = _fixed(world(a * np.cos(phi), b * np.sin(phi)))
        belly = _fixed(world(a * 0.92 * np.cos(phi[15:27]), b * 0.92 * np.sin(phi[15:27])))
        tail = _fixed(world([-0.8 * a, -1.45 * a, -1.22 * a, -1.45 * a], [0, 0.85 * b, 0, -0.85 * b]))
        fin = _fixed(world([-0.35 * a, 0.25 * a, -0.45 * a], [0.9 * b, 0.9 * b, 1.45 * b]))
        fins = _colours(colour * 0.75)
        for poly, c in ((tail, fins), (fin, fins), (body, _colours(colour)), (belly, _colours(colour * 1.2 + 12))):
            cv2.fillPoly(img, [poly], c, _AA, _SHIFT)
        if rng.random() < 0.3:  # dark vertical bars, inside the body ellipse
            for uu in (-0.4, 0.0, 0.4):
                vv = 0.9 * b * math.sqrt(1 - uu * uu)
                cv2.polylines(img, [_fixed(world([uu * a, uu * a], [vv, -vv]))], False, _colours(colour * 0.45),
                              max(1, int(0.12 * a)), _AA, _SHIFT)
        eye = _fixed(world(0.62 * a, 0.2 * b))
        cv2.circle(img, (int(eye[0]), int(eye[1])), int(max(1.0, 0.13 * b) * _ONE), (20, 20, 25), -1, _AA, _SHIFT)
        for poly in (tail, fin, body):
            cv2.fillPoly(labels, [poly], 2, _HARD, _SHIFT)

    texture = _smooth(rng, h, w, 3.5 * s)
    image = _finish(rng, img, labels, texture, (0.015, 0.05, 0.04, 0.22), blur=rng.uniform(0.6, 1.1),
                    grain=rng.uniform(2.0, 4.0), vignette=rng.uniform(0.1, 0.35))
    return image, labels
