"""rosbag2 bags of camera images (and ground-truth label maps) without a ROS install, on `rosbags`.

    write_image_bag("run1", frames, rate=10.0)          # frames: (rgb [H, W, 3], labels [H, W] or None)
    list_topics("run1")                                 # {'/camera/image_raw': BagTopic('sensor_msgs/msg/Image', 50), ...}
    for topic, time_ns, msgtype, data in read_messages("run1", ["/camera/image_raw"]): ...
    read_label_images("run1", "/labels")                # {header stamp ns: labels uint8 [H, W]}

A frame is a sensor_msgs/msg/Image (or CompressedImage, PNG or JPEG) on the image topic; its label
map, when given, is a mono8 sensor_msgs/msg/Image on the ground-truth topic with the *same header
stamp*, which is how evaluation matches ground truth to predictions. Bag receive times equal the
header stamps. Messages are CDR-serialized exactly as ROS 2 does, so `rclpy` can deserialize and
re-publish the raw bytes (see clustvit_ros.replay). Importing this module needs no rclpy.

Mistakes in paths, topics and message types raise clustvit_core.errors.InputError (one line naming
the bag or topic and the fix).
"""
from __future__ import annotations

import functools
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from clustvit_core.errors import InputError
from clustvit_ros import images

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
COLOR_ENCODINGS = ("rgb8", "bgr8")  # what write_image_bag writes for colour images
COMPRESSIONS = {"png": ".png", "jpeg": ".jpg"}
BAG_VERSION = 9  # rosbag2 metadata version written (Jazzy and later read it)


class BagTopic(NamedTuple):
    msgtype: str  # e.g. 'sensor_msgs/msg/Image'
    count: int  # messages on the topic


class BagMessage(NamedTuple):
    topic: str
    time_ns: int  # bag receive time
    msgtype: str
    data: bytes  # CDR-serialized message, as rclpy.serialization.serialize_message writes it


@functools.cache
def typestore():
    """The rosbags type store of ROS 2 Kilted (message classes and CDR serialization)."""
    return get_typestore(Stores.ROS2_KILTED)


# ------------------------------------------------------------------------------------------ writing

def write_image_bag(path: str | Path, frames: Iterable[tuple[np.ndarray, np.ndarray | None]], *,
                    topic: str = "/camera/image_raw", gt_topic: str = "/labels", rate: float = 10.0,
                    frame_id: str = "camera", storage: str = "sqlite3", encoding: str = "rgb8",
                    compressed: str | None = None, start_ns: int = 1_700_000_000_000_000_000,
                    progress: bool = False) -> int:
    """Write `frames` into a new rosbag2 bag at `path` (a folder, which must not exist yet).

    Args:
        frames: (rgb uint8 [H, W, 3], labels uint8 [H, W] or None) per frame; sizes may vary.
        topic: image topic; frame i has header stamp start_ns + i / rate seconds and `frame_id`.
        gt_topic: topic of the labels (mono8 Image, same header stamp as its frame); absent if no
            frame has labels.
        rate: frames per second (> 0).
        storage: 'sqlite3' or 'mcap'.
        encoding: 'rgb8' or 'bgr8' (channel order of raw images).
        compressed: None for raw Images, 'png' (lossless) or 'jpeg' for CompressedImages in
            image_transport's format ('rgb8; png compressed bgr8'). Labels are always raw.
        start_ns: header stamp of the first frame (default: a fixed time in November 2023, so
            that the same frames give the same bag).
        progress: show a tqdm progress bar.
    Returns:
        the number of frames written. On an error the partly written bag is removed.
    """
    path = Path(path)
    _check_choice("storage", storage, STORAGES)
    _check_choice("encoding", encoding, COLOR_ENCODINGS)
    if compressed is not None:
        _check_choice("compressed", compressed, COMPRESSIONS)
    if not rate > 0:
        raise InputError(f"rate {rate}: frames per second must be > 0")
    if path.exists():
        raise InputError(f"{path}: already exists; rosbag2 writes a new folder, so choose another path or delete it")
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=len(frames) if hasattr(frames, "__len__") else None, unit="frame")
    count = 0
    try:
        with Writer(path, version=BAG_VERSION, storage_plugin=STORAGES[storage]) as writer:
            image_connection = writer.add_connection(topic, COMPRESSED_TYPE if compressed else IMAGE_TYPE,
                                                     typestore=typestore())
            label_connection = None
            for count, (rgb, labels) in enumerate(frames, start=1):
                if labels is not None:
                    _check_labels(labels, rgb, count - 1)
                stamp = start_ns + round((count - 1) * 1e9 / rate)
                if compressed:
                    message, msgtype = compressed_message(rgb, stamp, frame_id, compressed, encoding), COMPRESSED_TYPE
                else:
                    message, msgtype = image_message(rgb, stamp, frame_id, encoding), IMAGE_TYPE
                writer.write(image_connection, stamp, typestore().serialize_cdr(message, msgtype))
                if labels is not None:
                    if label_connection is None:
                        label_connection = writer.add_connection(gt_topic, IMAGE_TYPE, typestore=typestore())
                    label = image_message(labels, stamp, frame_id, "mono8")
                    writer.write(label_connection, stamp, typestore().serialize_cdr(label, IMAGE_TYPE))
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return count


