"""sensor_msgs image messages <-> numpy RGB arrays, via cv_bridge, with every check a camera stream needs.

A malformed frame raises `FrameError` with the reason (the node counts it, warns, and keeps running).
Importing this module needs cv_bridge but not rclpy (messages are duck-typed).
"""
from __future__ import annotations

import numpy as np
from cv_bridge import CvBridge, CvBridgeError

# Encodings the node accepts: bytes per pixel. mono16 is scaled to 8 bits (value / 257).
SUPPORTED_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2}
MAX_SIDE = 16384  # larger sides are rejected rather than allocated

_bridge = CvBridge()


class FrameError(ValueError):
    """An input frame that cannot be used; str() is the reason, one line."""


def check_image(msg) -> None:
    """Raise FrameError if a sensor_msgs/Image cannot be decoded: unsupported encoding, zero or huge
    size, a row step shorter than a row, or a data length that is not step * height."""
    encoding = msg.encoding
    if encoding not in SUPPORTED_ENCODINGS:
        raise FrameError(f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    if msg.width == 0 or msg.height == 0:
        raise FrameError(f"empty image ({msg.width}x{msg.height})")
    if max(msg.width, msg.height) > MAX_SIDE:
        raise FrameError(f"image of {msg.width}x{msg.height} pixels exceeds {MAX_SIDE} per side")
    row = msg.width * SUPPORTED_ENCODINGS[encoding]
    if msg.step < row:
        raise FrameError(f"step {msg.step} < width {msg.width} x {SUPPORTED_ENCODINGS[encoding]} bytes ({encoding})")
    if len(msg.data) != msg.step * msg.height:
        raise FrameError(f"data has {len(msg.data)} bytes, expected step {msg.step} x height {msg.height} "
                         f"= {msg.step * msg.height}")


def to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit values -> uint8, rounded value / 257 (0 -> 0, 65535 -> 255)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 [H, W, 3] (a new array). Raises FrameError."""
    check_image(msg)
    bpp = SUPPORTED_ENCODINGS[msg.encoding]
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * bpp]
    if msg.encoding == "mono16":
        # numpy, not cv_bridge: cv_bridge 1.13 fails on big-endian data under NumPy 2 (ndarray.newbyteorder)
        gray = np.ascontiguousarray(rows).view(">u2" if msg.is_bigendian else "<u2")
        return np.repeat(to_8bit(gray)[..., None], 3, axis=2)
    if msg.step != msg.width * bpp or msg.is_bigendian:
        # cv_bridge 1.13 ignores `step` and trips over the big-endian flag (meaningless for 8-bit
        # channels): hand it the packed pixels instead.
        shape = (msg.height, msg.width) if bpp == 1 else (msg.height, msg.width, bpp)
        msg = _bridge.cv2_to_imgmsg(np.ascontiguousarray(rows).reshape(shape), encoding=msg.encoding)
    try:
        # a copy: for rgb8 cv_bridge returns a view of the message's buffer
        return np.array(_bridge.imgmsg_to_cv2(msg, "rgb8"), dtype=np.uint8, copy=True)
    except (CvBridgeError, TypeError, ValueError, AttributeError) as exc:
        raise FrameError(f"cv_bridge could not convert the {msg.encoding} image: {exc}") from None


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ... anything OpenCV decodes) -> RGB uint8 [H, W, 3]."""
    if len(msg.data) == 0:
        raise FrameError("empty compressed image")
    try:
        image = _bridge.compressed_imgmsg_to_cv2(msg, "passthrough")
    except (CvBridgeError, TypeError, ValueError) as exc:
        raise FrameError(f"could not decode compressed image (format {msg.format!r}): {exc}") from None
    if image is None or image.size == 0:
        raise FrameError(f"could not decode compressed image (format {msg.format!r})")
    if image.dtype == np.uint16:
        image = to_8bit(image)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image[..., ::-1])  # OpenCV decodes to BGR


def array_to_image(array: np.ndarray, encoding: str, header=None):
    """numpy array -> sensor_msgs/Image with `encoding` (rgb8, mono8, mono16) and the given header."""
    msg = _bridge.cv2_to_imgmsg(np.ascontiguousarray(array), encoding=encoding)
    if header is not None:
        msg.header = header
    return msg
