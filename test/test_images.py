"""clustvit_ros.images, the one image codec: sensor_msgs Image / CompressedImage -> RGB uint8 arrays (the
node) or their own values (the bag tools: label maps, masks) and back, and the FrameError checks the node
relies on to survive malformed frames. No DDS, no rclpy.init()."""
import cv2
import numpy as np
import pytest

pytest.importorskip("cv_bridge", reason="cv_bridge not installed (requirements-ros.txt)")
sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs not installed (scripts/ros_setup.sh)")
Image, CompressedImage = sensor_msgs.Image, sensor_msgs.CompressedImage
# cv_bridge 1.13 calls ndarray.tostring() (deprecated in NumPy 2.x, removed in 2.3); rclpy's type support
# imports lark, which imports deprecated modules
pytestmark = [pytest.mark.filterwarnings("ignore:tostring:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")]

from clustvit_ros.images import (ENCODINGS, MAX_SIDE, FrameError, array_to_image, check_image,  # noqa: E402
                                 decode_image, image_to_rgb)


@pytest.fixture(scope="module")
def rgb():
    """A 37x53 RGB image (odd sizes: no accidental alignment) with all channel values different."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)


def make_image(array: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False) -> Image:
    """sensor_msgs/Image of `array` [H, W(, C)] with `pad` extra bytes at the end of each row."""
    h, w = array.shape[:2]
    if array.dtype == np.uint16:
        array = array.astype(">u2" if bigendian else "<u2")
    rows = array.reshape(h, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


def with_alpha(rgb: np.ndarray) -> np.ndarray:
    alpha = np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def as_input(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """The pixel array a camera would send for `rgb` in `encoding`."""
    return {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": with_alpha(rgb),
        "bgra8": with_alpha(rgb[..., ::-1]),
    }[encoding]


# ----------------------------------------------------------------------------- Image: decoding

@pytest.mark.parametrize("pad", [0, 5], ids=["packed", "padded_rows"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_color_encodings_decode_to_rgb(rgb, encoding, pad):
    out = image_to_rgb(make_image(np.ascontiguousarray(as_input(rgb, encoding)), encoding, pad=pad))
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 3])
def test_mono8_repeats_gray_in_three_channels(rgb, pad):
    gray = rgb[..., 1].copy()
    out = image_to_rgb(make_image(gray, "mono8", pad=pad))
    assert out.shape == gray.shape + (3,) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def mono16_values(shape) -> np.ndarray:
    """uint16 values over the whole range, including 0, 65535 and exact multiples of 257."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    values.flat[:4] = [0, 65535, 257 * 100, 257 * 100 + 128]
    return values


@pytest.mark.parametrize("pad", [0, 4])
def test_mono16_is_scaled_to_8_bits(pad):
    values = mono16_values((21, 34))
    out = image_to_rgb(make_image(values, "mono16", pad=pad))
    expected = np.rint(values.astype(np.float64) / 257).astype(np.uint8)
    assert out.shape == (21, 34, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)
    assert out.flat[0] == 0 and out[0, 1, 0] == 255 and out[0, 2, 0] == 100


def test_big_endian_mono16_with_row_padding():
    values = mono16_values((9, 14))
    out = image_to_rgb(make_image(values, "mono16", pad=6, bigendian=True))
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 257).astype(np.uint8))


@pytest.mark.parametrize("encoding", ["mono16", "rgb8"])
def test_big_endian_frame_without_padding(rgb, encoding):
    """is_bigendian=1 on a little-endian host: mono16 must be byte-swapped; for 8-bit encodings it means nothing."""
    if encoding == "mono16":
        values = mono16_values((9, 14))
        out = image_to_rgb(make_image(values, "mono16", bigendian=True))
        np.testing.assert_array_equal(out[..., 0], np.rint(values / 257).astype(np.uint8))
    else:
        np.testing.assert_array_equal(image_to_rgb(make_image(rgb, "rgb8", bigendian=True)), rgb)


def test_decoded_image_is_a_copy(rgb):
    msg = make_image(rgb, "rgb8")
    out = image_to_rgb(msg)
    out[...] = 0  # writable, and writing it leaves the message alone
    assert bytes(msg.data) == rgb.tobytes()


