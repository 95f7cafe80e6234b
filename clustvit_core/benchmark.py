"""Measure FLOPs, speed and token counts of registry models on the same images, in one run.

    python -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images cwfid:test --size 448 --oracle-clusters

Every figure in the printed table is measured here: FLOPs with torch's FLOP counter (per image),
speed as images per second after a warm-up, timed in interleaved rounds (model A, model B, ...,
repeated) so that machine noise hits all models alike; the median round counts. Ratios are taken
against the plain-ViT row (a model with k=None) measured in the same run.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .cuda_graphs import GraphedModel
from .errors import ConfigError, InputError, cli_errors
from .devices import DEVICE_HELP, PRECISIONS, autocast_dtype, resolve_device
from .flops import flop_breakdown
from .preprocessing import preprocess
from .pseudo import oracle_ids, oracle_purity
from .readme import check_section, command_line, replace_section
from .registry import build_model, parse_overrides, split_key_values
from .data import Sample, build_dataset, dataset_names
from .data.base import IMAGE_SUFFIXES, list_images
from .data.labels import read_labels, read_rgb

STEM_TAGS = re.compile(r"_(image|img|annotation|mask|label|labels|gt)$", re.IGNORECASE)


# onnxruntime-mha: exported with attention="ort" (ONNX Runtime's fused MultiHeadAttention op)
BACKENDS = ("torch", "onnxruntime", "onnxruntime-mha")
ONNX_ATTENTION = {"onnxruntime": "onnx", "onnxruntime-mha": "ort"}
ONNX_PROVIDERS = ("cpu", "cuda", "tensorrt")  # onnx_runtime.PROVIDERS' names


def onnx_backend_label(backend: str, provider: str, precision: str) -> str:
    """A row's backend: 'onnxruntime' (CPU, fp32), else e.g. 'onnxruntime cuda' or 'onnxruntime tensorrt fp16'."""
    return " ".join([backend] + ([provider] if provider != "cpu" else []) + ([precision] if precision != "fp32" else []))


@dataclass
class Row:
    model: str
    clustering: bool
    backend: str = "torch"
    kind: str = "vit"  # vit | clustvit | cts (ModelConfig.kind): ratios are taken against a "vit" row
    tokens: list[float] = field(default_factory=list)
    flops: dict[str, list[float]] = field(default_factory=dict)
    seconds_total: list[float] = field(default_factory=list)
    seconds_backbone: list[float] = field(default_factory=list)


def _match_key(path: Path) -> str:
    return STEM_TAGS.sub("", path.stem)


