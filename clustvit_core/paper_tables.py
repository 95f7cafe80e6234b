"""The paper's tables on real field images: `python -m clustvit_core.paper_tables --out results/`.

Trains (or reuses the checkpoints in OUT/runs/) and evaluates on CWFID test every model of
- Table I: ViT, CTS and ClustViT (k3 ip3, k3 ip4, k3 ip3 with merging through the decoder), with the
  Segmenter head, and ViT / ClustViT k3 ip3 with UPerNet;
- the ablation: k in {1..5} at ip 4 and ip in {2..6} at k 3 (`--ablation`, or a subset with `--budget`);
each from the same pretrained start with the same recipe and iterations (the registry's `_cwfid` recipe
unless --iters says otherwise). Then it measures img/s of every model in one process (batch 1, the test
images, interleaved rounds, median) and writes OUT/README.md (tables, plots: mIoU vs GFLOPs, img/s bars),
OUT/results.json, and OUT/machine.json (CPU, threads, torch version, GPU if any, seeds, iterations, start).

`--quick` runs the whole pipeline with tiny models, 2 iterations and 2 test images (the test suite's run).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError, cli_errors

PROG = "python -m clustvit_core.paper_tables"
SIZE_BUCKETS = ("small", "medium", "large", "huge")
QUICK = {"embed_dim": 32, "depth": 6, "num_heads": 2, "cluster_hidden": 16, "patch_size": 16, "img_size": 64,
         "uper_channels": 16, "pretrained": None}
QUICK_TRAIN = {"iters": 2, "batch_size": 2, "warmup_iters": 0, "val_interval": 1000, "ckpt_interval": 1000,
               "num_workers": 0, "crop_size": 64, "val_images": 1}


@dataclass(frozen=True)
class Row:
    label: str  # the row's name in the tables and its folder in OUT/runs
    model: str  # registry name
    overrides: dict = field(default_factory=dict)
    table: str = "main"  # main | ablation


def table_rows(ablation: bool) -> list[Row]:
    rows = [
        Row("vit", "cwfid_vit"),
        Row("cts", "cwfid_cts"),
        Row("clustvit_k3_ip3", "cwfid_k3_ip3"),
        Row("clustvit_k3_ip4", "cwfid_k3_ip3", {"ip": 4}),
        Row("clustvit_k3_ip3_decmerge", "cwfid_k3_ip3_decmerge"),
        Row("vit_uper", "cwfid_vit", {"head": "uper", "uper_channels": 256}),
        Row("clustvit_k3_ip3_uper", "cwfid_k3_ip3", {"head": "uper", "uper_channels": 256}),
    ]
    if ablation:
        rows += [Row(f"k{k}_ip4", "cwfid_k3_ip3", {"k": k, "ip": 4}, "ablation") for k in (1, 2, 3, 4, 5)]
        rows += [Row(f"k3_ip{ip}", "cwfid_k3_ip3", {"k": 3, "ip": ip}, "ablation") for ip in (2, 3, 4, 5, 6)]
    return rows


def train_or_reuse(row: Row, out: Path, *, quick: bool, iters: int | None, device: str, data_root, log) -> Path:
    """OUT/runs/LABEL/final.safetensors, trained (resumably) if it is not there yet."""
    from .registry import load_config
    from .train import Trainer, TrainSettings

    work = out / "runs" / row.label
    final = work / "final.safetensors"
    if final.is_file():
        log(f"{row.label}: reusing {final}")
        return final
    cfg = load_config(row.model).replace(name=row.label, **{**row.overrides, **(QUICK if quick else {})})
    train_over = dict(QUICK_TRAIN) if quick else {}
    if iters:
        train_over["iters"] = iters
    settings = TrainSettings.from_config(cfg, train_over)
    log(f"{row.label}: training {settings.iters} iterations ({cfg.kind}, head {cfg.head}) -> {work}")
    return Trainer(cfg, settings, work_dir=work, data_root=data_root, device=device, resume=True, quiet=True).run()


def measure_speed(models: dict, images, rounds: int) -> dict[str, float]:
    """img/s per model, batch 1: every image through every model in turn, `rounds` times; median round."""
    from .predictor import model_device
    from .preprocessing import preprocess

    seconds = {name: [] for name in models}
    inputs = {name: [preprocess(im, m.config.data.input_size, m.config.mean, m.config.std).to(model_device(m))
                     for im in images] for name, m in models.items()}
    with torch.inference_mode():
        for name, m in models.items():  # warm-up
            m(inputs[name][0])
        for _ in range(rounds):
            for name in models:
                seconds[name].append(0.0)
            for i in range(len(images)):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(inputs[name][i])
                    seconds[name][-1] += time.perf_counter() - t0
    return {name: len(images) / statistics.median(s) for name, s in seconds.items()}


def machine_info(device: str) -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def run(out: Path, *, quick: bool = False, ablation: bool = False, iters: int | None = None, device: str = "cpu",
        data_root=None, rounds: int = 3, num_images: int | None = None, log=print) -> dict:
    from .data import build_dataset
    from .evaluate import evaluate
    from .registry import build_model
    from .weights import read_checkpoint_config

    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(ablation)
    dataset = build_dataset("cwfid", "test", data_root)
    n = 2 if quick else (num_images or len(dataset))
    results, models = {}, {}
    for row in rows:
        weights = train_or_reuse(row, out, quick=quick, iters=iters, device=device, data_root=data_root, log=log)
        model = build_model(read_checkpoint_config(weights), weights=weights).to(device).eval()
        r = evaluate(model, dataset, max_images=n, flops_images=None, progress=False, device=device,
                     recall_exclude=[0])
        results[row.label] = {"row": row.__dict__, "weights": str(weights), "kind": model.config.kind,
                              "head": model.config.head, **r.to_dict()}
        models[row.label] = model
        log(f"{row.label}: mIoU {100 * (r.miou or 0):.1f}, tokens {r.tokens.mean:.0f}, GFLOPs {r.gflops.mean:.2f}")
    images = [dataset[i].image for i in range(n)]
    speed = measure_speed(models, images, 1 if quick else rounds)
    for label, img_s in speed.items():
        results[label]["img_s"] = img_s
    machine = machine_info(device)
    machine.update({"iterations": {k: _iters_of(out / "runs" / k) for k in results}, "seed": 0,
                    "images": n, "quick": quick})
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "machine.json").write_text(json.dumps(machine, indent=2))
    plots = write_plots(results, out)
    (out / "README.md").write_text(report(results, machine, plots))
    return results


def _iters_of(work: Path) -> int | None:
    cfg = work / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("train", {}).get("iters")


def _vs_vit(results: dict, label: str) -> dict:
    """Ratios against the ViT with the same head."""
    head = results[label]["head"]
    vit = next((v for v in results.values() if v["kind"] == "vit" and v["head"] == head), None)
    r = results[label]
    if vit is None or r["gflops"] is None:
        return {}
    return {"gflops_ratio": vit["gflops"]["mean"] / r["gflops"]["mean"], "speedup": r["img_s"] / vit["img_s"],
            "miou_delta": 100 * ((r["miou"] or 0) - (vit["miou"] or 0))}


def report(results: dict, machine: dict, plots: list[str]) -> str:
    """OUT/README.md."""
    names = next(iter(results.values()))["class_names"]
    head = ("| model | kind | head | mIoU | " + " | ".join(names) + " | img/s | GFLOPs | tokens | "
            "GFLOPs ratio | speed-up | speed-up / GFLOPs ratio | ΔmIoU |")
    lines = [f"# ClustViT vs ViT vs CTS on CWFID test ({machine['images']} images)", "",
             f"Machine: {machine.get('cpu_model', machine['cpu'])}, {machine['torch_threads']} torch threads, "
             f"torch {machine['torch']}" + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
             + (", QUICK RUN (tiny models, not results)" if machine["quick"] else ""), ""]
    for table in ("main", "ablation"):
        labels = [k for k, v in results.items() if v["row"]["table"] == table]
        if not labels:
            continue
        lines += [f"## {'Table I' if table == 'main' else 'Ablation (k at ip 4, ip at k 3)'}", "", head,
                  "|---" * (11 + len(names)) + "|"]
        for label in labels:
            r, rel = results[label], _vs_vit(results, label)
            per_class = " | ".join(f"{100 * (r['per_class'][c]['iou'] or 0):.1f}" for c in names)
            lines.append(
                f"| {label} | {r['kind']} | {r['head']} | {100 * (r['miou'] or 0):.1f} | {per_class} | {r['img_s']:.2f} | "
                f"{r['gflops']['mean']:.2f} ± {r['gflops']['std']:.2f} | {r['tokens']['mean']:.0f} ± {r['tokens']['std']:.0f} | "
                + (f"{rel['gflops_ratio']:.2f}× | {rel['speedup']:.2f}× | {100 * rel['speedup'] / rel['gflops_ratio']:.0f} % | "
                   f"{rel['miou_delta']:+.1f} |" if rel else "– | – | – | – |"))
        lines.append("")
    lines += ["Ratios against the ViT with the same head, measured in the same process (batch 1, median of "
              "interleaved rounds).", "", "## Size-stratified recall (crop and weed objects; soil excluded)", "",
              "| model | " + " | ".join(f"{b} (objects)" for b in SIZE_BUCKETS) + " |", "|---" * (1 + len(SIZE_BUCKETS)) + "|"]
    for label, r in results.items():
        if r["row"]["table"] != "main" or r["head"] != "segmenter":
            continue
        sr = r["size_recall"]
        cells = [("–" if sr["mean"][b] is None else f"{100 * sr['mean'][b]:.1f}") + f" ({sr['objects'][b]})"
                 for b in SIZE_BUCKETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for label, r in results.items():
        marker = {"vit": "s", "cts": "^", "clustvit": "o"}[r["kind"]]
        ax.scatter(r["gflops"]["mean"], 100 * (r["miou"] or 0), marker=marker)
        ax.annotate(label, (r["gflops"]["mean"], 100 * (r["miou"] or 0)), fontsize=7)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("CWFID test: accuracy vs compute")
    scatter = out / "miou_vs_gflops.png"
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(results) + 1), constrained_layout=True)
    labels = list(results)
    ax.barh(labels, [results[k]["img_s"] for k in labels])
    ax.set_xlabel("images / s (batch 1)")
    ax.invert_yaxis()
    bars = out / "img_s.png"
    fig.savefig(bars, dpi=120)
    plt.close(fig)
    return [str(scatter), str(bars)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 iterations, 2 images: checks the pipeline")
    parser.add_argument("--ablation", action="store_true", help="also the k / ip ablation rows (10 more models)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per model (default: the recipe's)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--data-root", default=None, help="CWFID folder (default ../shared/data/cwfid)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds for img/s (default 3)")
    args = parser.parse_args(argv)
    with cli_errors(PROG):
        if args.iters is not None and args.iters < 1:
            raise ConfigError(f"--iters {args.iters}: must be >= 1")
        run(args.out, quick=args.quick, ablation=args.ablation, iters=args.iters, device=args.device,
            data_root=args.data_root, rounds=args.rounds)
        print(f"wrote {args.out / 'README.md'}, results.json, machine.json and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
