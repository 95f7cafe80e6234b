"""clustvit_core.predictor: Segmenter on the shipped demo model (synthetic_agri_k3_ip3, CPU), its
configuration errors, resolve_device and labels_at. No ROS."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clustvit_core.data.synthetic import make_scene
from clustvit_core.errors import ClustViTError, ConfigError, InputError, WeightsError
from clustvit_core.devices import resolve_device
from clustvit_core.predictor import Segmentation, Segmenter, labels_at
from clustvit_core.registry import default_weights, load_config

DEMO = "synthetic_agri_k3_ip3"
NETWORK = load_config(DEMO).data.input_size[0]  # the demo model's training size (square)
PATCH = load_config(DEMO).patch_size
PATCH_TOKENS = (NETWORK // PATCH) ** 2


@pytest.fixture(scope="module")
def seg():
    try:
        default_weights(DEMO)
    except WeightsError as exc:
        pytest.skip(f"demo weights not available: {exc}")
    return Segmenter(DEMO, device="cpu")


def check_result(r: Segmentation, shape, num_classes=3, network=NETWORK):
    """Every invariant a Segmentation promises for an input of `shape` (H, W)."""
    H, W = shape
    assert r.labels.shape == (H, W) and r.labels.dtype == np.uint8
    assert int(r.labels.max()) < num_classes
    assert r.class_pixels.shape == (num_classes,) and int(r.class_pixels.sum()) == H * W
    np.testing.assert_array_equal(r.class_pixels, np.bincount(r.labels.ravel(), minlength=num_classes))
    assert r.network_size == (network, network)
    assert r.patch_tokens == (network // PATCH) ** 2
    assert r.tokens == r.kept_tokens + r.clusters_used
    assert 0 < r.tokens <= r.patch_tokens
    assert r.cluster_ids is not None and r.cluster_ids.shape == (network // PATCH, network // PATCH)
    assert r.kept_tokens == int((r.cluster_ids == 0).sum())
    assert r.clusters_used == len(set(np.unique(r.cluster_ids).tolist()) - {0, -1})  # -1: letterbox padding, left out
    assert -1 <= r.cluster_ids.min() and r.cluster_ids.max() <= 3  # k = 3; -1 only on letterbox padding
    assert r.preprocess_ms > 0 and r.inference_ms > 0 and r.postprocess_ms > 0


def test_demo_model_metadata(seg):
    assert seg.name == DEMO and seg.class_names == ["soil", "crop", "weed"] and seg.num_classes == 3
    assert seg.k == 3 and seg.size == (NETWORK, NETWORK) and seg.device == torch.device("cpu") and seg.precision == "fp32"
    assert seg.palette.shape == (3, 3) and seg.palette.dtype == np.uint8 and seg.label_dtype == np.uint8


@pytest.mark.parametrize("shape", [(120, 200), (301, 97), (256, 256), (16, 16)])
def test_labels_at_input_resolution_and_consistent_counts(seg, shape):
    image, _ = make_scene("agri", 3, shape)
    check_result(seg(image), shape)


def test_predictions_beat_the_all_soil_baseline(seg):
    """The weights really are loaded: on synthetic scenes the model is clearly better than 'all soil'."""
    accuracy, baseline = [], []
    for seed in (11, 12, 13):
        image, labels = make_scene("agri", seed, (256, 256))
        accuracy.append((seg(image).labels == labels).mean())
        baseline.append((labels == 0).mean())
    assert np.mean(accuracy) > np.mean(baseline) + 0.02, (accuracy, baseline)


def test_deterministic(seg):
    image, _ = make_scene("agri", 4, (100, 140))
    a, b = seg(image), seg(image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.cluster_ids, b.cluster_ids)
    assert a.tokens == b.tokens


def test_bf16_on_cpu_agrees_with_fp32(seg):
    image, _ = make_scene("agri", 3, (240, 320))
    bf16 = Segmenter(DEMO, device="cpu", precision="bf16")
    a, b = seg(image), bf16(image)
    check_result(b, (240, 320))
    assert (a.labels == b.labels).mean() > 0.98
    assert abs(a.tokens - b.tokens) <= 0.1 * PATCH_TOKENS


def test_large_keep_bias_keeps_every_token(seg):
    image, _ = make_scene("agri", 5, (180, 240))
    r = seg(image, keep_bias=50.0)
    check_result(r, (180, 240))
    assert r.tokens == r.kept_tokens == r.patch_tokens == PATCH_TOKENS
    assert r.clusters_used == 0 and not r.cluster_ids.any()


def test_negative_keep_bias_merges_more(seg):
    image, _ = make_scene("agri", 5, (180, 240))
    at_zero, merged = seg(image, keep_bias=0.0), seg(image, keep_bias=-5.0)
    check_result(merged, (180, 240))
    assert at_zero.tokens < PATCH_TOKENS  # the demo model merges background at the default bias
    assert merged.tokens < at_zero.tokens and merged.kept_tokens < at_zero.kept_tokens
    assert merged.clusters_used >= 1


def test_input_size_override_changes_the_network_size():
    small = Segmenter(DEMO, device="cpu", input_size=8 * PATCH)
    assert small.size == (8 * PATCH, 8 * PATCH)
    image, _ = make_scene("agri", 6, (90, 150))
    r = small(image, keep_bias=50.0)
    check_result(r, (90, 150), network=8 * PATCH)
    assert r.patch_tokens == 64 and r.tokens == 64


def test_rejects_images_that_are_not_rgb_uint8(seg):
    image, _ = make_scene("agri", 7, (32, 32))
    for bad in (image[..., 0], image.astype(np.float32), image[..., :2], np.dstack([image, image[..., :1]])):
        with pytest.raises(InputError, match="uint8 RGB"):
            seg(bad)


# ----------------------------------------------------------------------------- configuration errors

def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(model="no_such_model"), ConfigError, ["no_such_model", DEMO]),
    (dict(weights="/nonexistent/x.safetensors"), WeightsError, ["/nonexistent/x.safetensors"]),
    (dict(precision="fp16"), ConfigError, ["fp16", "CUDA"]),
    (dict(precision="fp8"), ConfigError, ["fp8", "fp32"]),
    (dict(input_size=100), ConfigError, ["input_size=100", f"multiple of the model's patch size {PATCH}"]),
    (dict(input_size=8), ConfigError, ["input_size=8"]),
    (dict(device="tpu"), ConfigError, ["tpu"]),
    (dict(device="cuda:x"), ConfigError, ["cuda:x"]),
], ids=["unknown_model", "missing_weights", "fp16_on_cpu", "unknown_precision", "input_size_100", "input_size_8",
        "unknown_device", "bad_cuda_index"])
def test_configuration_errors_are_one_line(kwargs, error, words):
    kwargs = {"model": DEMO, "device": "cpu", **kwargs}
    with pytest.raises(error) as info:
        Segmenter(kwargs.pop("model"), **kwargs)
    text = one_line(info.value)
    assert isinstance(info.value, ClustViTError)
    for word in words:
        assert word in text, text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_cuda_without_gpu(device):
    if device == "auto":
        assert resolve_device("auto") == torch.device("cpu")
        return
    with pytest.raises(ConfigError, match="no CUDA device") as info:
        Segmenter(DEMO, device=device)
    one_line(info.value)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    for bad in ("gpu", "meta", "cuda:-1"):
        with pytest.raises(ConfigError):
            resolve_device(bad)


# ----------------------------------------------------------------------------- labels_at

def reference_labels(logits: torch.Tensor, size) -> tuple[np.ndarray, np.ndarray]:
    """(argmax of F.interpolate(bilinear, align_corners=False), margin between the two best classes)."""
    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if up.shape[0] == 1:
        return up.argmax(0).numpy(), np.full(size, np.inf)
    top = up.topk(2, dim=0).values
    return up.argmax(0).numpy(), (top[0] - top[1]).numpy()


@pytest.mark.parametrize("classes", [1, 2, 3, 7, 19, 150])
@pytest.mark.parametrize("grid, size", [((16, 16), (120, 200)), ((8, 12), (301, 97)), ((16, 16), (16, 16)),
                                        ((16, 16), (10, 7))],
                         ids=["up", "up_nonsquare", "same", "down"])
def test_labels_at_matches_interpolate_argmax(classes, grid, size):
    g = torch.Generator().manual_seed(classes * 1000 + size[0])
    logits = torch.randn(classes, *grid, generator=g)
    labels = labels_at(logits, size)
    expected, margin = reference_labels(logits, size)
    assert labels.shape == size and labels.dtype == np.int64
    differ = labels != expected
    # float rounding may flip a pixel whose two best classes are within 1e-4; nothing else may differ
    assert not (differ & (margin > 1e-4)).any(), f"{int(differ.sum())} pixels differ"
    assert differ.mean() < 1e-3


def test_labels_at_half_precision_logits():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 16, 16, generator=g).half()
    expected, margin = reference_labels(logits, (64, 48))
    labels = labels_at(logits, (64, 48))
    assert not ((labels != expected) & (margin > 1e-3)).any()


def test_more_than_255_classes_give_uint16_labels(tmp_path):
    """A 300-class model (random weights saved to a file): labels are uint16 (the node's mono16 mask)."""
    from clustvit_core.registry import build_model, load_config
    from clustvit_core.weights import save_checkpoint

    cfg = load_config(DEMO, num_classes=300, depth=2, ip=1)
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = save_checkpoint(tmp_path / "wide.safetensors", model.state_dict(), cfg)
    wide = Segmenter(cfg, weights, device="cpu")
    r = wide(make_scene("agri", 1, (64, 80))[0])
    assert wide.label_dtype == np.uint16 and r.labels.dtype == np.uint16 and r.labels.shape == (64, 80)
    assert r.class_pixels.shape == (300,) and r.class_pixels.sum() == 64 * 80
    assert r.labels.max() < 300


def test_confidence_is_the_winning_softmax_probability():
    from clustvit_core.predictor import labels_and_confidence_at

    torch.manual_seed(0)
    logits = torch.randn(3, 8, 10) * 3
    labels, conf = labels_and_confidence_at(logits, (40, 50))
    up = F.interpolate(logits[None], size=(40, 50), mode="bilinear", align_corners=False)[0]
    prob, expected = up.softmax(0).max(0)
    assert conf.dtype == np.uint8 and conf.shape == (40, 50)
    assert (labels == expected.numpy()).mean() > 0.999  # OpenCV vs torch resampling: ties at most
    assert np.abs(conf.astype(int) - (prob * 255).round().numpy().astype(int)).max() <= 1
    assert np.array_equal(labels, labels_at(logits, (40, 50)))


def test_segmenter_confidence_on_request(seg):
    image = make_scene("agri", 5, (90, 120))[0]
    plain = seg(image)
    withconf = seg(image, confidence=True)
    assert plain.confidence is None and np.array_equal(plain.labels, withconf.labels)
    assert withconf.confidence.shape == (90, 120) and withconf.confidence.min() >= 255 // 3


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_the_mean():
    from clustvit_core.preprocessing import letterbox

    image = np.full((90, 160, 3), 200, np.uint8)
    out, content = letterbox(image, (128, 128), [127.5, 127.5, 127.5])
    assert out.shape == (128, 128, 3) and content == (72, 128)
    assert (out[:72] == 200).all() and (out[72:] == 128).all()  # padding normalizes to ~0


def test_letterbox_masks_align_with_the_input(seg):
    """An object at a known place of a wide frame lands at the same place in the letterboxed mask."""
    lb = Segmenter(DEMO, device="cpu", resize_mode="letterbox")
    image, labels = make_scene("agri", 11, (120, 320))
    stretched, boxed = seg(image), lb(image)
    content = (round(120 * NETWORK / 320), NETWORK)  # the frame scaled to fit, aspect kept
    assert boxed.labels.shape == (120, 320) and boxed.content_size == content and boxed.network_size == (NETWORK, NETWORK)
    assert stretched.content_size == (NETWORK, NETWORK)
    for r in (stretched, boxed):
        assert (r.labels == labels).mean() > 0.8  # both put the plants where the ground truth has them
    with pytest.raises(ConfigError, match="resize_mode='crop'"):
        Segmenter(DEMO, device="cpu", resize_mode="crop")


# ----------------------------------------------------------------------------- batches (several cameras)

BATCH_SHAPES = [(120, 160), (480, 640), (301, 97)]  # one batch, three sizes: each resized to the network


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_segment_batch_equals_one_image_at_a_time(seg, resize_mode):
    """segment_batch runs one forward pass over images of different sizes; each image gets what
    __call__ gives it alone: its own token count, clusters and labels at its own resolution."""
    s = seg if resize_mode == "stretch" else Segmenter(DEMO, device="cpu", resize_mode=resize_mode)
    images = [make_scene("agri", 20 + i, shape)[0] for i, shape in enumerate(BATCH_SHAPES)]
    batch = s.segment_batch(images, keep_bias=-0.5, confidence=True)
    assert len(batch) == len(images)
    for image, shape, b in zip(images, BATCH_SHAPES, batch):
        a = s(image, keep_bias=-0.5, confidence=True)
        check_result(b, shape)
        assert (b.tokens, b.kept_tokens, b.clusters_used) == (a.tokens, a.kept_tokens, a.clusters_used)
        np.testing.assert_array_equal(b.cluster_ids, a.cluster_ids)
        assert b.content_size == a.content_size and b.network_size == a.network_size
        assert (b.labels == a.labels).mean() >= 0.999  # batched vs single matmuls: rounding ties at most
        np.testing.assert_array_equal(b.class_pixels, np.bincount(b.labels.ravel(), minlength=3))
        assert np.abs(b.confidence.astype(int) - a.confidence).max() <= 1
    assert len({r.tokens for r in batch}) > 1  # the images really kept different numbers of tokens
    assert len({r.inference_ms for r in batch}) == 1  # one forward pass, its time shared
    assert s.segment_batch([]) == []


def test_segment_batch_on_the_onnxruntime_backend(tmp_path):
    """OnnxModel takes a batch too (image by image inside): segment_batch gives what __call__ gives."""
    pytest.importorskip("onnxruntime")
    from clustvit_core.onnx_runtime import export_onnx
    from clustvit_core.registry import build_model, load_config

    torch.manual_seed(0)
    model = build_model(load_config(DEMO, depth=2, ip=1, img_size=4 * PATCH)).eval()
    onnx_seg = Segmenter(str(export_onnx(model, tmp_path / "tiny.onnx")), providers=["cpu"])
    images = [make_scene("agri", 30 + i, shape)[0] for i, shape in enumerate(BATCH_SHAPES)]
    for image, b in zip(images, onnx_seg.segment_batch(images)):
        a = onnx_seg(image)
        assert b.labels.shape == image.shape[:2] and b.network_size == (4 * PATCH, 4 * PATCH)
        assert (b.tokens, b.kept_tokens) == (a.tokens, a.kept_tokens)
        np.testing.assert_array_equal(b.labels, a.labels)


@pytest.mark.parametrize("precision, providers", [("bf16", ["cpu"]), ("fp16", ["cpu"]), ("fp16", ["cuda"])])
def test_onnxruntime_precision_it_cannot_run_is_one_line(tmp_path, precision, providers):
    """ONNX Runtime runs the exported fp32 graph; only TensorRT makes fp16 engines: any other precision is an error,
    not a silent fp32 run (checked before a session is made, so no provider needs to be installed)."""
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError) as info:
        Segmenter(str(tmp_path / "model.onnx"), precision=precision, providers=providers)
    text = one_line(info.value)
    assert f"precision={precision} with backend onnxruntime" in text and "precision fp32" in text