def load_samples(source: str, num_images: int, size: int, mask_dir: str | None, palette) -> list[Sample]:
    """Images from a registered dataset ('NAME[:SPLIT]', default split test; 'synthetic[:agri|underwater]'
    generates scenes at `size`) or from a folder (+ optional mask folder; labels None without one)."""
    kind, _, arg = source.partition(":")
    name, kwargs = kind, {}
    if kind == "synthetic":
        name, kwargs = f"synthetic_{arg or 'agri'}", {"num_images": num_images, "size": size}
        arg = "test"
    if name in dataset_names():
        if mask_dir:
            raise InputError(f"--oracle-clusters {mask_dir}: '{kind}' images bring their own labels; pass --oracle-clusters without a folder")
        dataset = build_dataset(name, arg or "test", **kwargs)
        return [dataset[i] for i in range(min(num_images, len(dataset)))]
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"--images {source}: not a folder or dataset; give a folder of images, 'synthetic[:agri|underwater]' or NAME[:SPLIT] with NAME one of {', '.join(dataset_names())}")
    images = list_images(folder)[:num_images]
    if not images:
        raise InputError(f"--images {source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    masks = {}
    if mask_dir:
        mask_folder = Path(mask_dir)
        if not mask_folder.is_dir():
            raise InputError(f"--oracle-clusters {mask_dir}: not a folder of label images")
        masks = {_match_key(p): p for p in list_images(mask_folder)}
    samples = []
    for path in images:
        labels = None
        if mask_dir:
            mask = masks.get(_match_key(path))
            if mask is None:
                raise InputError(f"{path}: no label image with a matching name in {mask_dir}")
            labels = read_labels(mask, palette)
        samples.append(Sample(image=read_rgb(path), labels=labels, name=path.stem))
    return samples


def _timed(fn, device: torch.device | None = None) -> float:
    """Seconds `fn` takes; on a GPU the queued kernels are waited for before and after."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(args) -> list[Row]:
    device = args.device
    models, names, backends, casts = [], [], [], []  # casts: the torch.autocast dtype of each row (None: fp32)
    precisions = []  # each torch row's precision (for its graph twin)
    exportable = []  # (name, torch model) once per model and batch mode, whatever the precisions
    for name in args.models:
        model = build_model(name, weights=args.weights if args.weights != "none" else None, **args.overrides).to(device)
        modes = args.batch_modes if model.clustering else ["auto"]
        for mode in modes:
            twin = copy.deepcopy(model) if len(modes) > 1 else model
            twin.backbone.batch_mode = mode
            if not twin.config.sharing:
                exportable.append((name + (f" [{mode}]" if len(modes) > 1 else ""), twin))
            for precision in args.precisions:
                models.append(twin)
                backends.append("torch" if precision == "fp32" else f"torch {precision}")
                names.append(name + (f" [{mode}]" if len(modes) > 1 else "") + (f" [{precision}]" if precision != "fp32" else ""))
                casts.append(autocast_dtype(precision, device, "--precisions"))
                precisions.append(precision)
    if args.cuda_graphs:  # the same models (same weights) replayed from CUDA graphs: rows "NAME [graphs]"
        if torch.device(device).type != "cuda":
            print("note: --cuda-graphs without a CUDA device: the graph rows run their recorded parts eagerly (a dry run)",
                  file=sys.stderr)
        for twin, name, backend, precision in list(zip(models, names, backends, precisions)):
            if "[split]" in name:
                continue  # a graph always runs the padded batch
            models.append(GraphedModel(twin.eval(), precision=precision))
            names.append(name.replace(f" [{precision}]", "") + " [graphs]" + (f" [{precision}]" if precision != "fp32" else ""))
            backends.append(backend.replace("torch", "torch graphs"))
            casts.append(None)  # GraphedModel applies its precision itself
    counted = [m.model if isinstance(m, GraphedModel) else m for m in models]  # the torch model whose FLOPs each row reports
    onnx_backends = [b for b in args.backends if b != "torch"]
    if onnx_backends and any(m.config.sharing for m in models):
        print("note: CTS models have no ONNX export; they run with torch only", file=sys.stderr)
    if "torch" not in args.backends:
        models, names, counted, backends, casts = [], [], [], [], []
    # The same models (same weights) exported, one session per provider (and, for TensorRT, per precision):
    # rows "NAME [onnxruntime]", "NAME [onnxruntime cuda]", "NAME [onnxruntime tensorrt fp16]", ...
    for backend in onnx_backends:
        for provider in args.providers:
            for precision in [p for p in args.precisions if p in ("fp32", "fp16")] if provider == "tensorrt" else ["fp32"]:
                label = onnx_backend_label(backend, provider, precision)
                for n, m in exportable:
                    models.append(_onnx_twin(m, args.size, args.oracle_clusters is not None, args.threads,
                                             ONNX_ATTENTION[backend], provider, precision == "fp16"))
                    names.append(f"{n} [{label}]")
                    counted.append(m)
                    backends.append(label)
                    casts.append(None)
    data0 = models[0].config.data
    for m in models[1:]:
        if (m.config.mean, m.config.std) != (data0.mean, data0.std):
            raise ConfigError("--models use different input normalization; benchmark models of one dataset together")
    for m in models:
        m.config.data.check_size(args.size, "--size")
    oracle = args.oracle_clusters is not None
    mask_dir = args.oracle_clusters or None
    samples = load_samples(args.images, args.num_images, args.size, mask_dir, models[0].config.palette)
    if oracle and any(s.labels is None for s in samples):
        raise InputError("--oracle-clusters needs label images: give a MASK_DIR, or use a source with labels (synthetic, cwfid)")
    if not oracle and args.weights == "none" and any(m.clustering for m in models):
        print("note: random weights without --oracle-clusters: token counts reflect an untrained Cluster module", file=sys.stderr)

    x_all = preprocess([s.image for s in samples], args.size, data0.mean, data0.std).to(device)
    rows = [Row(name, m.config.clustering, backend, m.config.kind) for name, m, backend in zip(names, models, backends)]
    ids_per_model = []  # per model: None, or (forward keyword, oracle tensor for all images)
    for m in models:
        cfg = m.config
        if oracle and cfg.clustering:
            ids_per_model.append(("cluster_ids", torch.cat([oracle_ids(s.labels, args.size, cfg.k, cfg.patch_size)
                                                            for s in samples]).to(device)))
        elif oracle and cfg.sharing:
            ids_per_model.append(("share_scores", torch.cat([oracle_purity(s.labels, args.size, cfg.patch_size)
                                                             for s in samples]).to(device)))
        else:
            ids_per_model.append(None)

    # FLOPs and tokens, image by image (FLOPs are counted on the torch model: an exported one computes the same).
    for m, row, ids, torch_model in zip(models, rows, ids_per_model, counted):
        for i in tqdm(range(len(samples)), desc=f"FLOPs {row.model}", leave=False, disable=args.quiet):
            kwargs = {ids[0]: ids[1][i : i + 1]} if ids is not None else {}
            for part, value in flop_breakdown(torch_model, x_all[i : i + 1], **kwargs).items():
                row.flops.setdefault(part, []).append(value)
            with torch.inference_mode():
                row.tokens.append(float(m(x_all[i : i + 1], **kwargs).tokens[0]))

    # Speed: in each round every batch runs through every model in turn (backbone only, then the
    # whole model), so a slow moment of the machine hits all models alike; a round's time is the sum
    # over batches, and the median round counts.
    batches = [slice(i, i + args.batch) for i in range(0, len(samples), args.batch)]

    def call(m, ids, cast, b, backbone_only):
        kw = {ids[0]: ids[1][b]} if ids is not None else {}
        with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
            if backbone_only:
                m.backbone(x_all[b], m.out_indices, **kw)
            else:
                m(x_all[b], **kw)

    def timed(m, ids, cast, b, backbone_only) -> float:
        if backbone_only and not hasattr(m, "backbone"):
            return math.nan  # an exported graph runs as a whole
        return _timed(lambda: call(m, ids, cast, b, backbone_only), device)

    with torch.inference_mode():
        for _ in range(args.warmup):
            for b in batches:
                for m, ids, cast in zip(models, ids_per_model, casts):
                    call(m, ids, cast, b, backbone_only=False)
        for _ in tqdm(range(args.rounds), desc="timing rounds", disable=args.quiet):
            for row in rows:
                row.seconds_backbone.append(0.0)
                row.seconds_total.append(0.0)
            for b in batches:
                for m, row, ids, cast in zip(models, rows, ids_per_model, casts):
                    row.seconds_backbone[-1] += timed(m, ids, cast, b, True)
                    row.seconds_total[-1] += timed(m, ids, cast, b, False)
    return rows, len(samples)


def _onnx_twin(model, size: int, oracle: bool, threads: int | None, attention: str = "onnx",
               provider: str = "cpu", fp16: bool = False):
    """`model` exported to a temporary ONNX file at size x size and loaded into an ONNX Runtime session
    with `provider` (fp16: TensorRT builds fp16 engines; they are built in the warm-up, not cached)."""
    import tempfile

    from .onnx_runtime import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", size=(size, size), oracle=oracle, attention=attention)
        return OnnxModel(path, providers=(provider,), fp16=fp16, threads=threads or torch.get_num_threads())


def summarize(rows: list[Row], n_images: int) -> list[dict]:
    def mean_std(values):
        return float(statistics.fmean(values)), float(statistics.pstdev(values))

    out = []
    for row in rows:
        d = {"model": row.model, "clustering": row.clustering, "backend": row.backend, "kind": row.kind}
        d["tokens_mean"], d["tokens_std"] = mean_std(row.tokens)
        for part, values in row.flops.items():
            d[f"gflops_{part}_mean"], d[f"gflops_{part}_std"] = (v / 1e9 for v in mean_std(values))
        d["img_s_backbone"] = n_images / statistics.median(row.seconds_backbone)
        d["img_s_total"] = n_images / statistics.median(row.seconds_total)
        share = [(c + r) / t for c, r, t in zip(row.flops["cluster"], row.flops["regenerator"], row.flops["total"])]
        d["cluster_regen_share"] = float(statistics.fmean(share))
        for part in ("cluster", "regenerator"):
            d[f"{part}_share"] = float(statistics.fmean(p / t for p, t in zip(row.flops[part], row.flops["total"])))
        out.append(d)
    for d in out:  # ratios against the plain ViT run by the same backend
        reference = next((r for r in out if r["kind"] == "vit" and r["backend"] == d["backend"]), None)
        if reference is None:
            continue
        for part in ("backbone", "total"):
            d[f"flop_ratio_{part}"] = reference[f"gflops_{part}_mean"] / d[f"gflops_{part}_mean"]
            d[f"speedup_{part}"] = d[f"img_s_{part}"] / reference[f"img_s_{part}"]
            d[f"speedup_vs_flop_ratio_{part}"] = d[f"speedup_{part}"] / d[f"flop_ratio_{part}"]
        without = d["gflops_backbone_mean"] - d["gflops_cluster_mean"]
        d["flop_ratio_backbone_without_cluster_mlp"] = reference["gflops_backbone_mean"] / without
    return out


def _num(value, unit: str = "") -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}{unit}"


def format_table(summary: list[dict]) -> str:
    has_ref = "flop_ratio_backbone" in summary[0]
    head = ["model", "tokens", "GFLOPs backbone", "GFLOPs total", "clust+regen", "img/s backbone", "img/s total"]
    if has_ref:
        head += ["FLOP ratio bb", "speed-up bb", "FLOP ratio total", "speed-up total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in summary:
        cells = [
            d["model"],
            f"{d['tokens_mean']:.0f} ± {d['tokens_std']:.0f}",
            f"{d['gflops_backbone_mean']:.2f} ± {d['gflops_backbone_std']:.2f}",
            f"{d['gflops_total_mean']:.2f} ± {d['gflops_total_std']:.2f}",
            f"{100 * d['cluster_regen_share']:.1f} %",
            _num(d["img_s_backbone"]),
            _num(d["img_s_total"]),
        ]
        if has_ref:
            cells += [_num(d.get("flop_ratio_backbone"), "×"), _num(d.get("speedup_backbone"), "×"),
                      _num(d.get("flop_ratio_total"), "×"), _num(d.get("speedup_total"), "×")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for d in summary:
        if d["clustering"]:
            note = (f"- {d['model']}: Cluster MLP {100 * d['cluster_share']:.1f} % and Regenerator "
                    f"{100 * d['regenerator_share']:.1f} % of all FLOPs")
            if "flop_ratio_total" in d and not math.isfinite(d.get("speedup_vs_flop_ratio_backbone", math.nan)):
                note += f"; whole-model speed-up = {100 * d['speedup_vs_flop_ratio_total']:.0f} % of the total FLOP ratio"
            elif "flop_ratio_total" in d:
                note += (f"; backbone speed-up = {100 * d['speedup_vs_flop_ratio_backbone']:.0f} % of the backbone FLOP ratio; "
                         f"backbone FLOP ratio without the Cluster MLP {d['flop_ratio_backbone_without_cluster_mlp']:.2f}×")
            notes.append(note)
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustvit_core.benchmark",
        description="FLOPs (backbone / total, per image), speed (img/s, backbone-only and whole model), "
        "token counts and ratios against the plain-ViT row, for registry models measured in one run.",
        epilog="Examples:\n"
        "  python -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images synthetic --num-images 4 --size 256\n"
        "  python -m clustvit_core.benchmark --models cwfid_vit cwfid_k3_ip3 --images cwfid:test --size 448 --oracle-clusters\n"
        "  python -m clustvit_core.benchmark --models suim_vit suim_k4_ip3 --images IMG_DIR --oracle-clusters MASK_DIR backbone=small\n"
        "KEY=VALUE arguments override model settings of every model (as in train and evaluate).\n"
        "Without --oracle-clusters the Cluster module decides; with random weights (--weights none) that is\n"
        "meaningless for token counts, so pass --weights default for trained models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", required=True, help="registry names (python -c 'import clustvit_core as cc; print(cc.list_models())'); include a *_vit model to get ratios")
    parser.add_argument("--images", default="synthetic", help="folder of images, 'synthetic[:agri|underwater]' (generated at --size) or a dataset NAME[:SPLIT] such as 'cwfid:test' (default split test; other datasets need their root variable, see the README) (default: synthetic)")
    parser.add_argument("--num-images", type=int, default=8, help="use at most this many images (default 8)")
    parser.add_argument("--size", type=int, default=448, help="network input size in pixels (square), a multiple of the models' patch size (default 448 = 32 x 14 = 28 x 16)")
    parser.add_argument("--oracle-clusters", nargs="?", const="", default=None, metavar="MASK_DIR",
                        help="replace the Cluster module by pseudo-clusters of ground-truth labels: from MASK_DIR (matched by file name), or, with no value, from the source's own labels")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--batch-modes", nargs="+", default=["auto"], choices=["auto", "pad", "split"],
                        help="how a batch of images with different token counts runs the reduced blocks: one padded, masked batch "
                        "(pad), image by image (split), or auto (split on CPU, pad on GPU); several modes give one row each")
    parser.add_argument("--backends", nargs="+", default=["torch"], metavar="BACKEND",
                        help="torch, onnxruntime, onnxruntime-mha: run the models with PyTorch (eager) and/or ONNX Runtime (CPU; "
                        "each model exported at --size first; -mha: exported with ONNX Runtime's fused MultiHeadAttention, "
                        "export --attention ort); one row per model and backend, ratios within a backend (default torch)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="add a row per torch row with the model replayed from CUDA graphs (clustvit_core.cuda_graphs: "
                        "a ClustViT as two recorded parts, its reduced length rounded up to a multiple of 32); ratios "
                        "within the graph rows. Without CUDA the parts run eagerly (a dry run)")
    parser.add_argument("--providers", nargs="+", default=["cpu"], choices=ONNX_PROVIDERS,
                        help="ONNX Runtime providers for the onnxruntime rows, one row set each: cpu (the onnxruntime wheel), "
                        "cuda, tensorrt (both need onnxruntime-gpu; tensorrt also the tensorrt wheels and gets one row set per "
                        "fp32 / fp16 in --precisions). ONNX rows take the image from and return the logits to host memory, "
                        "so on a GPU their times include those copies (default cpu)")
    parser.add_argument("--weights", default="none", help="'none' (random init, default: fine for FLOPs/speed with oracle clusters) or 'default' (the registry's trained weights)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over the images (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds; the median counts (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help=f"where the torch rows run: {DEVICE_HELP} (default cpu; ONNX Runtime rows run where --providers says)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="torch rows per precision (torch.autocast; fp16 needs CUDA), e.g. --precisions fp32 fp16 (default fp32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--update-readme", type=Path, default=None, metavar="README",
                        help="replace the text between '<!-- BEGIN benchmark:SECTION -->' and '<!-- END benchmark:SECTION -->' in this file with the command and the table")
    parser.add_argument("--readme-section", default="cwfid", metavar="SECTION", help="marker name for --update-readme (default cwfid)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every model, e.g. backbone=small")
    args = parser.parse_intermixed_args(argv)
    args.models, given = split_key_values(args.models)
    args.backends, given_after_backends = split_key_values(args.backends)
    args.overrides = given + given_after_backends + args.overrides
    with cli_errors(parser.prog):
        if args.update_readme:  # before the measurement, not after it
            check_section(args.update_readme, args.readme_section)
        if not args.models:
            raise ConfigError("--models: name at least one registry model, e.g. --models cwfid_vit cwfid_k3_ip3")
        unknown = [b for b in args.backends if b not in BACKENDS]
        if unknown or not args.backends:
            raise ConfigError(f"--backends {' '.join(unknown)}: choose from {', '.join(BACKENDS)}")
        if args.batch < 1 or args.num_images < 1 or args.rounds < 1 or args.warmup < 0:
            raise ConfigError("--batch, --num-images and --rounds must be >= 1, --warmup >= 0")
        args.device = resolve_device(args.device, "--device")
        if "onnxruntime-mha" in args.backends and "tensorrt" in args.providers:
            raise ConfigError("--backends onnxruntime-mha with --providers tensorrt: TensorRT cannot build ONNX Runtime's fused "
                              "attention op; use --backends onnxruntime for the tensorrt rows")
        if set(args.providers) - {"cpu"} and set(args.backends) == {"torch"}:
            raise ConfigError(f"--providers {' '.join(args.providers)}: providers apply to ONNX Runtime rows; add --backends onnxruntime")
        for precision in args.precisions:
            autocast_dtype(precision, args.device, "--precisions")
        args.overrides = parse_overrides(args.overrides)
        args.overrides.setdefault("img_size", args.size)
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        rows, n = run(args)
        summary = summarize(rows, n)
        gpu_rows = args.device.type == "cuda" or (set(args.providers) - {"cpu"} and torch.cuda.is_available())
        gpu = torch.cuda.get_device_name(args.device if args.device.type == "cuda" else 0) if gpu_rows else None
        setup_line = (f"{n} images from {args.images} at {args.size}x{args.size}, batch {args.batch}, "
                      + (f"GPU {gpu}, " if gpu else "")
                      + f"{torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()}), "
                      f"clusters: {'oracle (ground truth)' if args.oracle_clusters is not None else 'Cluster module'}")
        table = format_table(summary)
        print(setup_line)
        print(table)
        if args.update_readme:
            command = command_line("clustvit_core.benchmark", argv)
            replace_section(args.update_readme, args.readme_section, f"`{command}`\n\n{setup_line}\n\n{table}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            setup = {k: v for k, v in vars(args).items() if k != "json"}
            setup["device"] = str(args.device)
            if gpu:
                setup["gpu"] = gpu
            setup["torch_threads"] = torch.get_num_threads()
            args.json.write_text(json.dumps({"setup": setup, "rows": summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
