"""Rasterize RumexWeeds' CVAT polygons into label PNGs, one folder per split.

    python -m clustvit_core.data.rumexweeds_prepare /data/RumexWeeds

Reads the split files (default: ROOT/dataset_splits/random_{train,val,test}.txt, else
{train,val,test}.txt, in ROOT/dataset_splits or ROOT; one image path relative to ROOT per line) and,
for each image, the CVAT-for-images 1.1 file of its sequence (annotations_seg.xml in the image's folder
or the folder above it). Polygons are filled with cv2.fillPoly in increasing z_order (document order
among equal z_order), with the class id of their label (vertices rounded to whole pixels, boundary
pixels included); other shapes (boxes, polylines) and unknown labels are ignored. Writes

    OUT/{train,val,test}/images/NAME.png (copied, hard- or symbolic-linked)   OUT/{train,val,test}/masks/NAME.png

with OUT = ROOT/processed. An image listed in several split files is kept in one only: test before
val before train (with a warning).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import InputError, cli_errors
from . import rumexweeds
from .base import require_dir, resolve_root
from .labels import read_rgb

PROG = "python -m clustvit_core.data.rumexweeds_prepare"
SPLITS = ("train", "val", "test")
SPLIT_DIR = "dataset_splits"
DEFAULT_SPLIT_FILES = {s: (f"random_{s}.txt", f"{s}.txt") for s in SPLITS}
ANNOTATION_FILE = "annotations_seg.xml"
CLASS_IDS = {name: i for i, name in enumerate(rumexweeds.CLASS_NAMES) if i > 0}
IMAGE_MODES = ("copy", "hardlink", "symlink")


@dataclass
class CvatImage:
    width: int | None
    height: int | None
    polygons: list = field(default_factory=list)  # (z_order, label, points int32 [N, 2]) in document order


# ------------------------------------------------------------------------------------- split files

def find_split_files(root: Path, split_dir: str | Path | None = None,
                     names: dict[str, str | Path | None] | None = None) -> dict[str, Path]:
    """{split: path} of the train/val/test split files.

    `names[split]` may be a path (used as given if it exists) or a file name looked up in the split
    folders; unset names try DEFAULT_SPLIT_FILES. Split folders: `split_dir`, else ROOT/dataset_splits and ROOT.
    """
    names = names or {}
    dirs = [Path(split_dir)] if split_dir else [root / SPLIT_DIR, root]
    if split_dir:
        require_dir(dirs[0], "pass the folder holding the split files with --split-dir")
    found = {}
    for split in SPLITS:
        given = names.get(split)
        if given and Path(given).is_file():
            found[split] = Path(given)
            continue
        candidates = [str(given)] if given else list(DEFAULT_SPLIT_FILES[split])
        paths = [d / c for d in dirs for c in candidates]
        hit = next((p for p in paths if p.is_file()), None)
        if hit is None:
            looked = ", ".join(str(p) for p in paths)
            raise InputError(f"no {split} split file (looked for {looked}); pass --{split} FILE or --split-dir DIR")
        found[split] = hit
    return found


def read_split_file(path: Path) -> list[str]:
    """Image paths relative to ROOT, one per line ('/' separators; blank lines and '#' comments skipped)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip().replace("\\", "/")
        if line and not line.startswith("#"):
            out.append(line[2:] if line.startswith("./") else line)
    return out


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def assign_splits(lists: dict[str, list[str]], warn=_warn) -> dict[str, list[str]]:
    """Each image in one split only: test before val before train (a warning per overlap); duplicate lines dropped."""
    taken: dict[str, str] = {}  # image -> the split that holds it
    out = {}
    for split in ("test", "val", "train"):
        keep, dropped = [], {}
        for rel in dict.fromkeys(lists.get(split, [])):
            if rel in taken:
                dropped.setdefault(taken[rel], []).append(rel)
            else:
                keep.append(rel)
        for other, rels in dropped.items():
            warn(f"{len(rels)} images (e.g. {rels[0]}) are listed for {split} and {other}; kept in {other} only")
        taken.update((rel, split) for rel in keep)
        out[split] = keep
    return {s: out[s] for s in SPLITS}


# ---------------------------------------------------------------------------------------- CVAT XML

