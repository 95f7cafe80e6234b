"""Reports of `evaluate` results: metrics.md, README tables (summary, keep_bias sweep), metrics.json and figures."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .metrics import BUCKET_NAMES, PATCH_BUCKET_NAMES
from .visualize import save_token_histogram, save_tokens_vs_classes

if TYPE_CHECKING:  # evaluate imports this module for its CLI
    from .evaluate import EvalResult


def _fmt(value, digits: int = 1, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def format_summary(result: EvalResult) -> str:
    """The headline and per-class tables of `format_markdown`, without headings (for a README section)."""
    report = format_markdown(result).split("\n## Size-stratified")[0]
    return "\n".join(line for line in report.splitlines() if not line.startswith("#")).strip()


def format_sweep(results: list[EvalResult]) -> str:
    """One row per keep_bias value: tokens, kept share, GFLOPs, mIoU and per-class IoU."""
    names = results[0].class_names
    first = results[0]
    inp = first.input
    lines = [f"{first.num_images} images of {first.dataset}"
             + (f" ({first.split})" if first.split else "")
             + f", {inp.describe()}", "",
             "| keep_bias | tokens / image | kept | GFLOPs / image | mIoU | " + " | ".join(names) + " |",
             "|---" * (5 + len(names)) + "|"]
    for r in results:
        lines.append(f"| {r.keep_bias:g} | {_result_cells(r, names)} |")
    return "\n".join(lines)


def _result_cells(r: EvalResult, names, gflops_digits: int = 2) -> str:
    """The table cells tokens / image | kept | GFLOPs / image | mIoU | IoU per class of one result."""
    tok = r.tokens
    gflops = "–" if r.gflops is None else f"{r.gflops.mean:.{gflops_digits}f}"
    per_class = " | ".join(_fmt(r.per_class[n].iou) for n in names)
    return (f"{tok.mean:.0f} ± {tok.std:.0f} (of {tok.full_mean:.0f}) | {_fmt(tok.kept_fraction)} % | {gflops} | "
            f"{_fmt(r.miou)} | {per_class}")


def format_comparison(results: list[EvalResult]) -> str:
    """One row per model (same images, same input): tokens, kept share, GFLOPs, mIoU and per-class IoU, then
    each ClustViT against the first plain ViT: mIoU difference and FLOP ratio."""
    names = results[0].class_names
    first = results[0]
    inp = first.input
    mode = inp.describe()
    lines = [f"{first.num_images} images of {first.dataset}" + (f" ({first.split})" if first.split else "")
             + f", {mode}, keep_bias {first.keep_bias:g}", "",
             "| model | weights | tokens / image | kept | GFLOPs / image | mIoU | " + " | ".join(names) + " |",
             "|---" * (6 + len(names)) + "|"]
    for r in results:
        lines.append(f"| {r.model} | `{r.weights}` | {_result_cells(r, names, 1)} |")
    vit = next((r for r in results if not r.clustering), None)
    if vit is not None and vit.miou is not None:
        notes = []
        for r in results:
            if not r.clustering or r.miou is None:
                continue
            note = f"- {r.model} vs {vit.model}: mIoU {100 * (r.miou - vit.miou):+.1f} points"
            if r.gflops is not None and vit.gflops is not None:
                note += f", {vit.gflops.mean / r.gflops.mean:.2f}× fewer GFLOPs"
            note += f", {r.tokens.mean:.0f} of {r.tokens.full_mean:.0f} tokens after merging"
            notes.append(note)
        if notes:
            lines += [""] + notes
    return "\n".join(lines)


def format_markdown(result: EvalResult) -> str:
    """The human-readable report (metrics.md) of an `evaluate` result."""
    names = result.class_names
    inp = result.input
    mode = inp.describe()
    lines = [f"# Evaluation: {result.model or 'model'} on {result.dataset}"
             + (f" ({result.split})" if result.split else ""), ""]
    if result.weights:
        lines.append(f"weights: `{result.weights}`" + (f", run on {result.device}" if result.device else "") + "  ")
    lines += [f"{result.num_images} images, {mode}, keep_bias {result.keep_bias:g}", ""]
    tok = result.tokens
    g = result.gflops
    lines += ["| mIoU | pixel acc. | mean class acc. | tokens / image | kept | GFLOPs / image |", "|---|---|---|---|---|---|",
              f"| {_fmt(result.miou)} | {_fmt(result.pixel_accuracy)} | {_fmt(result.mean_class_accuracy)} | "
              f"{tok.mean:.0f} ± {tok.std:.0f} (of {tok.full_mean:.0f}) | {_fmt(tok.kept_fraction)} % | "
              + (f"{g.mean:.2f} ± {g.std:.2f} ({g.images} images)" if g else "–") + " |", ""]
    lines += ["## Per class", "", "| class | IoU | acc. | GT pixels | predicted pixels |", "|---|---|---|---|---|"]
    for name in names:
        pc = result.per_class[name]
        lines.append(f"| {name} | {_fmt(pc.iou)} | {_fmt(pc.accuracy)} | {pc.gt_pixels} | {pc.pred_pixels} |")
    sr = result.size_recall
    bounds = [f"{b} ({_bound(sr['buckets'][b])})" for b in BUCKET_NAMES]
    lines += ["", "## Size-stratified recall (%)", "",
              "Objects: 8-connected ground-truth components per class, by area / image area; recall = share of an "
              "object's pixels predicted as its class; – = no object of that size."
              + (f" Excluded classes: {', '.join(sr['excluded_classes'])}." if sr["excluded_classes"] else ""), "",
              "| | " + " | ".join(bounds) + " |", "|---|" + "---|" * len(BUCKET_NAMES),
              "| **all classes** | " + " | ".join(f"{_fmt(sr['mean'][b])} (n={sr['objects'][b]})" for b in BUCKET_NAMES) + " |"]
    for name, per in sr["per_class"].items():
        n_obj = sr["per_class_objects"][name]
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(per[b])} (n={n_obj[b]})" for b in BUCKET_NAMES) + " |")
    bp = sr.get("by_patches")
    if bp:
        lines += ["", "### By size in patch tokens at the network input (%)", "",
                  "An object's area in the ViT's patch tokens; under one token it shares its patch with another class.", "",
                  "| | " + " | ".join(f"{b} tokens" for b in PATCH_BUCKET_NAMES) + " |", "|---|" + "---|" * len(PATCH_BUCKET_NAMES),
                  "| **all classes** | " + " | ".join(f"{_fmt(bp['mean'][b])} (n={bp['objects'][b]})" for b in PATCH_BUCKET_NAMES) + " |"]
    lines += ["", "## Tokens vs classes per image", "", "| GT classes present | images | tokens |", "|---|---|---|"]
    for row in result.classes_per_image:
        lines.append(f"| {row['classes']} | {row['images']} | {row['tokens_mean']:.0f} ± {row['tokens_std']:.0f} |")
    hist = tok.histogram
    lines += ["", "## Token histogram", "", "| tokens | images |", "|---|---|"]
    for lo, hi, c in zip(hist["edges"][:-1], hist["edges"][1:], hist["counts"]):
        lines.append(f"| {lo:.0f}–{hi:.0f} | {c} |")
    lines += ["", "## Confusion matrix (pixels; rows: ground truth, columns: prediction)", "",
              "| GT \\ pred | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, result.confusion_matrix):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _bound(pair) -> str:
    lo, hi = pair
    return f">= {100 * lo:g} %" if hi is None else f"{100 * lo:g}–{100 * hi:g} %"


def write_report(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """metrics.json, metrics.md, token_histogram.png and tokens_vs_classes.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metrics.json", out / "metrics.md"]
    paths[0].write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    paths[1].write_text(format_markdown(result))
    tokens = [r.tokens for r in result.images]
    full = int(round(result.tokens.full_mean))
    title = f"{result.model or 'model'}: tokens per image"
    paths.append(save_token_histogram(out / "token_histogram.png", tokens, full, title=title))
    paths.append(save_tokens_vs_classes(out / "tokens_vs_classes.png", tokens, [r.classes_present for r in result.images], full))
    return paths
