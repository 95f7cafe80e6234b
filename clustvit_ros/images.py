"""sensor_msgs images <-> numpy arrays: the one image codec of the node and the bag tools.

    decode_image(msg)        # Image or CompressedImage -> its pixel values: [H, W] for mono8 / mono16
                             # (uint8 / uint16: label maps and masks stay class ids), RGB uint8 [H, W, 3]
    image_to_rgb(msg)        # -> RGB uint8 [H, W, 3] always (what the network sees): mono16 scaled to 8 bit
    array_to_image(a, enc)   # numpy -> rclpy sensor_msgs/Image (cv_bridge), what the node publishes

Decoding reads rclpy and `rosbags` messages alike (they are duck-typed: height, width, encoding, step,
is_bigendian, data; or format, data), honours row padding (`step`) and byte order, and checks every
frame first: a malformed one raises `FrameError` with the reason, one line (the node counts it, warns
and keeps running; the bag tools report it as an InputError). Importing this module needs no ROS;
cv_bridge (which imports sensor_msgs) is loaded by array_to_image only.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np

from clustvit_core.errors import InputError


class Encoding(NamedTuple):
    channels: int
    dtype: type  # of one channel value

    @property
    def pixel_bytes(self) -> int:
        return self.channels * np.dtype(self.dtype).itemsize


# The raw encodings read and written: channels and value type. Colour ones decode to RGB (alpha dropped).
ENCODINGS = {"rgb8": Encoding(3, np.uint8), "bgr8": Encoding(3, np.uint8), "rgba8": Encoding(4, np.uint8),
             "bgra8": Encoding(4, np.uint8), "mono8": Encoding(1, np.uint8), "mono16": Encoding(1, np.uint16)}
MAX_SIDE = 16384  # larger sides are rejected rather than allocated


class FrameError(InputError):
    """An image message that cannot be decoded; str() is the reason, one line."""


def check_image(msg, max_pixels: int | None = None) -> None:
    """Raise FrameError if a sensor_msgs/Image cannot be decoded: unsupported encoding, zero or huge
    size (more than `max_pixels`), a row step shorter than a row, or a data length that is not step * height."""
    encoding = ENCODINGS.get(msg.encoding)
    if encoding is None:
        raise FrameError(f"unsupported encoding {msg.encoding!r} (supported: {', '.join(ENCODINGS)})")
    if msg.width == 0 or msg.height == 0:
        raise FrameError(f"empty image ({msg.width}x{msg.height})")
    check_pixels(msg.width, msg.height, max_pixels)
    if msg.step < msg.width * encoding.pixel_bytes:
        raise FrameError(f"step {msg.step} < width {msg.width} x {encoding.pixel_bytes} bytes ({msg.encoding})")
    if len(msg.data) != msg.step * msg.height:
        raise FrameError(f"data has {len(msg.data)} bytes, expected step {msg.step} x height {msg.height} "
                         f"= {msg.step * msg.height}")


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    """FrameError if width x height exceeds `max_pixels` (None: no limit beyond MAX_SIDE)."""
    if max_pixels is not None and width * height > max_pixels:
        raise FrameError(f"image of {width}x{height} = {width * height} pixels exceeds max_input_pixels={max_pixels}: "
                         "send smaller frames or raise the parameter")
    if max(width, height) > MAX_SIDE:
        raise FrameError(f"image of {width}x{height} pixels exceeds {MAX_SIDE} per side")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0..SOF15 but DHT C4, JPG C8, DAC CC): height and width follow.
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def compressed_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG (IHDR) or JPEG (SOF) header without decoding; None if neither."""
    data = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):  # walk the marker segments up to the frame header
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in JPEG_SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def check_compressed(msg, max_pixels: int | None = None) -> None:
    """Raise FrameError for a CompressedImage that is empty, not PNG/JPEG, or larger than `max_pixels`
    by its header: a decompression bomb is refused before any pixel is allocated."""
    if len(msg.data) == 0:
        raise FrameError("empty compressed image")
    size = compressed_dimensions(msg.data)
    if size is None:
        raise FrameError(f"could not decode compressed image: neither PNG nor JPEG (format {msg.format!r}), or its header is cut short")
    check_pixels(*size, max_pixels)


def is_compressed(msg) -> bool:
    """True for a sensor_msgs/CompressedImage (it has `format`), False for an Image."""
    return hasattr(msg, "format")


def decode_image(msg, max_pixels: int | None = None) -> np.ndarray:
    """An Image or CompressedImage as a new array of its values: [H, W] uint8 (mono8) or uint16 (mono16,
    e.g. the node's mask for > 255 classes), RGB uint8 [H, W, 3] for colour. Frames of more than
    `max_pixels` are refused before decoding. Raises FrameError."""
    return _decode_compressed(msg, max_pixels) if is_compressed(msg) else _decode_raw(msg, max_pixels)


def _decode_raw(msg, max_pixels: int | None = None) -> np.ndarray:
    check_image(msg, max_pixels)
    encoding = ENCODINGS[msg.encoding]
    h, w = msg.height, msg.width
    rows = np.frombuffer(msg.data, np.uint8).reshape(h, msg.step)[:, : w * encoding.pixel_bytes]
    stored = np.dtype(encoding.dtype).newbyteorder(">" if msg.is_bigendian else "<")  # 8 bit: order moot
    values = np.ascontiguousarray(rows).view(stored).astype(encoding.dtype)  # native order, a new array
    if encoding.channels == 1:
        return values.reshape(h, w)
    pixels = values.reshape(h, w, encoding.channels)[..., :3]
    return np.ascontiguousarray(pixels[..., ::-1] if msg.encoding.startswith("bgr") else pixels)


def _decode_compressed(msg, max_pixels: int | None = None) -> np.ndarray:
    check_compressed(msg, max_pixels)
    image = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise FrameError(f"could not decode compressed image (format {msg.format!r})")
    if image.ndim == 2:
        return image
    if image.shape[2] not in (3, 4):
        raise FrameError(f"compressed image with {image.shape[2]} channels (format {msg.format!r}): "
                         "expected gray, colour or colour with alpha")
    # OpenCV decodes colour to BGR(A)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit values -> uint8, rounded value / 257 (0 -> 0, 65535 -> 255)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """decode_image's result as RGB uint8 [H, W, 3]: 16-bit values scaled to 8 bits, gray repeated."""
    if pixels.dtype == np.uint16:
        pixels = to_8bit(pixels)
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    return pixels


def image_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """An Image or CompressedImage as RGB uint8 [H, W, 3] (a new array). Raises FrameError."""
    return to_rgb(decode_image(msg, max_pixels))


@functools.cache
def _bridge():
    from cv_bridge import CvBridge

    return CvBridge()


def array_to_image(array: np.ndarray, encoding: str, header=None):
    """numpy array -> rclpy sensor_msgs/Image with `encoding` (rgb8, mono8, mono16) and the given header."""
    msg = _bridge().cv2_to_imgmsg(np.ascontiguousarray(array), encoding=encoding)
    if header is not None:
        msg.header = header
    return msg