def parse_cvat(xml_path: Path) -> dict[str, CvatImage]:
    """CVAT-for-images 1.1 file -> {image name: CvatImage}, keyed by the name attribute and its basename."""
    try:
        tree = ET.parse(xml_path)
    except (OSError, ET.ParseError) as exc:
        raise InputError(f"{xml_path}: not a readable CVAT XML file ({exc})") from None
    images = {}
    for elem in tree.getroot().iter("image"):
        name = elem.get("name")
        if not name:
            raise InputError(f"{xml_path}: an <image> element has no name attribute")
        try:
            width = int(elem.get("width")) if elem.get("width") else None
            height = int(elem.get("height")) if elem.get("height") else None
        except ValueError:
            raise InputError(f"{xml_path}: image {name!r} has a non-integer width or height") from None
        entry = CvatImage(width, height)
        for poly in elem.iter("polygon"):
            label = (poly.get("label") or "").strip().lower()
            try:
                text = (poly.get("points") or "").split(";")
                points = [tuple(float(v) for v in p.split(",")) for p in text if p.strip()]
                pts = np.rint(np.array(points, np.float64)).astype(np.int32).reshape(-1, 2)
                z = int(float(poly.get("z_order") or 0))
            except ValueError:
                raise InputError(f"{xml_path}: image {name!r}: polygon {label!r} has malformed points or z_order "
                                 "(expected points=\"x1,y1;x2,y2;...\")") from None
            entry.polygons.append((z, label, pts))
        images[name] = entry
        images.setdefault(Path(name).name, entry)
    return images


def rasterize(entry: CvatImage, height: int, width: int, unknown: set | None = None) -> np.ndarray:
    """Label map uint8 [height, width]: polygons filled in increasing z_order with their class ids."""
    mask = np.zeros((height, width), np.uint8)
    for z, label, pts in sorted(entry.polygons, key=lambda p: p[0]):  # stable: document order within a z_order
        class_id = CLASS_IDS.get(label)
        if class_id is None:
            if unknown is not None:
                unknown.add(label)
            continue
        if len(pts):
            cv2.fillPoly(mask, [pts], int(class_id))
    return mask


def annotation_file(root: Path, image: Path, name: str = ANNOTATION_FILE) -> Path | None:
    """`name` in the image's folder or the folder above it (seqN/imgs/x.png -> seqN/annotations_seg.xml)."""
    for folder in (image.parent, image.parent.parent):
        if (folder / name).is_file():
            return folder / name
        if folder == root:
            break
    return None


# ------------------------------------------------------------------------------------------ prepare

def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
        return
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not supported: copy
            pass
    shutil.copy2(src, dst)


