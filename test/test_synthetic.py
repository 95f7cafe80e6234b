"""Tests of the deterministic synthetic scene generator (clustvit_core.data.synthetic)."""
import time

import cv2
import numpy as np
import pytest

from clustvit_core.data.synthetic import CLASS_NAMES, PALETTES, SCENES, SyntheticScenes, make_scene
from clustvit_core.visualize import colorize

BACKGROUND = {"agri": (0,), "underwater": (0, 1)}  # soil; water and sea floor
NUM = 10


@pytest.fixture(scope="module")
def scenes():
    """NUM 512x512 scenes per kind (seeds 0..NUM-1), generated once."""
    return {kind: [make_scene(kind, seed) for seed in range(NUM)] for kind in SCENES}


def pure_background_share(labels: np.ndarray, kind: str, patch: int = 16) -> float:
    h, w = labels.shape[0] // patch, labels.shape[1] // patch
    cells = labels[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h * w, -1)
    pure = (cells == cells[:, :1]).all(axis=1) & np.isin(cells[:, 0], BACKGROUND[kind])
    return float(pure.mean())


def greenness(pixels: np.ndarray) -> float:
    p = pixels.astype(np.float64)
    return float((p[:, 1] - (p[:, 0] + p[:, 2]) / 2).mean())


def interior(labels: np.ndarray, cls: int) -> np.ndarray:
    """Pixels of class `cls` at least 2 pixels away from any other class (free of anti-aliasing and blur)."""
    return cv2.erode((labels == cls).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def test_constants():
    assert SCENES == ("agri", "underwater")
    assert CLASS_NAMES == {"agri": ["soil", "crop", "weed"], "underwater": ["water", "seafloor", "fish", "reef"]}
    for kind in SCENES:
        assert len(PALETTES[kind]) == len(CLASS_NAMES[kind])
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTES[kind])
        assert len(set(map(tuple, PALETTES[kind]))) == len(PALETTES[kind])


@pytest.mark.parametrize("kind", SCENES)
def test_deterministic(kind):
    img_a, lab_a = make_scene(kind, 7, 128)
    img_b, lab_b = make_scene(kind, 7, 128)
    assert np.array_equal(img_a, img_b) and np.array_equal(lab_a, lab_b)
    img_c, lab_c = make_scene(kind, 8, 128)
    assert not np.array_equal(img_a, img_c)
    assert not np.array_equal(lab_a, lab_c)
    # numpy integer seeds and (H, W) given as a list give the same scene
    img_d, lab_d = make_scene(kind, np.int64(7), [128, 128])
    assert np.array_equal(img_a, img_d) and np.array_equal(lab_a, lab_d)
    # the two kinds do not share a random stream
    other = SCENES[1 - SCENES.index(kind)]
    assert not np.array_equal(img_a, make_scene(other, 7, 128)[0])


@pytest.mark.parametrize("kind", SCENES)
@pytest.mark.parametrize("size", [16, 17, 100, 224, (16, 16), (48, 80), (77, 130), (130, 77), (31, 300), (512, 384)])
def test_shapes_and_dtypes(kind, size):
    h, w = (size, size) if isinstance(size, int) else size
    img, labels = make_scene(kind, 3, size)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    assert labels.max() < len(CLASS_NAMES[kind])
    assert img.std() > 1.0  # not a blank image


@pytest.mark.parametrize("kind", SCENES)
def test_label_values_and_all_classes_appear(kind, scenes):
    seen = np.zeros(len(CLASS_NAMES[kind]), bool)
    for _, labels in scenes[kind]:
        assert int(labels.max()) < len(CLASS_NAMES[kind])
        seen |= np.bincount(labels.ravel(), minlength=len(seen)).astype(bool)
    assert seen.all(), f"classes never drawn: {[CLASS_NAMES[kind][i] for i in np.flatnonzero(~seen)]}"


@pytest.mark.parametrize("kind", SCENES)
def test_background_dominated(kind, scenes):
    shares = [pure_background_share(labels, kind) for _, labels in scenes[kind]]
    assert np.mean(shares) >= 0.5, shares
    assert min(shares) >= 0.35, shares
    covers = [float(np.isin(labels, BACKGROUND[kind], invert=True).mean()) for _, labels in scenes[kind]]
    assert 0.05 <= np.mean(covers) <= 0.25, covers
    assert 0.02 <= min(covers) and max(covers) <= 0.35, covers