def image_message(pixels: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8"):
    """A rosbags sensor_msgs/msg/Image of `pixels`: RGB uint8 [H, W, 3] for 'rgb8'/'bgr8'
    (converted to the encoding's channel order), or uint8 [H, W] for 'mono8'."""
    if encoding == "mono8":
        h, w = pixels.shape
        data = pixels
    else:
        _check_rgb(pixels)
        h, w = pixels.shape[:2]
        data = pixels[..., ::-1] if encoding == "bgr8" else pixels
    types = typestore().types
    return types[IMAGE_TYPE](header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                             is_bigendian=0, step=w * images.ENCODINGS[encoding].pixel_bytes,
                             data=np.ascontiguousarray(data, dtype=np.uint8).reshape(-1))


def compressed_message(rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str = "png", encoding: str = "rgb8"):
    """A rosbags sensor_msgs/msg/CompressedImage of RGB uint8 [H, W, 3], `fmt` 'png' or 'jpeg'; `encoding`
    is the raw encoding named in the format string ('rgb8; png compressed bgr8', as image_transport writes)."""
    _check_rgb(rgb)
    ok, encoded = cv2.imencode(COMPRESSIONS[fmt], np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise InputError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} image as {fmt}")
    return typestore().types[COMPRESSED_TYPE](header=_header(stamp_ns, frame_id),
                                              format=f"{encoding}; {fmt} compressed bgr8",
                                              data=encoded.reshape(-1))


def _header(stamp_ns: int, frame_id: str):
    types = typestore().types
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                        frame_id=frame_id)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"{name} {value!r}: choose one of {', '.join(choices)}")


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        got = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise InputError(f"image must be uint8 RGB [H, W, 3], got {got}")


def _check_labels(labels: np.ndarray, rgb: np.ndarray, index: int) -> None:
    if not (isinstance(labels, np.ndarray) and labels.dtype == np.uint8 and labels.shape == rgb.shape[:2]):
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise InputError(f"frame {index}: labels must be uint8 [H, W] = {list(rgb.shape[:2])} like the image, got {got}")


# ------------------------------------------------------------------------------------------ reading

@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """An open rosbags AnyReader of the bag at `path`; InputError if it is missing or not a bag."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: bag not found; give the path of a rosbag2 bag folder (the one holding metadata.yaml)")
    try:
        reader = AnyReader([path])
        reader.open()
    except (AnyReaderError, FileNotFoundError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable rosbag2 bag ({reason}); give the bag folder, "
                         "the one holding metadata.yaml") from None
    try:
        yield reader
    finally:
        reader.close()


def list_topics(path: str | Path) -> dict[str, BagTopic]:
    """The bag's topics, sorted by name: {topic: BagTopic(msgtype, message count)}."""
    with open_bag(path) as reader:
        return {name: BagTopic(info.msgtype, info.msgcount) for name, info in sorted(reader.topics.items())}


def select_topics(path: str | Path, topics: Sequence[str] | None = None) -> dict[str, str]:
    """{topic: msgtype} of `topics` in the bag at `path`; None: every Image and CompressedImage topic.

    InputError, listing the bag's topics, if a topic is not in the bag or (topics None) none is an image topic.
    """
    available = list_topics(path)
    if topics is None:
        chosen = {t: info.msgtype for t, info in available.items() if info.msgtype in IMAGE_TYPES}
        if not chosen:
            raise InputError(f"{path}: no {' or '.join(IMAGE_TYPES)} topic in the bag; its topics: {_describe(available)}")
        return chosen
    missing = [t for t in topics if t not in available]
    if missing:
        raise InputError(f"{path}: topic {', '.join(missing)} not in the bag; its topics: {_describe(available)}")
    return {t: available[t].msgtype for t in dict.fromkeys(topics)}


def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
    """The messages of `topics` (None: every image topic, see select_topics) in bag-time order.

    Topics are checked now; the bag is read lazily, one message at a time, as the result is iterated.
    """
    chosen = select_topics(path, topics)
    return _messages(Path(path), chosen)


def _messages(path: Path, topics: dict[str, str]) -> Iterator[BagMessage]:
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic in topics]
        for connection, time_ns, data in reader.messages(connections=connections):
            yield BagMessage(connection.topic, time_ns, connection.msgtype, bytes(data))


def read_images(path: str | Path, topic: str) -> Iterator[tuple[int, np.ndarray]]:
    """(header stamp ns, images.decode_image(message)) of every message on image topic `topic`, in bag order."""
    msgtype = select_topics(path, [topic])[topic]
    if msgtype not in IMAGE_TYPES:
        raise InputError(f"{path}: topic {topic} holds {msgtype}, not {' or '.join(IMAGE_TYPES)}; "
                         f"choose an image topic: {_describe(list_topics(path))}")
    return _images(Path(path), topic, msgtype)


def _images(path: Path, topic: str, msgtype: str) -> Iterator[tuple[int, np.ndarray]]:
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for _, _, data in reader.messages(connections=connections):
            message = reader.deserialize(data, msgtype)
            yield stamp_ns(message.header), images.decode_image(message)


def read_label_images(path: str | Path, gt_topic: str = "/labels") -> dict[int, np.ndarray]:
    """{header stamp ns: labels [H, W]} of the label maps on `gt_topic` (mono8: uint8, mono16: uint16)."""
    labels = {}
    for stamp, image in read_images(path, gt_topic):
        if image.ndim != 2:
            raise InputError(f"{path}: topic {gt_topic} holds colour images, not mono8/mono16 label maps; "
                             "give the ground-truth topic (--gt-topic)")
        labels[stamp] = image
    return labels


def stamp_ns(header) -> int:
    """A std_msgs/Header's stamp (rosbags or rclpy message) in nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _describe(topics: dict[str, BagTopic]) -> str:
    return ", ".join(f"{t} ({info.msgtype}, {info.count})" for t, info in topics.items()) or "none"
