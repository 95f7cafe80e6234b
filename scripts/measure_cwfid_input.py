"""CWFID input policies: what a higher input resolution or sliding windows cost and gain, ViT vs ClustViT.

    python scripts/measure_cwfid_input.py [--data-root ../shared/data/cwfid] [--update-readme README.md]

CWFID frames are 1296x966 and its plants are small, so how an image meets the network matters. Both
trained models (`make train-cwfid`: cwfid_vit and cwfid_k3_ip3 in the weights cache, trained on 392x392
crops of images resized to 784x588) are evaluated on the test split under each policy:

- whole image resized to 588x434, 784x588 (the training scale, the default) and 980x728;
- slide: 392x392 windows (the training crop), stride 261, over the image at the training scale.

Per policy and model: tokens per image after merging (slide: summed over windows), GFLOPs per image
(counted on every image), mIoU and crop / weed IoU; then the ClustViT's mIoU difference and FLOP
ratio against the ViT under the same policy.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustvit_core.errors import cli_errors  # noqa: E402
from clustvit_core.readme import check_section, replace_section  # noqa: E402

SECTION = "cwfid-input"
MODELS = ("cwfid_vit", "cwfid_k3_ip3")
# (label, evaluate() keyword arguments); sizes are (h, w), multiples of the patch 14
POLICIES = (
    ("resize 588x434", {"size": (434, 588)}),
    ("resize 784x588 (training scale)", {"size": (588, 784)}),
    ("resize 980x728", {"size": (728, 980)}),
    ("slide 392x392, stride 261, on 784x588", {"size": 392, "slide": True, "stride": 261, "slide_scale": (588, 784)}),
)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--data-root", default=None, help="CWFID folder (default: the dataset's default location)")
    parser.add_argument("--num-images", type=int, default=None, help="first N test images only (default: all 21)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write every result (metrics.json contents per run)")
    parser.add_argument("--update-readme", metavar="README", help=f"write the table into its '{SECTION}' section")
    args = parser.parse_args(argv)
    with cli_errors("measure_cwfid_input"):
        if args.update_readme:  # fail before the measurement, not after it
            check_section(args.update_readme, SECTION)
        _measure(args, argv)
    return 0


def _measure(args, argv) -> None:
    """Evaluate every policy and model, print the table, write --json and the README section."""
    import torch
    from tqdm import tqdm

    from clustvit_core import build_model
    from clustvit_core.data import build_dataset
    from clustvit_core.evaluate import evaluate

    torch.set_num_threads(args.threads)
    models = {name: build_model(name, weights="default").eval() for name in MODELS}
    dataset = build_dataset("cwfid", "test", args.data_root)
    results = {}
    with tqdm(total=len(POLICIES) * len(MODELS), desc="policies x models", unit="run") as bar:
        for label, kwargs in POLICIES:
            for name, model in models.items():
                results[label, name] = evaluate(model, dataset, max_images=args.num_images, flops_images=None,
                                                progress=False, **kwargs)
                bar.update(1)

    vit_name, clust_name = MODELS
    lines = ["| input policy | tokens ViT | tokens ClustViT | GFLOPs ViT | GFLOPs ClustViT | FLOP ratio | mIoU ViT "
             "| mIoU ClustViT | Δ mIoU | crop ViT / ClustViT | weed ViT / ClustViT |",
             "|---" * 11 + "|"]
    iou = lambda r, c: _pct(r.per_class[c].iou)  # noqa: E731
    for label, _ in POLICIES:
        vit, clust = results[label, vit_name], results[label, clust_name]
        lines.append(
            f"| {label} | {vit.tokens.mean:.0f} | {clust.tokens.mean:.0f} | {vit.gflops.mean:.0f} | "
            f"{clust.gflops.mean:.0f} | {vit.gflops.mean / clust.gflops.mean:.2f}× | {_pct(vit.miou)} | "
            f"{_pct(clust.miou)} | {100 * (clust.miou - vit.miou):+.1f} | {iou(vit, 'crop')} / {iou(clust, 'crop')} | "
            f"{iou(vit, 'weed')} / {iou(clust, 'weed')} |")
    first = results[POLICIES[0][0], vit_name]
    text = (f"{first.num_images} CWFID test images, {vit_name} vs {clust_name} (weights `default`: what make "
            f"train-cwfid installs), {args.threads} CPU threads\n\n" + "\n".join(lines))
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{"policy": label, "model": name, **r.to_dict()}
                                               for (label, name), r in results.items()], indent=2))
    if args.update_readme:
        command = " ".join(["python scripts/measure_cwfid_input.py",
                            *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
        replace_section(args.update_readme, SECTION, f"`{command}`\n\n{text}")


if __name__ == "__main__":
    raise SystemExit(main())
