"""Build a rosbag2 bag of camera frames (+ ground-truth labels) from images, a dataset or synthetic scenes.

    python -m clustvit_ros.make_bag bags/cwfid_test --dataset cwfid:test --rate 5
    python -m clustvit_ros.make_bag bags/mine --images photos/ --labels masks/ --size 640x480
    python -m clustvit_ros.make_bag bags/demo --synthetic agri --num 50 --storage mcap

Replay the result with `python -m clustvit_ros.replay BAG`. No ROS install is needed to build a bag.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from clustvit_core.data import build_dataset, dataset_names
from clustvit_core.data.base import IMAGE_SUFFIXES, check_same_size, list_images, require_dir
from clustvit_core.data.labels import read_labels, read_rgb
from clustvit_core.data.registry import SyntheticDataset
from clustvit_core.data.synthetic import SCENES, SyntheticScenes
from clustvit_core.errors import ConfigError, InputError, cli_errors

from .bags import COMPRESSIONS, STORAGES, write_image_bag

PROG = "python -m clustvit_ros.make_bag"
SYNTHETIC_SIZE = (640, 480)  # (width, height) of --synthetic frames without --size
SYNTHETIC_NUM = 20  # --synthetic frames without --num
# --synthetic scenes without --seed: those of the synthetic datasets' test split, never trained on.
SYNTHETIC_SEED = SyntheticDataset.SEEDS["test"]
DEFAULT_SPLIT = "test"

Frame = tuple[np.ndarray, np.ndarray | None]  # (rgb uint8 [H, W, 3], labels uint8 [H, W] or None)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (e.g. '640x480') -> (width, height); argparse type."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH, e.g. 640x480") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be at least 16")
    return w, h


def parse_dataset(spec: str) -> tuple[str, str]:
    """'NAME[:SPLIT]' -> (name, split); split defaults to 'test'."""
    name, _, split = spec.partition(":")
    return name, split or DEFAULT_SPLIT


def resize_frame(rgb: np.ndarray, labels: np.ndarray | None, size: tuple[int, int] | None) -> Frame:
    """The frame at `size` (width, height): image INTER_LINEAR, labels INTER_NEAREST; unchanged if size is None."""
    if size is None or (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb, labels
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    if labels is not None:
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    return rgb, labels


def folder_pairs(images: Path, labels: Path | None, num: int | None) -> list[tuple[Path, Path | None]]:
    """(image file, label file or None) pairs: the image files in `images` (sorted by name, the first `num`),
    each with the file of the same stem in `labels` (single-channel class ids, 255 = unlabeled) if given."""
    require_dir(images, "pass --images a folder of image files")
    paths = list_images(images)[:num]
    if not paths:
        raise InputError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder; "
                         "pass --images a folder of images")
    if labels is None:
        return [(path, None) for path in paths]
    require_dir(labels, "pass --labels a folder of single-channel label PNGs named like the images")
    label_paths = {p.stem: p for p in list_images(labels)}
    missing = [p.name for p in paths if p.stem not in label_paths]
    if missing:
        raise InputError(f"{labels}: no label file with the stem of {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}; name each label file like its image")
    return [(path, label_paths[path.stem]) for path in paths]


def read_pair(image_path: Path, label_path: Path | None) -> Frame:
    """The frame of an (image file, label file or None) pair; InputError if their sizes differ."""
    rgb = read_rgb(image_path)
    if label_path is None:
        return rgb, None
    labels = read_labels(label_path)
    check_same_size(rgb, labels, image_path, label_path)
    return rgb, labels


def dataset_frames(spec: str, num: int | None) -> Iterator[Frame]:
    """Frames (image, labels) of registered dataset 'NAME[:SPLIT]', the first `num`; the dataset is
    opened (and checked) now, its items are read as the result is iterated."""
    name, split = parse_dataset(spec)
    if name not in dataset_names():
        raise ConfigError(f"--dataset {spec}: unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    dataset = build_dataset(name, split)
    count = len(dataset) if num is None else min(num, len(dataset))
    return ((sample.image, sample.labels) for sample in map(dataset.__getitem__, range(count)))


def synthetic_frames(kind: str, num: int, size: tuple[int, int], seed: int) -> SyntheticScenes:
    """`num` synthetic scenes of `kind` at `size` (width, height); a sequence of (image, labels)."""
    w, h = size
    return SyntheticScenes(kind, num, (h, w), seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a rosbag2 bag (a new folder OUT) of camera frames as sensor_msgs/Image (or\n"
                    "CompressedImage) on --topic and their ground-truth label maps as mono8 Images on --gt-topic\n"
                    "with the same header stamps (how an evaluation matches them to predictions). Frame i is\n"
                    "stamped i/--rate seconds after the first. Exactly one source: --images, --dataset or --synthetic.",
        epilog="examples:\n"
               "  %(prog)s bags/cwfid --dataset cwfid:test --rate 5\n"
               "  %(prog)s bags/demo --synthetic agri --num 50 --size 640x480 --storage mcap\n"
               "  %(prog)s bags/mine --images photos/ --labels masks/ --compressed jpeg\n"
               "replay a bag with: python -m clustvit_ros.replay OUT")
    parser.add_argument("out", metavar="OUT", type=Path, help="bag folder to create (must not exist)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", type=Path,
                        help=f"folder of image files ({', '.join(IMAGE_SUFFIXES)}), in name order")
    source.add_argument("--dataset", metavar="NAME[:SPLIT]",
                        help=f"registered dataset and split (default split {DEFAULT_SPLIT}), e.g. cwfid:test; "
                             f"NAME one of {', '.join(dataset_names())}; datasets read their folder from their "
                             "environment variable (e.g. CLUSTVIT_CWFID_ROOT)")
    source.add_argument("--synthetic", choices=SCENES, help="generated scenes (no files needed)")
    parser.add_argument("--labels", metavar="DIR", type=Path,
                        help="with --images: folder of single-channel label PNGs (class ids, 255 = unlabeled) "
                             "named like the images (same stem)")
    parser.add_argument("--num", type=int, metavar="N",
                        help=f"number of frames (default: all images; {SYNTHETIC_NUM} for --synthetic)")
    parser.add_argument("--size", type=parse_size, metavar="WxH",
                        help="resize frames to WxH (images bilinear, labels nearest); --synthetic generates at "
                             f"this size (default {SYNTHETIC_SIZE[0]}x{SYNTHETIC_SIZE[1]} there)")
    parser.add_argument("--rate", type=float, default=10.0, metavar="HZ",
                        help="frames per second of the recording: sets the stamps, so replay paces at it (default 10)")
    parser.add_argument("--topic", default="/camera/image_raw", help="image topic (default /camera/image_raw)")
    parser.add_argument("--gt-topic", default="/labels", help="ground-truth label topic (default /labels)")
    parser.add_argument("--frame-id", default="camera", help="header frame_id of every message (default camera)")
    parser.add_argument("--no-labels", action="store_true", help="write images only, no ground-truth topic")
    parser.add_argument("--storage", choices=list(STORAGES), default="sqlite3",
                        help="rosbag2 storage: sqlite3 (default, readable by every ROS 2 distribution) or mcap")
    parser.add_argument("--encoding", choices=["rgb8", "bgr8"], default="rgb8",
                        help="channel order of raw images (default rgb8)")
    parser.add_argument("--compressed", choices=list(COMPRESSIONS),
                        help="write sensor_msgs/CompressedImage: png (lossless) or jpeg (smaller, lossy); labels stay raw")
    parser.add_argument("--seed", type=int, help=f"with --synthetic: scene seed (default {SYNTHETIC_SEED}: the synthetic datasets' test "
                             "scenes, not trained on; 0 = their training scenes); same seed, same scenes")
    return parser


def frames_from_args(args: argparse.Namespace) -> Iterator[Frame]:
    """The frames the parsed arguments ask for, resized, labels dropped with --no-labels; the
    arguments and the source are checked now, the frames are read as the result is iterated."""
    if args.num is not None and args.num < 1:
        raise ConfigError(f"--num {args.num}: give a number of frames >= 1")
    if args.labels is not None and args.images is None:
        raise ConfigError("--labels goes with --images (datasets and --synthetic bring their own labels)")
    if args.seed is not None and args.synthetic is None:
        raise ConfigError("--seed applies to --synthetic only (images and datasets are written in their order)")
    if args.images is not None:
        pairs = folder_pairs(args.images, None if args.no_labels else args.labels, args.num)
        frames = (read_pair(image, labels) for image, labels in pairs)
    elif args.dataset is not None:
        frames = dataset_frames(args.dataset, args.num)
    else:
        frames = synthetic_frames(args.synthetic, args.num or SYNTHETIC_NUM, args.size or SYNTHETIC_SIZE,
                                  SYNTHETIC_SEED if args.seed is None else args.seed)
    return (resize_frame(rgb, None if args.no_labels else labels, args.size) for rgb, labels in frames)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes: set[tuple[int, int]] = set()
    labelled = 0

    def counted(frames: Iterator[Frame]) -> Iterator[Frame]:
        nonlocal labelled
        for rgb, labels in frames:
            sizes.add((rgb.shape[1], rgb.shape[0]))
            labelled += labels is not None
            yield rgb, labels

    with cli_errors(PROG):
        count = write_image_bag(args.out, counted(frames_from_args(args)), topic=args.topic, gt_topic=args.gt_topic,
                                rate=args.rate, frame_id=args.frame_id, storage=args.storage, encoding=args.encoding,
                                compressed=args.compressed, progress=sys.stderr.isatty())
    size = " ".join(sorted(f"{w}x{h}" for w, h in sizes)) or "-"
    kind = f"{args.compressed} CompressedImage" if args.compressed else f"{args.encoding} Image"
    topics = f"{args.topic} ({kind})" + (f", {args.gt_topic} ({labelled} mono8 label maps)" if labelled else "")
    print(f"make_bag: {count} frames {size} at {args.rate:g} Hz -> {args.out} ({args.storage}): {topics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
