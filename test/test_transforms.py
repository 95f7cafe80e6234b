"""Tests of training/evaluation preprocessing (clustvit_core.data.transforms)."""
import random
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from clustvit_core.data.transforms import (
    EvalTransform, TrainTransform, crop_box, photometric_distortion,
)
from clustvit_core.errors import ConfigError, InputError
from clustvit_core.predictor import slide_logits
from clustvit_core.preprocessing import preprocess, rescale_shape

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)  # classes 0..3


def colour_scene(h=96, w=128):
    """Labels in large, left-right asymmetric blocks (plus an ignore block); the image is the class colour."""
    labels = np.zeros((h, w), np.uint8)
    labels[: h // 3, w // 5 :] = 1
    labels[h // 2 :, : w // 3] = 2
    labels[h // 2 :, w // 2 : w // 2 + w // 8] = 3
    labels[h // 4 : h // 4 + h // 6, w // 2 : w // 2 + w // 5] = 255
    image = np.full((h, w, 3), 90, np.uint8)
    valid = labels != 255
    image[valid] = PALETTE[labels[valid]]
    return image, labels


def to_uint8(x):
    """Undo the normalization: float [3, H, W] -> uint8-valued float [H, W, 3]."""
    return (x.permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)).round()


def interior(labels):
    """Pixels whose 5x5 neighbourhood inside the crop holds a single label (crop borders count as boundary)."""
    out = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        mask = (labels == c).astype(np.uint8)
        out |= cv2.erode(mask, np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return out


def test_shapes_and_dtypes():
    image, labels = colour_scene()
    x, y = TrainTransform(64, MEAN, STD)(image, labels, seed=3)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (64, 64) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3, 255}


@pytest.mark.parametrize("photometric", [False, True])
def test_labels_stay_aligned_with_pixels(photometric):
    """Every interior labelled pixel keeps its class colour; flips and crops move image and labels together."""
    image, labels = colour_scene()
    tf = TrainTransform(64, MEAN, STD, photometric=photometric)
    plain = TrainTransform(64, MEAN, STD, photometric=False)
    flipped_seen = set()
    for seed in range(24):
        x, y = tf(image, labels, seed)
        y = y.numpy()
        if photometric:  # same geometry stream: identical labels with and without colour jitter
            assert np.array_equal(y, plain(image, labels, seed)[1].numpy())
            continue
        rgb = to_uint8(x)
        check = interior(y) & (y != 255)
        assert check.sum() > 200
        assert np.abs(rgb[check] - PALETTE[y[check]]).max() <= 1, f"seed {seed}: colours do not match labels"
        # left-right orientation of the (asymmetric) layout: class 2 is on the left of class 3 unless flipped
        if (y == 2).any() and (y == 3).any():
            flipped_seen.add(np.nonzero(y == 2)[1].mean() > np.nonzero(y == 3)[1].mean())
    if not photometric:
        assert flipped_seen == {False, True}


def test_flip_and_crop_are_exact_without_resize():
    # 64x256 fits (4*64, 64) exactly at ratio 1: no resize; the crop picks a 64-wide window.
    h, w = 64, 256
    labels = np.tile((np.arange(w) % 250).astype(np.uint8), (h, 1))
    image = np.stack([labels, 255 - labels, np.full_like(labels, 7)], axis=-1)
    tf = TrainTransform(64, [0, 0, 0], [1, 1, 1], scale=(1.0, 1.0), cat_max_ratio=1.0, photometric=False)
    flips = set()
    for seed in range(16):
        x, y = tf(image, labels, seed)
        y = y.numpy()
        flipped = y[0, 0] > y[0, -1]
        flips.add(bool(flipped))
        x0 = int(y[0, -1] if flipped else y[0, 0])
        expect_labels = labels[:, x0 : x0 + 64]
        expect_image = image[:, x0 : x0 + 64]
        if flipped:
            expect_labels, expect_image = expect_labels[:, ::-1], expect_image[:, ::-1]
        assert np.array_equal(y, expect_labels)
        assert np.array_equal(x.permute(1, 2, 0).numpy(), expect_image.astype(np.float32))
    assert flips == {False, True}


def test_pad_small_images():
    image, labels = colour_scene(32, 40)
    # scale 0.5: fits (128, 32); a 32x40 image stays as it is and is padded to 64x64
    x, y = TrainTransform(64, MEAN, STD, scale=(0.5, 0.5), flip=False, photometric=False)(image, labels, 0)
    assert torch.equal(y[:32, :40], torch.from_numpy(labels.astype(np.int64)))
    assert (y[32:] == 255).all() and (y[:, 40:] == 255).all()
    assert (x[:, 32:] == 0).all() and (x[:, :, 40:] == 0).all()  # mmseg pads after normalization: 0 = mean colour
    assert torch.allclose(x[:, :32, :40], preprocess(image, (32, 40), MEAN, STD)[0])


def test_resize_follows_mmseg_rescale():
    # mmcv rescale_size: factor = min(long / max(h, w), short / min(h, w))
    assert rescale_shape(1024, 2048, 2048, 512) == (512, 1024)
    assert rescale_shape(966, 1296, 2048, 512) == (512, 687)
    assert rescale_shape(100, 1000, 400, 100) == (40, 400)
    image, labels = colour_scene(512, 512)
    # ratio 1 for size 64: fit (256, 64) -> 64x64, whole image in the crop
    x, y = TrainTransform(64, MEAN, STD, scale=(1.0, 1.0), flip=False, photometric=False)(image, labels, 0)
    assert torch.equal(y, torch.from_numpy(cv2.resize(labels, (64, 64), interpolation=cv2.INTER_NEAREST).astype(np.int64)))
    assert torch.allclose(x, preprocess(image, 64, MEAN, STD)[0])


def test_deterministic_per_seed_across_threads():
    image, labels = colour_scene()
    tf = TrainTransform(64, MEAN, STD)
    np.random.seed(1)
    a = tf(image, labels, 5)
    np.random.seed(2)
    torch.manual_seed(2)
    b = tf(image, labels, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outputs = [tf(image, labels, s) for s in range(8)]
    assert len({o[0].numpy().tobytes() for o in outputs}) == 8  # different seeds, different crops/colours
    # threads: single-threaded libraries and concurrent calls on one instance give the same outputs
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        single = [tf(image, labels, s) for s in range(8)]
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda s: tf(image, labels, s), range(8)))
    for o, s1, p in zip(outputs, single, parallel):
        assert torch.equal(o[0], s1[0]) and torch.equal(o[1], s1[1])
        assert torch.equal(o[0], p[0]) and torch.equal(o[1], p[1])


def test_global_rng_state_untouched():
    image, labels = colour_scene()
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    TrainTransform(64, MEAN, STD)(image, labels, 11)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and np.random.get_state()[2] == np_state[2]
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def stripes(h=64, w=256):
    """Class 1 where (x mod 128) < 64, else 0; top 16 rows ignored. Half the 64-wide crops hold 25-75 % class 1."""
    labels = np.where((np.arange(w) % 128) < 64, 1, 0).astype(np.uint8)[None].repeat(h, 0)
    labels[:16] = 255
    image = PALETTE[np.minimum(labels, 3)]
    return image, labels


def max_share(y):
    counts = np.bincount(y[y != 255].ravel())
    counts = counts[counts > 0]
    return counts.max() / counts.sum(), len(counts)


def test_cat_max_ratio_is_respected_when_possible():
    image, labels = stripes()
    kwargs = dict(scale=(1.0, 1.0), flip=False, photometric=False)
    checked = TrainTransform(64, MEAN, STD, cat_max_ratio=0.75, **kwargs)
    unchecked = TrainTransform(64, MEAN, STD, cat_max_ratio=1.0, **kwargs)
    good = [max_share(checked(image, labels, s)[1].numpy()) for s in range(40)]
    assert all(share < 0.75 and n > 1 for share, n in good)
    bad = [max_share(unchecked(image, labels, s)[1].numpy())[0] >= 0.75 for s in range(40)]
    assert sum(bad) >= 10  # without the check, about half of the crops are dominated by one class


def test_crop_box_gives_up_after_ten_tries():
    labels = np.zeros((64, 256), np.uint8)  # one class only: no crop can satisfy the ratio
    y0, y1, x0, x1 = crop_box(labels, 64, np.random.default_rng(0), 0.75)
    assert (y1 - y0, x1 - x0) == (64, 64) and 0 <= x0 <= 192


def test_photometric_distortion_is_seeded_and_keeps_uint8():
    image, _ = colour_scene()
    outs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(6)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert np.array_equal(outs[0], photometric_distortion(image, np.random.default_rng(0)))
    assert sum(not np.array_equal(o, image) for o in outs) >= 4


def test_bad_inputs_raise_clear_errors():
    image, labels = colour_scene()
    tf = TrainTransform(64, MEAN, STD)
    with pytest.raises(InputError, match="uint8 RGB"):
        tf(image.astype(np.float32), labels, 0)
    with pytest.raises(InputError, match="labels must be"):
        tf(image, labels[:10], 0)
    with pytest.raises(ConfigError, match="TrainTransform: seed must be an int >= 0"):
        tf(image, labels, -1)


def test_eval_transform_is_the_predictor_preprocessing():
    image, _ = colour_scene(70, 90)
    x = EvalTransform(64, MEAN, STD)(image)
    assert x.shape == (3, 64, 64)
    assert torch.equal(x, preprocess(image, 64, MEAN, STD)[0])


class PixelModel(torch.nn.Module):
    """A per-pixel model (1x1 conv): slide inference must equal running it on the whole image."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.num_classes = classes

    def forward(self, x, keep_bias=0.0):
        class Out:
            pass

        out = Out()
        out.logits = self.conv(x)
        out.tokens = torch.tensor([x.shape[-1] * x.shape[-2]])
        return out


def test_slide_logits_averages_windows_like_mmseg():
    model = PixelModel()
    x = torch.randn(1, 3, 100, 150)
    windows = []
    with torch.no_grad():
        slid = slide_logits(model, x, crop=64, stride=42, num_classes=3, window_outputs=windows)
        assert torch.allclose(slid, model(x).logits, atol=1e-6)
    # mmseg grid: rows (100-64+41)//42+1 = 2, cols (150-64+41)//42+1 = 4; last windows end at the border
    assert len(windows) == 8
    starts = sorted({(y0, x0) for y0, x0, _ in windows})
    assert starts[-1] == (100 - 64, 150 - 64)
    assert {y0 for y0, _ in starts} == {0, 36} and {x0 for _, x0 in starts} == {0, 42, 84, 86}
    small = torch.randn(1, 3, 40, 50)  # smaller than a window: one window, the whole image
    windows.clear()
    with torch.no_grad():
        slide_logits(model, small, 64, 42, 3, window_outputs=windows)
    assert len(windows) == 1 and windows[0][2].logits.shape[-2:] == (40, 50)