def test_decode_image_keeps_label_values(rgb):
    """Label maps and masks keep their class ids: mono8 stays uint8 [H, W], mono16 uint16 [H, W] (not scaled)."""
    gray = rgb[..., 0].copy()
    out = decode_image(make_image(gray, "mono8", pad=3))
    assert out.dtype == np.uint8 and out.shape == gray.shape
    np.testing.assert_array_equal(out, gray)
    values = mono16_values((5, 6))
    for bigendian in (False, True):
        out = decode_image(make_image(values, "mono16", pad=2, bigendian=bigendian))
        assert out.dtype == np.uint16 and out.shape == values.shape
        np.testing.assert_array_equal(out, values)


def test_rosbags_and_rclpy_messages_decode_alike(rgb):
    """The same codec reads the bag tools' rosbags messages and the node's rclpy messages."""
    pytest.importorskip("rosbags", reason="rosbags not installed (requirements-ros.txt)")
    from rclpy.serialization import serialize_message

    from clustvit_ros.bags import IMAGE_TYPE, typestore

    for array, encoding in ((np.ascontiguousarray(rgb[..., ::-1]), "bgr8"), (mono16_values((5, 6)), "mono16")):
        msg = make_image(array, encoding, pad=4)
        recorded = typestore().deserialize_cdr(serialize_message(msg), IMAGE_TYPE)
        np.testing.assert_array_equal(decode_image(recorded), decode_image(msg))
        np.testing.assert_array_equal(image_to_rgb(recorded), image_to_rgb(msg))
    np.testing.assert_array_equal(decode_image(make_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")), rgb)


# ----------------------------------------------------------------------------- Image: malformed frames

def malformed(kind: str) -> Image:
    """A 4x6 rgb8 frame broken in one way."""
    good = make_image(np.zeros((4, 6, 3), np.uint8), "rgb8")
    if kind == "32FC1":
        return make_image(np.zeros((4, 6), np.float32).view(np.uint8).reshape(4, 24), "32FC1")
    if kind == "yuv422":
        good.encoding = "yuv422"
    elif kind == "empty_encoding":
        good.encoding = ""
    elif kind == "zero_width":
        good.width, good.step, good.data = 0, 0, b""
    elif kind == "zero_height":
        good.height, good.data = 0, b""
    elif kind == "huge":
        good.width, good.step = MAX_SIDE + 1, 3 * (MAX_SIDE + 1)
    elif kind == "step_shorter_than_row":
        good.step = 17  # a row is 18 bytes
        good.data = bytes(17 * 4)
    elif kind == "data_too_short":
        good.data = bytes(18 * 4 - 1)
    elif kind == "data_too_long":
        good.data = bytes(18 * 4 + 18)
    elif kind == "data_fits_width_but_not_step":
        good.step = 20
    else:
        raise AssertionError(kind)
    return good


MALFORMED = {  # kind -> a word the reason must contain
    "32FC1": "32FC1", "yuv422": "yuv422", "empty_encoding": "unsupported encoding",
    "zero_width": "empty", "zero_height": "empty", "huge": str(MAX_SIDE),
    "step_shorter_than_row": "step 17", "data_too_short": "71 bytes", "data_too_long": "90 bytes",
    "data_fits_width_but_not_step": "80",
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_image_raises_frame_error_with_reason(kind):
    msg = malformed(kind)
    for check in (check_image, image_to_rgb):
        with pytest.raises(FrameError) as info:
            check(msg)
        reason = str(info.value)
        assert MALFORMED[kind] in reason, reason
        assert "\n" not in reason and len(reason) < 300
    assert issubclass(FrameError, ValueError)


def test_unsupported_encoding_reason_lists_the_supported_ones():
    reason = str(pytest.raises(FrameError, check_image, malformed("yuv422")).value)
    assert all(enc in reason for enc in ENCODINGS), reason


def test_wellformed_frames_pass_the_check(rgb):
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        check_image(make_image(np.ascontiguousarray(as_input(rgb, encoding)), encoding, pad=2))
    check_image(make_image(rgb[..., 0].copy(), "mono8"))
    check_image(make_image(mono16_values((3, 3)), "mono16"))


# ----------------------------------------------------------------------------- CompressedImage

def compressed(rgb: np.ndarray, fmt: str) -> CompressedImage:
    ok, buf = cv2.imencode("." + fmt, np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 else rgb)
    assert ok
    msg = CompressedImage(format=fmt)
    msg.data = buf.tobytes()
    return msg


def smooth_rgb(h=48, w=64) -> np.ndarray:
    """A smooth image (JPEG-friendly) with distinct channels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def test_png_decodes_exactly(rgb):
    out = image_to_rgb(compressed(rgb, "png"))
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_gray_png_decodes_to_three_equal_channels(rgb):
    gray = rgb[..., 0].copy()
    out = image_to_rgb(compressed(gray, "png"))
    assert out.shape == gray.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_gray_png_keeps_one_channel_in_decode_image(rgb):
    gray = rgb[..., 0].copy()
    np.testing.assert_array_equal(decode_image(compressed(gray, "png")), gray)


def test_16_bit_png_is_scaled_to_8_bits_for_the_network():
    values = mono16_values((7, 9))
    np.testing.assert_array_equal(decode_image(compressed(values, "png")), values)
    np.testing.assert_array_equal(image_to_rgb(compressed(values, "png"))[..., 1], np.rint(values / 257).astype(np.uint8))


def test_jpeg_decodes_approximately_in_rgb_order():
    image = smooth_rgb()
    out = image_to_rgb(compressed(image, "jpeg"))
    assert out.shape == image.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - image.astype(int))
    assert err.mean() < 3.0, err.mean()
    # channel order: decoding as BGR would swap R and B, an error of ~tens of levels
    swapped = np.abs(out[..., ::-1].astype(int) - image.astype(int)).mean()
    assert swapped > 10 * max(err.mean(), 0.5)


@pytest.mark.parametrize("data", [b"", b"\x89PNG garbage" + bytes(range(256)), bytes(1000)],
                         ids=["empty", "garbage", "zeros"])
def test_undecodable_compressed_raises_frame_error(data):
    msg = CompressedImage(format="png")
    msg.data = data
    with pytest.raises(FrameError) as info:
        image_to_rgb(msg)
    reason = str(info.value)
    assert ("empty" in reason if not data else "decode" in reason), reason
    assert "\n" not in reason


# ----------------------------------------------------------------------------- array_to_image

def header(sec=1_763_000_123, nanosec=987_654_321, frame_id="camera_optical_frame"):
    from std_msgs.msg import Header

    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def test_array_to_image_rgb8_round_trip_keeps_header(rgb):
    hdr = header()
    msg = array_to_image(rgb, "rgb8", hdr)
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 53, 37, 53 * 3)
    assert msg.header.stamp.sec == 1_763_000_123 and msg.header.stamp.nanosec == 987_654_321
    assert msg.header.frame_id == "camera_optical_frame"
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_array_to_image_mono8_and_mono16_labels():
    labels = (np.arange(15 * 22) % 3).astype(np.uint8).reshape(15, 22)
    msg = array_to_image(labels, "mono8", header(frame_id="a"))
    assert (msg.encoding, msg.step, msg.header.frame_id) == ("mono8", 22, "a")
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(15, 22), labels)

    labels16 = (np.arange(15 * 22) * 211).astype(np.uint16).reshape(15, 22)
    msg = array_to_image(labels16, "mono16")
    assert msg.encoding == "mono16" and msg.step == 44 and not msg.is_bigendian
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), "<u2").reshape(15, 22), labels16)


def test_array_to_image_non_contiguous_input(rgb):
    view = rgb[::2, ::3]  # strided view: must be copied, not misread
    np.testing.assert_array_equal(image_to_rgb(array_to_image(view, "rgb8")), view)


# ------------------------------------------------------------------ bounded input (issue 12)

def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk announcing width x height, followed by junk (no valid pixels)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + b"\x00" * 1000)


def test_compressed_dimensions_read_from_headers():
    from clustvit_ros.images import compressed_dimensions

    image = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg"):
        ok, data = cv2.imencode(ext, image)
        assert ok and compressed_dimensions(data.tobytes()) == (53, 37), ext
    assert compressed_dimensions(_png_header(20000, 20000)) == (20000, 20000)
    assert compressed_dimensions(b"GIF89a....") is None and compressed_dimensions(b"\xff\xd8\xff") is None


def test_decompression_bomb_is_refused_before_decoding():
    import time

    from clustvit_ros.images import FrameError, check_compressed, decode_image

    class Msg:
        format = "png"
        data = _png_header(20000, 20000)

    start = time.perf_counter()
    with pytest.raises(FrameError, match="20000x20000 = 400000000 pixels exceeds max_input_pixels=16777216"):
        decode_image(Msg(), max_pixels=4096 * 4096)
    assert time.perf_counter() - start < 0.1
    with pytest.raises(FrameError, match="neither PNG nor JPEG"):
        check_compressed(type("M", (), {"format": "gif", "data": b"GIF89a" + b"\0" * 20})())