def prepare(root: str | Path | None = None, out: str | Path | None = None, split_files: dict | None = None,
            split_dir: str | Path | None = None, annotation_name: str = ANNOTATION_FILE, images: str = "copy",
            missing_as_background: bool = False, overwrite: bool = False, progress: bool = True,
            log=print, warn=_warn) -> dict[str, int]:
    """Write OUT/{train,val,test}/{images,masks} (module doc); returns {split: number of images}."""
    if images not in IMAGE_MODES:
        raise InputError(f"images={images!r}: choose one of {', '.join(IMAGE_MODES)}")
    root = resolve_root(root, rumexweeds.ENV_ROOT, "RumexWeeds", how="ROOT")
    out = Path(out) if out else root / rumexweeds.PROCESSED
    files = find_split_files(root, split_dir, split_files)
    lists = assign_splits({s: read_split_file(p) for s, p in files.items()}, warn=warn)

    # cheap checks first: every listed image and its annotation file exist, names are unique per split
    jobs = []  # (split, image path, xml path)
    for split in SPLITS:
        seen: dict[str, Path] = {}
        for rel in lists[split]:
            image = root / rel
            if not image.is_file():
                raise InputError(f"{image}: image not found (listed in {files[split]})")
            xml = annotation_file(root, image, annotation_name)
            if xml is None:
                raise InputError(f"{image}: no {annotation_name} in {image.parent} or {image.parent.parent}; "
                                 "every sequence needs its CVAT annotation file")
            if image.name in seen:
                raise InputError(f"{image} and {seen[image.name]} have the same file name; the {split} "
                                 "split cannot hold both")
            seen[image.name] = image
            jobs.append((split, image, xml))
    for split in SPLITS:
        for sub in ("images", "masks"):
            folder = out / split / sub
            if folder.is_dir() and any(folder.iterdir()):
                if not overwrite:
                    raise InputError(f"{folder}: already holds prepared files; pass --overwrite to replace them")
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)

    cache: dict[Path, dict[str, CvatImage]] = {}
    unknown: set[str] = set()
    counts = {s: 0 for s in SPLITS}
    for split, image_path, xml in tqdm(jobs, desc="RumexWeeds masks", unit="image", disable=not progress):
        if xml not in cache:
            cache[xml] = parse_cvat(xml)
        rel = image_path.relative_to(root).as_posix()
        entry = cache[xml].get(rel) or cache[xml].get(image_path.name)
        if entry is None:
            if not missing_as_background:
                raise InputError(f"{image_path}: no <image name=\"{image_path.name}\"> in {xml}; pass "
                                 "--missing-as-background to label such images as all background")
            entry = CvatImage(None, None)
        height, width = read_rgb(image_path).shape[:2]
        if (entry.width, entry.height) not in ((None, None), (width, height)):
            raise InputError(f"{xml}: image {image_path.name} is {entry.width}x{entry.height} (WxH) there but "
                             f"{image_path} is {width}x{height}")
        mask = rasterize(entry, height, width, unknown)
        dst = out / split / "masks" / f"{image_path.stem}.png"
        if not cv2.imwrite(str(dst), mask):
            raise InputError(f"{dst}: could not write the mask (is the folder writable?)")
        _place(image_path, out / split / "images" / image_path.name, images)
        counts[split] += 1
    if unknown:
        warn(f"ignored polygons labelled {', '.join(map(repr, sorted(unknown)))} (known: {', '.join(CLASS_IDS)})")
    for split in SPLITS:
        log(f"{out / split}: {counts[split]} images ({files[split].name})")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rasterize RumexWeeds' CVAT polygon annotations into single-channel label PNGs "
                    "(0 background, 1 rumex_obtusifolius, 2 rumex_crispus) and lay the images out per split "
                    "in ROOT/processed/{train,val,test}/{images,masks}, the layout the 'rumexweeds' dataset reads.",
        epilog=f"examples:\n  {PROG} /data/RumexWeeds\n"
               f"  {PROG} /data/RumexWeeds --split-dir /data/RumexWeeds/dataset_splits "
               "--train random_train.txt --val random_val.txt --test random_test.txt --images hardlink\n\n"
               "Split files list one image path relative to ROOT per line, e.g.\n"
               "  20210806_hegnstrup/seq0/imgs/20210806_hegnstrup_rgb_0_1628251180326227114.png\n"
               "and each sequence folder (seq0/) holds its annotations_seg.xml.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", metavar="ROOT",
                        help=f"the RumexWeeds folder (default: ${rumexweeds.ENV_ROOT})")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: ROOT/processed)")
    parser.add_argument("--split-dir", metavar="DIR",
                        help="folder of the split files (default: ROOT/dataset_splits, else ROOT)")
    for split in SPLITS:
        parser.add_argument(f"--{split}", metavar="FILE",
                            help=f"{split} split file: a path, or a name in the split folder "
                                 f"(default: random_{split}.txt, else {split}.txt)")
    parser.add_argument("--annotations", default=ANNOTATION_FILE, metavar="NAME",
                        help=f"per-sequence CVAT file name (default: {ANNOTATION_FILE}; annotations.xml holds "
                             "the manual ground truth)")
    parser.add_argument("--images", choices=IMAGE_MODES, default="copy",
                        help="how images get into processed/ (default: copy; hardlink falls back to copy)")
    parser.add_argument("--missing-as-background", action="store_true",
                        help="images absent from their CVAT file get an all-background mask instead of an error")
    parser.add_argument("--overwrite", action="store_true", help="replace existing processed split folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with cli_errors(PROG):
        prepare(args.root, out=args.out, split_files={s: getattr(args, s) for s in SPLITS}, split_dir=args.split_dir,
                annotation_name=args.annotations, images=args.images, missing_as_background=args.missing_as_background,
                overwrite=args.overwrite, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
