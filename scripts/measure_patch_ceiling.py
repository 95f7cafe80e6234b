"""What a patch grid lets a head see of thin plants: the ground truth reduced to patches, and to input pixels.

    python scripts/measure_patch_ceiling.py [--data-root ../shared/data/cwfid] [--update-readme README.md]

For each test image the ground truth is reduced to class shares per patch (the network's grid: 16x16 patches
of 14 px at the demo model's 224x224, 56x42 at CWFID's 784x588) or per input pixel, upsampled bilinearly to
the label map and argmaxed, as a model's logits are. No model runs. The patch row is what perfect patch
classification gives (scores = each patch's class shares); a trained head can do better than that by
sharpening its scores between patches (the demo model does), but a leaf narrower than a patch rarely wins its
patch. The pixel row is the same at input resolution: what a pixel refiner (`refine_channels`,
heads.DetailRefiner), which reads the input pixels, has room to win back.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustvit_core.errors import cli_errors  # noqa: E402
from clustvit_core.readme import check_section, replace_section  # noqa: E402

SECTION = "patch-ceiling"


def ceiling(labels: np.ndarray, num_classes: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """Predicted labels [H, W] from the class shares of `labels` [H, W] on a grid (h, w), upsampled bilinearly."""
    onehot = np.stack([(labels == c).astype(np.float32) for c in range(num_classes)], -1)
    shares = cv2.resize(onehot, grid_hw[::-1], interpolation=cv2.INTER_AREA)
    up = cv2.resize(shares, labels.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return up.reshape(*labels.shape, num_classes).argmax(-1)


def measure(model_name: str, data_root: str | None, num_images: int | None) -> list[dict]:
    from clustvit_core.data import build_dataset
    from clustvit_core.registry import load_config

    cfg = load_config(model_name)
    data = cfg.data
    ds = build_dataset(cfg.dataset, "test", root=data_root)
    n = len(ds) if num_images is None else min(num_images, len(ds))
    (h, w), p = data.input_size, data.patch_size
    rows = []
    for what, grid in (("patches", (h // p, w // p)), ("input pixels", (h, w))):
        inter = np.zeros(cfg.num_classes)
        union = np.zeros(cfg.num_classes)
        for i in range(n):
            labels = np.asarray(ds[i].labels)
            valid = labels < cfg.num_classes
            pred = ceiling(np.where(valid, labels, 0), cfg.num_classes, grid)
            for c in range(cfg.num_classes):
                inter[c] += ((pred == c) & (labels == c) & valid).sum()
                union[c] += (((pred == c) & valid) | (labels == c)).sum()
        iou = inter / np.maximum(union, 1)
        rows.append({"model": model_name, "dataset": cfg.dataset, "images": n, "scored_on": what,
                     "grid": f"{grid[1]}x{grid[0]}", "input": f"{w}x{h}", "patch": p,
                     "miou": float(iou.mean()), "iou": dict(zip(cfg.class_names, map(float, iou)))})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    names = list(rows[0]["iou"])
    lines = [f"`{command}`", "",
             "| model's input (dataset, test) | scored on | grid | mIoU | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        cls = " | ".join(f"{100 * r['iou'].get(n, float('nan')):.1f}" for n in names)
        lines.append(f"| {r['input']} ({r['dataset']}, {r['images']} images) | {r['scored_on']} | {r['grid']} | "
                     f"{100 * r['miou']:.1f} | {cls} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--models", nargs="+", default=["synthetic_agri_k3_ip3", "cwfid_vit"],
                        help="registry models whose input size and patch define the grid (default: the demo model "
                             "and cwfid_vit; all must share class names)")
    parser.add_argument("--data-root", default=None, help="dataset folder of the models' dataset (CWFID: ../shared/data/cwfid)")
    parser.add_argument("--num-images", type=int, default=None, help="first N test images per dataset (default all)")
    parser.add_argument("--update-readme", metavar="README", help=f"write the table into the file's {SECTION} section")
    args = parser.parse_args(argv)
    with cli_errors("scripts/measure_patch_ceiling.py"):
        if args.update_readme:
            check_section(args.update_readme, SECTION)
        rows = []
        for name in args.models:
            rows += measure(name, args.data_root, args.num_images)  # generated datasets need no folder
        command = "python scripts/measure_patch_ceiling.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        text = markdown(rows, command.strip())
        print(text)
        if args.update_readme:
            replace_section(args.update_readme, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