def test_agri_colour_statistics(scenes):
    for img, labels in scenes["agri"]:
        pix = img.reshape(-1, 3)
        soil, crop = pix[interior(labels, 0).ravel()], pix[interior(labels, 1).ravel()]
        assert greenness(crop) > greenness(soil) + 20
        soil_mean = soil.mean(0)
        assert soil_mean[0] > soil_mean[1] > soil_mean[2]  # brown
        weed = pix[(labels == 2).ravel()]
        if len(weed) > 50:
            assert greenness(weed) > greenness(soil) + 10


def test_underwater_colour_statistics(scenes):
    for img, labels in scenes["underwater"]:
        pix = img.reshape(-1, 3).astype(np.float64)
        means = [pix[interior(labels, c).ravel()].mean(0) for c in (0, 1)]
        water, floor = means
        assert water[2] - water[0] > floor[2] - floor[0] + 20  # water is bluer than the sand
        assert floor.sum() > 0  # sanity
        # water darkens with depth: top rows brighter than the water just above the floor
        top = img[: img.shape[0] // 8][labels[: img.shape[0] // 8] == 0].mean()
        assert top > water.mean()


@pytest.mark.parametrize("kind", SCENES)
def test_image_edges_follow_label_edges(kind, scenes):
    """Labels and image come from the same polygons: colour changes concentrate on label boundaries."""
    for img, labels in scenes[kind][:4]:
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        grad = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        kernel = np.ones((3, 3), np.uint8)
        edge = (cv2.dilate(labels, kernel) != cv2.erode(labels, kernel))
        far = ~cv2.dilate(edge.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert grad[edge].mean() > 2.0 * grad[far].mean()


def test_palettes_colorize():
    """Scene labels are coloured by the one `colorize` (clustvit_core.visualize) through PALETTES[kind]."""
    assert sorted(PALETTES) == sorted(CLASS_NAMES) == sorted(SCENES)
    assert all(len(PALETTES[kind]) == len(CLASS_NAMES[kind]) for kind in SCENES)
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    rgb = colorize(labels, PALETTES["underwater"])
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert [tuple(rgb.reshape(-1, 3)[i]) for i in range(4)] == [tuple(c) for c in PALETTES["underwater"]]
    outside = colorize(np.array([[3]], np.uint8), PALETTES["agri"], ignore_colour=(0, 0, 0))  # outside the agri palette
    assert tuple(outside[0, 0]) == (0, 0, 0)


def test_dataset():
    ds = SyntheticScenes("underwater", num_images=3, size=(40, 56), seed=2)
    assert len(ds) == 3 and ds.num_classes == 4 and ds.class_names == CLASS_NAMES["underwater"]
    img, labels = ds[1]
    assert img.shape == (40, 56, 3) and labels.shape == (40, 56)
    ref = make_scene("underwater", ds.scene_seed(1), (40, 56))
    assert np.array_equal(img, ref[0]) and np.array_equal(labels, ref[1])
    assert np.array_equal(ds[-1][0], ds[2][0])
    with pytest.raises(IndexError):
        ds[3]
    assert len(list(ds)) == 3  # iteration stops on IndexError
    other = SyntheticScenes("underwater", num_images=3, size=(40, 56), seed=3)
    assert not any(np.array_equal(ds[i][0], other[j][0]) for i in range(3) for j in range(3))
    assert len(SyntheticScenes()) == 100 and SyntheticScenes().size == (512, 512)
    assert len(SyntheticScenes(num_images=0)) == 0


def test_errors():
    with pytest.raises(ValueError, match="agri, underwater"):
        make_scene("forest", 0)
    with pytest.raises(ValueError, match="agri, underwater"):
        SyntheticScenes("forest")
    for size in (15, 0, -16, (16, 15), (8, 64), (15, 15)):
        with pytest.raises(ValueError, match="at least 16"):
            make_scene("agri", 0, size)
        with pytest.raises(ValueError, match="at least 16"):
            SyntheticScenes("agri", 2, size)
    for size in ((16, 16, 3), 16.0, "512", (16.0, 32)):
        with pytest.raises(ValueError, match="size"):
            make_scene("underwater", 0, size)
    for seed in (-1, 1.5, "0"):
        with pytest.raises(ValueError, match="seed"):
            make_scene("agri", seed)
    with pytest.raises(ValueError, match="num_images"):
        SyntheticScenes("agri", num_images=-1)


def test_fast_enough():
    """Loose guard against per-pixel Python loops (a 512x512 scene takes ~20-35 ms on one core)."""
    for kind in SCENES:
        make_scene(kind, 100)
        start = time.perf_counter()
        for seed in range(3):
            make_scene(kind, 101 + seed)
        assert (time.perf_counter() - start) / 3 < 0.5
