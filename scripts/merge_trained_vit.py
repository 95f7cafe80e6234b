"""What merging costs a trained ViT: the trained cwfid_vit run with oracle clusters, without any training.

    python scripts/merge_trained_vit.py [--weights PATH] [--data-root ../shared/data/cwfid] [--update-readme README.md]

The trained ViT's weights go into a ClustViT k3 whose Regenerator is residual and untrained (so every
clustered patch gets its cluster's processed token back: a copy) and whose clusters come from the ground
truth (`pseudo.oracle_ids`: pure patches of each class, ranked by count, one cluster per class). Rows: the ViT
as it is; oracle clusters merged before block `ip` with plain attention (each cluster token counts once)
and with proportional attention (each counts as its members). If merging itself cost accuracy, the merged
rows would fall below the ViT; the CWFID test split at 784x588 says whether it does. (Oracle clusters know
the labels, so a row above the ViT is not a better model; the question is only whether merging hurts.)
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustvit_core.errors import cli_errors  # noqa: E402
from clustvit_core.readme import check_section, replace_section  # noqa: E402

SECTION = "cwfid-merge-vit"


def _pct(value) -> str:
    return f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--weights", default="default",
                        help="the trained ViT (.safetensors; default: cwfid_vit's file in the weights cache, make train-cwfid)")
    parser.add_argument("--data-root", default=None, help="CWFID folder (default: the dataset's default location)")
    parser.add_argument("--ip", type=int, default=3, help="first block on the merged sequence (default 3)")
    parser.add_argument("--num-images", type=int, default=None, help="first N test images only (default: all 21)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--update-readme", metavar="README", help=f"write the table into its '{SECTION}' section")
    args = parser.parse_args(argv)
    with cli_errors("merge_trained_vit"):
        if args.update_readme:  # fail before the measurement, not after it
            check_section(args.update_readme, SECTION)
        text = _measure(args)
        print(text)
        if args.update_readme:
            command = " ".join(["python scripts/merge_trained_vit.py",
                                *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
            replace_section(args.update_readme, SECTION, f"`{command}`\n\n{text}")
    return 0


def _measure(args) -> str:
    import numpy as np
    import torch
    from tqdm import tqdm

    from clustvit_core.data import build_dataset
    from clustvit_core.metrics import confusion_matrix, per_class_iou
    from clustvit_core.predictor import labels_at
    from clustvit_core.preprocessing import preprocess
    from clustvit_core.pseudo import oracle_ids
    from clustvit_core.registry import build_model, default_weights, load_config
    from clustvit_core.weights import load_trained_start

    torch.set_num_threads(args.threads)
    vit = load_config("cwfid_vit")
    path = default_weights(vit) if args.weights == "default" else Path(args.weights)
    dataset = build_dataset("cwfid", "test", args.data_root)
    n = min(args.num_images or len(dataset), len(dataset))
    rows = [("ViT, nothing merged", None, False), ("oracle clusters, plain attention", "oracle", False),
            ("oracle clusters, proportional attention", "oracle", True)]
    h, w = vit.data.input_size
    lines = [f"{n} CWFID test images at {w}x{h}; {path.name} (the trained ViT) in a ClustViT k3 ip{args.ip} with an "
             "untrained residual Regenerator (a copy); no training", "",
             "| rows | tokens / image | mIoU | soil | crop | weed |", "|---|---|---|---|---|---|"]
    for label, clusters, proportional in rows:
        cfg = vit.replace(k=3, ip=args.ip, regenerator="residual", proportional_attention=proportional)
        model = build_model(cfg)
        load_trained_start(model, path)
        model.eval()
        conf = np.zeros((cfg.num_classes,) * 2, np.int64)
        tokens = []
        for i in tqdm(range(n), desc=label, leave=False):
            sample = dataset[i]
            x = preprocess(sample.image, cfg.data.input_size, cfg.mean, cfg.std)
            ids = oracle_ids(sample.labels, cfg.data.input_size, cfg.k, cfg.patch_size)
            with torch.inference_mode():
                out = model(x, cluster_ids=ids if clusters else torch.zeros_like(ids))
            confusion_matrix(labels_at(out.logits[0], sample.labels.shape), sample.labels, cfg.num_classes, out=conf)
            tokens.append(int(out.tokens[0]))
        iou = per_class_iou(conf)
        lines.append(f"| {label} | {np.mean(tokens):.0f} | {_pct(np.nanmean(iou))} | "
                     + " | ".join(_pct(v) for v in iou) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
