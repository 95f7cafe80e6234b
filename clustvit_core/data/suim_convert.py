"""Convert SUIM's RGB bitmap masks to single-channel label PNGs and write the train/val split file.

    python -m clustvit_core.data.suim_convert /data/SUIM

For train_val/ and test/ (or TEST/): masks/NAME.bmp -> masks_label/NAME.png (class ids 0..7, see
clustvit_core.data.suim), and train_val/split.yaml: a seeded 85/15 train/val split of train_val/images.
Running it again rewrites both (same images and seed -> the same split).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from ..errors import InputError, cli_errors
from . import suim
from .base import check_same_size, list_images, require_dir, resolve_root
from .labels import read_rgb

PROG = "python -m clustvit_core.data.suim_convert"


def convert(root: str | Path | None = None, seed: int = suim.SPLIT_SEED, val_fraction: float = suim.VAL_FRACTION,
            resize_mismatched: bool = False, progress: bool = True, log=print) -> dict[str, int]:
    """Write masks_label/ PNGs for train_val and test and train_val/split.yaml; returns {folder: masks written}.

    resize_mismatched: masks whose size differs from their image's are resized (nearest) instead of
    raising an error naming both files.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    root = resolve_root(root, suim.ENV_ROOT, "SUIM", how="ROOT")
    folders = [suim.split_dir(root, "train"), suim.split_dir(root, "test")]
    jobs = []  # (folder, image, mask)
    for folder in folders:
        images_dir, masks_dir = folder / "images", folder / "masks"
        fix = f"SUIM keeps images in {folder.name}/images and masks in {folder.name}/masks"
        require_dir(images_dir, fix)
        require_dir(masks_dir, fix)
        for image in list_images(images_dir, suim.IMAGE_SUFFIXES):
            mask = suim.raw_mask(masks_dir, image.stem)
            if mask is None:
                raise InputError(f"{image}: no mask {masks_dir / image.stem}.bmp; every image needs a mask")
            jobs.append((folder, image, mask))
    counts = {folder.name: 0 for folder in folders}
    for folder in folders:
        (folder / suim.LABEL_DIR).mkdir(exist_ok=True)
    for folder, image_path, mask_path in tqdm(jobs, desc="SUIM masks", unit="mask", disable=not progress):
        labels = suim.rgb_to_labels(read_rgb(mask_path))
        image = read_rgb(image_path)
        if image.shape[:2] != labels.shape:
            if not resize_mismatched:
                check_same_size(image, labels, image_path, mask_path)
            log(f"note: {mask_path}: resized {labels.shape[1]}x{labels.shape[0]} -> "
                f"{image.shape[1]}x{image.shape[0]} to match {image_path.name}")
            labels = cv2.resize(labels, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        out = folder / suim.LABEL_DIR / f"{image_path.stem}.png"
        if not cv2.imwrite(str(out), labels):
            raise InputError(f"{out}: could not write the label image (is the folder writable?)")
        counts[folder.name] += 1
    train_val = folders[0]
    stems = [p.stem for p in list_images(train_val / "images", suim.IMAGE_SUFFIXES)]
    split = suim.make_split(stems, seed, val_fraction)
    suim.write_split_file(train_val / suim.SPLIT_FILE, split, seed, val_fraction)
    for folder in folders:
        log(f"{folder / suim.LABEL_DIR}: {counts[folder.name]} label images")
    log(f"{train_val / suim.SPLIT_FILE}: {len(split['train'])} train / {len(split['val'])} val (seed {seed})")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert SUIM RGB masks (masks/*.bmp) to single-channel label PNGs (masks_label/*.png, "
                    "class ids 0..7 = waterbody, divers, plants, wrecks, robots, reefs, fish, seafloor) and "
                    "write the seeded train/val split file train_val/split.yaml.",
        epilog=f"example:\n  {PROG} /data/SUIM\n  {PROG} /data/SUIM --seed 0 --val-fraction 0.15\n\n"
               "ROOT holds train_val/{images,masks} and test/{images,masks} (test may be named TEST).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", metavar="ROOT",
                        help=f"the SUIM folder (default: ${suim.ENV_ROOT})")
    parser.add_argument("--seed", type=int, default=suim.SPLIT_SEED, help="seed of the train/val split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=suim.VAL_FRACTION,
                        help="share of train_val images for val (default 0.15)")
    parser.add_argument("--resize-mismatched", action="store_true",
                        help="resize (nearest) masks whose size differs from their image instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with cli_errors(PROG):
        convert(args.root, seed=args.seed, val_fraction=args.val_fraction,
                resize_mismatched=args.resize_mismatched, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
