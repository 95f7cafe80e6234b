"""Tokens per frame with resize_mode stretch vs letterbox (the node's two ways to meet the network input).

    python scripts/measure_letterbox.py [--update-readme README.md]

Runs `Segmenter` (what the node runs) on frames of camera-like sizes: generated field scenes at CWFID's
1296x966 and at SUIM-like 1906x1080 (wide underwater frames), and, when CWFID is on this machine and a
trained `cwfid_k3_ip3` is in the weights cache, the CWFID test images. Letterbox pads the frame to the
network's aspect with the mean colour; a ClustViT leaves the padding patches out of its sequence
(`drop_mask`). Reports tokens (mean over frames), the padding's share of the input and mIoU of both modes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustvit_core.errors import ClustViTError  # noqa: E402
from clustvit_core.readme import replace_section  # noqa: E402

SECTION = "letterbox"


def rows_for(model: str, frames: list[np.ndarray], labels: list[np.ndarray], what: str) -> dict:
    from clustvit_core.metrics import confusion_matrix, per_class_iou
    from clustvit_core.predictor import Segmenter

    row = {"frames": what, "model": model, "n": len(frames)}
    for mode in ("stretch", "letterbox"):
        seg = Segmenter(model, None, device="cpu", resize_mode=mode)
        results = [seg(f) for f in frames]
        row[mode] = float(np.mean([r.tokens for r in results]))
        conf = np.zeros((seg.num_classes, seg.num_classes), np.int64)
        for r, lab in zip(results, labels):
            confusion_matrix(r.labels.astype(np.int64), lab, seg.num_classes, out=conf)
        row[f"miou_{mode}"] = float(np.nanmean(per_class_iou(conf)))
        row["patch_tokens"] = results[0].patch_tokens
        if mode == "letterbox":
            h, w = results[0].network_size
            ch, cw = results[0].content_size
            row["padding"] = 1.0 - (ch * cw) / (h * w)
            row["network"] = f"{w}x{h}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="generated frames per size (default 8)")
    parser.add_argument("--update-readme", metavar="README", help=f"write the table into its '{SECTION}' section")
    args = parser.parse_args(argv)
    from clustvit_core.data.synthetic import make_scene

    rows = []
    for name, (w, h), kind, model in (("generated field, CWFID size", (1296, 966), "agri", "synthetic_agri_k3_ip3"),
                                      ("generated field, SUIM-like wide", (1906, 1080), "agri", "synthetic_agri_k3_ip3")):
        scenes = [make_scene(kind, 1000 + i, (h, w)) for i in range(args.frames)]
        rows.append(rows_for(model, [s[0] for s in scenes], [s[1] for s in scenes], f"{name} {w}x{h}"))
    try:
        from clustvit_core.data import build_dataset

        test = build_dataset("cwfid", "test")
        samples = [test[i] for i in range(len(test))]
        frames = [s.image for s in samples]
        rows.append(rows_for("cwfid_k3_ip3", frames, [s.labels for s in samples],
                             f"CWFID test {frames[0].shape[1]}x{frames[0].shape[0]}"))
    except ClustViTError as exc:  # no dataset or no trained weights here: generated frames only
        print(f"note: CWFID row skipped ({exc})", file=sys.stderr)

    lines = ["| frames | model | network input | tokens stretch | tokens letterbox | padding (letterbox) | of patch tokens "
             "| mIoU stretch | mIoU letterbox |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['frames']} ({r['n']}) | {r['model']} | {r['network']} | {r['stretch']:.0f} | "
                     f"{r['letterbox']:.0f} | {100 * r['padding']:.0f} % | {r['patch_tokens']} | "
                     f"{100 * r['miou_stretch']:.1f} | {100 * r['miou_letterbox']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.update_readme:
        import shlex

        command = " ".join(["python scripts/measure_letterbox.py", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
        replace_section(args.update_readme, SECTION, f"`{command}`\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
