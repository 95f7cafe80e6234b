"""The paper's tables on real field images: `python -m clustvit_core.paper_tables --out results/`.

Trains (or reuses the checkpoints in OUT/runs/) and evaluates on CWFID test every model of
- Table I: ViT, CTS and ClustViT (k3 ip3, k3 ip4, k3 ip3 with merging through the decoder, its masks
  copied from the cluster tokens or regenerated; k3 ip3 with proportional attention and a residual
  Regenerator, `_prop`), with the Segmenter head, and ViT / ClustViT k3 ip3 with UPerNet, each from the
  same pretrained start with the same recipe and iterations (the registry's `_cwfid` recipe unless --iters
  says otherwise); and ClustViT k3 ip3 made from the trained ViT row (`_from_vit`: the ViT's weights, 300
  iterations training only the Cluster module; `_from_vit_decmerge`: the same weights merging through the
  decoder with copied scores, `_from_vit_decregen` with regenerated masks (its decoder Regenerator trains
  too); `clustvit_k3_ip2_from_vit_decmerge`: the ablation's ip 2 point merging through the decoder;
  `clustvit_k3_ip3_uper_from_vit`: the same made from the trained UPerNet ViT row);
- the ablation (`--ablation`): k in {1..5} at ip 4 and ip in {2..6} at k 3, each made from the trained ViT
  as `_from_vit` is (8 more Cluster modules of a few minutes each; k3 ip3 is the Table I row).
Then it measures img/s of every model in one process (batch 1, the test
images, interleaved rounds, median) and writes OUT/README.md (tables, the issue's targets met or missed,
size-stratified recall, plots: mIoU vs GFLOPs, img/s bars, tokens per image), OUT/results.json and
OUT/machine.json (CPU, threads, torch version, GPU if any, seeds, iterations, pretrained start).

On this 2-core CPU a CWFID model trains from the pretrained start in 1-3 hours (UPerNet the longest: about 3 hours on 2026-12-01), one made from a trained row
in minutes; the rows made from trained rows train first. `--rows` picks models, `--budget MINUTES` stops
starting new trainings after that much training time (the tables then hold the trained rows and name the
missing ones; running again resumes). Interrupt at will: training resumes from its last checkpoint.
`--rows ... --keep-other-rows` adds rows to an earlier run's tables (or measures them anew) without re-running
the others: mIoU, tokens and GFLOPs do not depend on the run; img/s does, so each row says which run timed it
and speed-ups are taken only against a ViT timed in the same run. `--render` rewrites the reports from OUT/*.json
without measuring anything (the test suite checks that the committed ones are exactly that).

`--quick` runs the whole pipeline with tiny models, 2 iterations and 2 test images (the test suite's run).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError, cli_errors
from .metrics import BUCKET_NAMES, PATCH_BUCKET_NAMES

PROG = "python -m clustvit_core.paper_tables"
README_SECTION = "paper-tables"
QUICK = {"embed_dim": 32, "depth": 6, "num_heads": 2, "cluster_hidden": 16, "patch_size": 16, "img_size": 64,
         "uper_channels": 16, "pretrained": None}
QUICK_TRAIN = {"iters": 2, "batch_size": 2, "warmup_iters": 0, "val_interval": 1000, "ckpt_interval": 1000,
               "num_workers": 0, "crop_size": 64, "val_images": 1}
# The targets (issue 10), checked on the numbers by `targets`.
TARGET_GFLOPS_RATIO, TARGET_MIOU_LOSS, TARGET_SPEED_SHARE, TARGET_ORACLE_TOKENS = 2.5, 1.0, 0.9, 1.5


# proportional attention and a residual Regenerator (ModelConfig): merging starts where the pretrained ViT is
PROP = {"regenerator": "residual", "proportional_attention": True}


@dataclass(frozen=True)
class Row:
    label: str  # the row's name in the tables
    model: str  # registry name
    overrides: dict = field(default_factory=dict)
    table: str = "main"  # main | ablation
    run: str | None = None  # its folder in OUT/runs (default: label); an ablation row equal to a Table I row shares its run
    start: str | None = None  # label of the row whose trained weights this one starts from (train.init_from)
    evaluate: dict = field(default_factory=dict)  # model config overrides at evaluation (a variant of its run's weights)

    @property
    def key(self) -> str:
        """What this row evaluates: its run, or its own variant of the run."""
        return self.label if self.evaluate else self.folder

    @property
    def folder(self) -> str:
        return self.run or self.label


def table_rows(ablation: bool) -> list[Row]:
    rows = [
        Row("vit", "cwfid_vit"),
        Row("cts", "cwfid_cts"),
        Row("clustvit_k3_ip3", "cwfid_k3_ip3"),
        # made from the trained ViT row: its weights as they are, only the Cluster module learns (registry entry)
        Row("clustvit_k3_ip3_from_vit", "cwfid_k3_ip3_from_vit", start="vit"),
        # the same weights merging through the decoder: the Cluster module's training does not depend on it
        Row("clustvit_k3_ip3_from_vit_decmerge", "cwfid_k3_ip3_from_vit", start="vit", run="clustvit_k3_ip3_from_vit",
            evaluate={"decoder_merge": True}),
        # the same Cluster module's recipe merging through the decoder with regenerated masks: a second residual
        # Regenerator (starting as a copy of the cluster's token) learns too (registry entry)
        Row("clustvit_k3_ip3_from_vit_decregen", "cwfid_k3_ip3_from_vit_decregen", start="vit"),
        # a Cluster MLP 4x narrower (hidden 384 instead of 1548): its cost on every token before ip
        Row("clustvit_k3_ip3_from_vit_h384", "cwfid_k3_ip3_from_vit", {"cluster_hidden": 384}, start="vit"),
        # the ablation's ip 2 point (its run) merging through the decoder: the most merging at the ViT's accuracy
        Row("clustvit_k3_ip2_from_vit_decmerge", "cwfid_k3_ip3_from_vit", {"ip": 2}, start="vit", run="k3_ip2",
            evaluate={"decoder_merge": True}),
        # the paper recipe with teacher iterations (the merge follows the pseudo-clusters at first), proportional
        # attention and a residual Regenerator: the same start, recipe and iterations as the ViT (registry entry)
        Row("clustvit_k3_ip3_teacher", "cwfid_k3_ip3_teacher"),
        # a pixel refiner trained alone on the trained ViT, and the ClustViT made from that (registry entries)
        Row("vit_refine", "cwfid_vit_refine", start="vit"),
        Row("clustvit_k3_ip3_from_vit_refine", "cwfid_k3_ip3_from_vit_refine", start="vit_refine"),
        Row("clustvit_k3_ip3_from_vit_refine_decmerge", "cwfid_k3_ip3_from_vit_refine", start="vit_refine",
            run="clustvit_k3_ip3_from_vit_refine", evaluate={"decoder_merge": True}),
        # the UPerNet pair: its ViT, and a ClustViT made from it as _from_vit is from the Segmenter one
        Row("vit_uper", "cwfid_vit", {"head": "uper", "uper_channels": 256}),
        Row("clustvit_k3_ip3_uper_from_vit", "cwfid_k3_ip3_from_vit", {"head": "uper", "uper_channels": 256},
            start="vit_uper"),
        # more ClustViTs from the pretrained start with the ViT's recipe (listed last: they train last, an hour or more each)
        Row("clustvit_k3_ip3_prop", "cwfid_k3_ip3", PROP),
        Row("clustvit_k3_ip4", "cwfid_k3_ip3", {"ip": 4}),
        Row("clustvit_k3_ip3_decmerge", "cwfid_k3_ip3_decmerge"),
        Row("clustvit_k3_ip3_decregen", "cwfid_k3_ip3_decregen"),
        Row("clustvit_k3_ip3_uper", "cwfid_k3_ip3", {"head": "uper", "uper_channels": 256}),
    ]
    if ablation:  # ClustViTs made from the trained ViT (a few minutes each), so that every point fits one day
        points = [(k, 4) for k in (1, 2, 3, 4, 5)] + [(3, ip) for ip in (2, 3, 5, 6)]
        rows += [Row(f"k{k}_ip{ip}", "cwfid_k3_ip3_from_vit", {"k": k, "ip": ip}, "ablation",
                     "clustvit_k3_ip3_from_vit" if (k, ip) == (3, 3) else None, start="vit")
                 for k, ip in points]
    return rows


def select_rows(labels: list[str] | None, ablation: bool) -> list[Row]:
    """Every row of the tables asked for, or the rows named in `labels` (Table I or ablation labels)."""
    if not labels:
        return table_rows(ablation)
    known = {r.label: r for r in table_rows(True)}
    bad = [label for label in labels if label not in known]
    if bad:
        raise ConfigError(f"--rows {' '.join(bad)}: unknown row; choose from {', '.join(known)}")
    return [known[label] for label in dict.fromkeys(labels)]


def trained(row: Row, out: Path) -> bool:
    return (out / "runs" / row.folder / "final.safetensors").is_file()


def start_chain(row: Row) -> list[Row]:
    """The rows `row` starts from (the first first), then `row`."""
    chain = [row]
    while chain[0].start:
        chain.insert(0, select_rows([chain[0].start], True)[0])
    return chain


def untrained_chain(row: Row, out: Path) -> list[Row]:
    """The part of `row`'s start chain after its last trained row: what training `row` still takes."""
    chain = start_chain(row)
    done = [i for i, r in enumerate(chain) if trained(r, out)]
    return chain[done[-1] + 1:] if done else chain


def long_trainings_left(row: Row, out: Path) -> int:
    """How many trainings from the pretrained start (an hour or more each on this CPU) `row` still needs: its
    own unless it is made from another row (minutes), plus those of the rows it starts from."""
    return sum(r.start is None for r in untrained_chain(row, out))


def training_order(rows: list[Row], out: Path) -> list[Row]:
    """`rows` with the cheapest to train first, else in table order: the rows made from trained rows in minutes
    come before those that need a training from the pretrained start, so a --budget run gets most rows."""
    return sorted(rows, key=lambda row: long_trainings_left(row, out))


def training_plan(rows: list[Row], out: Path) -> str:
    """One line: how many of `rows`' runs (start rows included) are trained, and which still train from the
    pretrained start (long) or from a trained row (short), in the order they will."""
    runs = {r.folder: r for row in rows for r in start_chain(row)}.values()
    todo = [row for row in runs if not trained(row, out)]
    long = [row.folder for row in todo if row.start is None]
    short = [row.folder for row in todo if row.start is not None]
    return (f"{len(runs) - len(todo)} of {len(runs)} runs trained; to train: {len(short)} made from a trained row "
            f"(short){': ' + ', '.join(short) if short else ''}; {len(long)} from the pretrained start "
            f"(long){': ' + ', '.join(long) if long else ''}")


def train_or_reuse(row: Row, out: Path, *, quick: bool, iters: int | None, device: str, data_root, log) -> Path:
    """OUT/runs/FOLDER/final.safetensors, trained (resumably) if it is not there yet."""
    from .registry import load_config
    from .train import Trainer, TrainSettings

    work = out / "runs" / row.folder
    final = work / "final.safetensors"
    if final.is_file():
        log(f"{row.label}: reusing {final}")
        return final
    cfg = load_config(row.model).replace(name=row.folder, **{**row.overrides, **(QUICK if quick else {})})
    train_over = dict(QUICK_TRAIN) if quick else {}
    if row.start:
        start = select_rows([row.start], True)[0]
        train_over["init_from"] = str(train_or_reuse(start, out, quick=quick, iters=iters, device=device,
                                                     data_root=data_root, log=log))
    elif iters:
        train_over["iters"] = iters
    settings = TrainSettings.from_config(cfg, train_over)
    log(f"{row.label}: training {settings.iters} iterations ({cfg.kind}, head {cfg.head}) -> {work}")
    return Trainer(cfg, settings, work_dir=work, data_root=data_root, device=device, resume=True, quiet=True).run()


def oracle_tokens(dataset, n: int, config) -> float:
    """Mean tokens per image with oracle clusters (the pseudo-clusters of the ground truth at the network
    input): impure patches and the patches of classes ranked below k stay tokens, each present cluster is one."""
    from .pseudo import oracle_ids

    counts = []
    for i in range(n):
        ids = oracle_ids(dataset[i].labels, config.data.input_size, config.k, config.patch_size)
        counts.append(int((ids == 0).sum()) + len(set(ids[ids > 0].tolist())))
    return statistics.fmean(counts)


def measure_speed(models: dict, images, rounds: int, progress: bool = False) -> dict[str, float]:
    """img/s per model, batch 1: every image through every model in turn, `rounds` times; median round."""
    from tqdm import tqdm

    from .predictor import model_device
    from .preprocessing import preprocess

    seconds = {name: [] for name in models}
    inputs = {name: [preprocess(im, m.config.data.input_size, m.config.mean, m.config.std).to(model_device(m))
                     for im in images] for name, m in models.items()}
    with torch.inference_mode():
        for name, m in models.items():  # warm-up
            m(inputs[name][0])
        bar = tqdm(total=rounds * len(images), desc=f"img/s of {len(models)} models", unit="img", disable=not progress,
                   leave=False)
        for _ in range(rounds):
            for name in models:
                seconds[name].append(0.0)
            for i in range(len(images)):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(inputs[name][i])
                    seconds[name][-1] += time.perf_counter() - t0
                bar.update(1)
        bar.close()
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


def run(out: Path, *, quick: bool = False, ablation: bool = False, rows: list[str] | None = None,
        budget: float | None = None, iters: int | None = None, device: str = "cpu", data_root=None, rounds: int = 3,
        num_images: int | None = None, keep_other_rows: bool = False, command: str | None = None,
        log=print) -> tuple[dict, dict]:
    """Train (or reuse) and evaluate the selected rows; write OUT/README.md, results.json, machine.json and plots.
    With `keep_other_rows`, the rows of OUT/results.json that this run does not measure stay (`merge_runs`).
    Returns (results, machine): what results.json and machine.json hold."""
    from .data import build_dataset
    from .evaluate import evaluate
    from .registry import build_model
    from .weights import read_checkpoint_config

    out.mkdir(parents=True, exist_ok=True)
    previous = read_previous(out) if keep_other_rows else None  # a missing or unreadable file fails before training
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    selected = select_rows(rows, ablation)
    dataset = build_dataset("cwfid", "test", data_root)
    n = 2 if quick else min(num_images or len(dataset), len(dataset))
    order = training_order(selected, out)
    log(training_plan(order, out))
    weights, missing, started = {}, [], time.monotonic()
    for row in order:  # training first: one long CPU job at a time, nothing timed meanwhile
        if row.folder in weights:
            continue
        if not trained(row, out) and budget is not None and time.monotonic() - started >= 60 * budget:
            missing.append(row.label)
            continue
        weights[row.folder] = train_or_reuse(row, out, quick=quick, iters=iters, device=device, data_root=data_root, log=log)
    missing = [row.label for row in selected if row.label in missing]  # in table order
    if missing:
        log(f"--budget {budget:g}: not trained yet (run again to go on): {', '.join(missing)}")
    if not weights:
        raise ConfigError(f"--budget {budget:g}: no model in {out / 'runs'} is trained yet; give a budget > 0")
    evaluated, models, oracle, parts = {}, {}, {}, {}
    log(f"evaluating {len({row.key for row in selected if row.folder in weights})} models on {n} CWFID test images "
        "(mIoU, tokens, GFLOPs)")
    for row in selected:
        key = row.key
        if row.folder not in weights or key in models:
            continue
        path = weights[row.folder]
        model = build_model(read_checkpoint_config(path).replace(**row.evaluate), weights=path).to(device).eval()
        r = evaluate(model, dataset, max_images=n, flops_images=None, progress=not quick, device=device,
                     recall_exclude=[0])
        evaluated[key] = r.to_dict()
        models[key] = model
        if model.config.clustering:
            oracle[key] = oracle_tokens(dataset, n, model.config)
        parts[key] = flop_parts(model, dataset, n, device)
        log(f"{key}: mIoU {100 * (r.miou or 0):.1f}, tokens {r.tokens.mean:.0f}, GFLOPs {r.gflops.mean:.2f}")
    log(f"timing {len(models)} models in turn, batch 1, {1 if quick else rounds} rounds over {n} images "
        "(nothing else should run on this machine meanwhile)")
    speed = measure_speed(models, [dataset[i].image for i in range(n)], 1 if quick else rounds, progress=not quick)
    results = {}
    for row in selected:
        if row.folder not in weights:
            continue
        key = row.key
        cfg = models[key].config
        results[row.label] = {"row": row.__dict__, "weights": str(weights[row.folder]), "kind": cfg.kind,
                              "head": cfg.head, "img_s": speed[key], "oracle_tokens": oracle.get(key),
                              "gflops_parts": parts[key], "measured": measured,
                              **evaluated[key]}
    machine = machine_info(device)
    machine.update({"measured": measured, "command": command})
    machine.update({"iterations": {row.label: _train_setting(out / "runs" / row.folder, "iters")
                                   for row in selected if row.folder in weights and not row.start},
                    "started_from": {row.label: {"row": row.start, "iters": _train_setting(out / "runs" / row.folder, "iters"),
                                                 "train_only": _train_setting(out / "runs" / row.folder, "train_only"),
                                                 "evaluate": row.evaluate}
                                     for row in selected if row.folder in weights and row.start},
                    "pretrained": sorted({models[f].config.pretrained or "random initialization" for f in models}),
                    "seed": 0, "images": n, "quick": quick, "not_trained": missing})
    if previous is not None:
        results, machine = merge_runs(*previous, results, machine)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "machine.json").write_text(json.dumps(machine, indent=2))
    write_report(results, machine, out)
    return results, machine


def write_report(results: dict, machine: dict, out: Path) -> None:
    """OUT/README.md and the plots, from what results.json and machine.json hold (also `--render`)."""
    plots = write_plots(results, out)
    (out / "README.md").write_text(report(results, machine, plots))


def read_previous(out: Path, option: str = "--keep-other-rows") -> tuple[dict, dict]:
    """(results, machine) of an earlier run in OUT, for --keep-other-rows and --render."""
    try:
        return tuple(json.loads((out / name).read_text()) for name in ("results.json", "machine.json"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{option}: cannot read the earlier run's {out}/results.json and machine.json "
                          f"({e}); run without {option} to measure every row anew") from e


def merge_runs(old_results: dict, old_machine: dict, new_results: dict, new_machine: dict) -> tuple[dict, dict]:
    """The tables of an earlier run with this run's rows added or replaced (--keep-other-rows).

    mIoU, tokens and GFLOPs do not depend on the run; img/s does, so every row keeps the `measured` stamp of
    the run that timed it, and speed ratios are taken only against a ViT timed in the same run (`_vs_vit`).
    machine.json stays the earlier run's, with `later_runs`: one entry per later run (its machine, command
    and rows) for the rows it measured. Row order: the tables' order."""
    if (old_machine.get("images"), old_machine.get("quick")) != (new_machine["images"], new_machine["quick"]):
        raise ConfigError(f"--keep-other-rows: the earlier run measured {old_machine.get('images')} images"
                          f"{' (quick)' if old_machine.get('quick') else ''}, this one {new_machine['images']}"
                          f"{' (quick)' if new_machine['quick'] else ''}; use the same --num-images and --quick, or "
                          "run without --keep-other-rows")
    order = [r.label for r in table_rows(True)]
    merged = {**old_results, **new_results}
    results = {label: merged[label] for label in sorted(merged, key=order.index)}
    new = set(new_results)
    later = [dict(run, rows=[label for label in run["rows"] if label not in new])
             for run in old_machine.get("later_runs", [])]
    run_info = {k: v for k, v in new_machine.items()
                if k not in ("iterations", "started_from", "pretrained", "seed", "images", "quick", "not_trained")}
    machine = dict(old_machine)
    machine.update({
        "iterations": {**{k: v for k, v in old_machine["iterations"].items() if k not in new}, **new_machine["iterations"]},
        "started_from": {**{k: v for k, v in old_machine["started_from"].items() if k not in new},
                         **new_machine["started_from"]},
        "pretrained": sorted(set(old_machine["pretrained"]) | set(new_machine["pretrained"])),
        "not_trained": [label for label in order if label not in results
                        and label in set(old_machine["not_trained"]) | set(new_machine["not_trained"])],
        "later_runs": [run for run in later if run["rows"]] + [dict(run_info, rows=list(new_results))]})
    return results, machine


def flop_parts(model, dataset, n: int, device: str) -> dict[str, float]:
    """Mean GFLOPs per image by part (`flops.flop_breakdown`): backbone blocks, Cluster MLP, Regenerator, head."""
    from .flops import flop_breakdown
    from .preprocessing import preprocess

    cfg = model.config
    sums: dict[str, float] = {}
    for i in range(n):
        x = preprocess(dataset[i].image, cfg.data.input_size, cfg.mean, cfg.std).to(device)
        for part, flops in flop_breakdown(model, x).items():
            sums[part] = sums.get(part, 0.0) + flops / 1e9 / n
    sums["blocks"] = sums["backbone"] - sums["cluster"] - sums["regenerator"]
    return sums


def _train_setting(work: Path, key: str):
    cfg = work / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("train", {}).get(key)


def _vs_vit(results: dict, label: str) -> dict:
    """Ratios against the Table I ViT with the same head; the speed-up only if that ViT was timed in the same
    run (else None)."""
    head = results[label]["head"]
    vit = next((v for v in results.values() if v["kind"] == "vit" and v["head"] == head and v["row"]["table"] == "main"), None)
    r = results[label]
    if vit is None or r["gflops"] is None:
        return {}
    return {"gflops_ratio": vit["gflops"]["mean"] / r["gflops"]["mean"],
            "speedup": r["img_s"] / vit["img_s"] if _same_run(r, vit) else None,
            "miou_delta": 100 * ((r["miou"] or 0) - (vit["miou"] or 0))}


def _same_run(a: dict, b: dict) -> bool:
    """Whether two rows were timed in one run (img/s compares only there)."""
    return a.get("measured") == b.get("measured")


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def targets(results: dict) -> list[str]:
    """The issue's targets, each checked on the measured rows (Markdown bullets)."""
    main = {k: v for k, v in results.items() if v["row"]["table"] == "main"}
    rel = {k: _vs_vit(results, k) for k, v in main.items() if v["kind"] == "clustvit"}
    rel = {k: v for k, v in rel.items() if v and v["speedup"] is not None}  # timed in its ViT's run
    lines = []
    if rel:
        within = [k for k, v in rel.items() if -v["miou_delta"] <= TARGET_MIOU_LOSS]
        best = (max(within, key=lambda k: rel[k]["gflops_ratio"]) if within
                else max(rel, key=lambda k: rel[k]["miou_delta"]))
        b = rel[best]
        lines.append(f"- ≥ {TARGET_GFLOPS_RATIO}× fewer GFLOPs than the ViT at ≤ {TARGET_MIOU_LOSS} mIoU loss: "
                     + _met(b["gflops_ratio"] >= TARGET_GFLOPS_RATIO and -b["miou_delta"] <= TARGET_MIOU_LOSS)
                     + f" (best row {best}: {b['gflops_ratio']:.2f}× at {b['miou_delta']:+.1f} mIoU"
                     + ("" if within else "; no ClustViT row is within the mIoU loss, this is the closest") + ")")
        share = b["speedup"] / b["gflops_ratio"]
        lines.append(f"- measured speed-up ≥ {100 * TARGET_SPEED_SHARE:.0f} % of the GFLOP ratio: "
                     f"{_met(share >= TARGET_SPEED_SHARE)} ({best}: {b['speedup']:.2f}× of {b['gflops_ratio']:.2f}×, "
                     f"{100 * share:.0f} %; the paper: 75 %)")
    cts = main.get("cts")
    if cts is not None and rel:
        beating = [k for k in rel if _same_run(main[k], cts) and main[k]["img_s"] > cts["img_s"]
                   and (main[k]["miou"] or 0) >= (cts["miou"] or 0)]
        lines.append(f"- ClustViT beats CTS on img/s at equal or better mIoU: {_met(bool(beating))} (CTS "
                     f"{cts['img_s']:.2f} img/s, mIoU {100 * (cts['miou'] or 0):.1f}"
                     + (f"; beaten by {', '.join(beating)}" if beating else "") + ")")
    ratios = {k: v["tokens"]["mean"] / v["oracle_tokens"] for k, v in main.items() if v.get("oracle_tokens")}
    if ratios:
        lines.append(f"- trained Cluster module within {TARGET_ORACLE_TOKENS}× of the oracle's tokens: "
                     + ", ".join(f"{k} {r:.2f}× ({main[k]['tokens']['mean']:.0f} vs {main[k]['oracle_tokens']:.0f}) "
                                 + ("met" if 1 / TARGET_ORACLE_TOKENS <= r <= TARGET_ORACLE_TOKENS else "missed")
                                 for k, r in ratios.items()))
    return lines


def table(results: dict, labels: list[str], names: list[str]) -> list[str]:
    """One Markdown table of the given rows."""
    lines = ["| model | kind | head | mIoU | " + " | ".join(names) + " | img/s | GFLOPs | tokens | GFLOPs ratio | "
             "speed-up | speed-up / GFLOPs ratio | ΔmIoU |", "|---" * (11 + len(names)) + "|"]
    for label in labels:
        r, rel = results[label], _vs_vit(results, label)
        per_class = " | ".join(f"{100 * (r['per_class'][c]['iou'] or 0):.1f}" for c in names)
        lines.append(
            f"| {label} | {r['kind']} | {r['head']} | {100 * (r['miou'] or 0):.1f} | {per_class} | {r['img_s']:.2f} | "
            f"{r['gflops']['mean']:.1f} ± {r['gflops']['std']:.1f} | {r['tokens']['mean']:.0f} ± {r['tokens']['std']:.0f} | "
            + (f"{rel['gflops_ratio']:.2f}× | " + (f"{rel['speedup']:.2f}× | {100 * rel['speedup'] / rel['gflops_ratio']:.0f} % | "
                                                   if rel["speedup"] is not None else "– | – | ")
               + f"{rel['miou_delta']:+.1f} |" if rel else "– | – | – | – |"))
    return lines


def _started_from(machine: dict) -> dict[str, list[str]]:
    """{how a row was made from another row's weights: [labels]}, rows made alike grouped."""
    groups: dict[str, list[str]] = {}
    for label, s in machine.get("started_from", {}).items():
        how = (f"the {s['row']} row's trained weights, then {s['iters']} iterations training only "
               f"{', '.join(s['train_only'] or ['everything'])}"
               + "".join(f", evaluated with {k}={json.dumps(v)}" for k, v in (s.get("evaluate") or {}).items()))
        groups.setdefault(how, []).append(label)
    return groups


def _machine_line(machine: dict) -> str:
    iters = sorted({v for v in machine["iterations"].values() if v is not None})
    return (f"{machine['images']} CWFID test images; {machine.get('cpu_model', machine['cpu'])}, {machine['torch_threads']} "
            f"torch threads, torch {machine['torch']}" + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
            + f"; {'/'.join(map(str, iters)) or '?'} training iterations per model from {', '.join(machine['pretrained'])}, seed {machine['seed']}"
            + "".join(f"; {', '.join(labels)}: {how}" for how, labels in _started_from(machine).items())
            + (". QUICK RUN (tiny models, not results)" if machine["quick"] else ""))


def _later_runs_lines(machine: dict) -> list[str]:
    """One sentence per later run whose rows were added with --keep-other-rows (empty for a single run)."""
    return [f"{', '.join(run['rows'])}: trained, evaluated and timed in a later run ({run['measured']}; "
            f"{run.get('cpu_model', run['cpu'])}, {run['torch_threads']} torch threads, torch {run['torch']}"
            + (f", GPU {run['gpu']}" if "gpu" in run else "") + ")"
            + (f" by `{run['command']}`" if run.get("command") else "")
            + "; their speed-ups are against the ViT with the same head timed in that run, img/s across runs are not compared."
            for run in machine.get("later_runs", [])]


def report(results: dict, machine: dict, plots: list[str]) -> str:
    """OUT/README.md."""
    names = next(iter(results.values()))["class_names"]
    lines = ["# ClustViT vs ViT vs CTS on CWFID test", "", _machine_line(machine) + ".", ""]
    lines += [x for line in _later_runs_lines(machine) for x in (line, "")]
    if machine["not_trained"]:
        lines += [f"Not trained yet (left out): {', '.join(machine['not_trained'])}.", ""]
    for which, title in (("main", "Table I"), ("ablation", "Ablation (k at ip 4, ip at k 3; ClustViTs made from the trained ViT)")):
        labels = [k for k, v in results.items() if v["row"]["table"] == which]
        if labels:
            lines += [f"## {title}", ""] + table(results, labels, names) + [""]
    lines += ["Ratios against the Table I ViT with the same head; img/s measured in one process (batch 1, median "
              "of interleaved rounds); whole-image input at the training size.", "", "## Targets", ""]
    lines += targets(results) or ["- (no ClustViT row yet)"]
    lines += ["", "## Where the FLOPs go (GFLOPs per image, mean)", "",
              "| model | backbone (without Cluster MLP, Regenerator) | Cluster MLP | Regenerator | head | total |", "|---" * 6 + "|"]
    for label, r in results.items():
        g = r["gflops_parts"]
        lines.append(f"| {label} | {g['blocks']:.1f} | {g['cluster']:.2f} | {g['regenerator']:.2f} | {g['head']:.1f} | {g['total']:.1f} |")
    lines += _recall_table(results, "Size-stratified recall (crop and weed objects; soil excluded)", None, BUCKET_NAMES)
    lines += _recall_table(results, "Recall by object size in patch tokens (crop and weed objects; the ViT's tokens an "
                           "object covers)", "by_patches", PATCH_BUCKET_NAMES)
    lines.append("")
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _recall_table(results: dict, title: str, key: str | None, buckets) -> list[str]:
    """A recall-by-size table of the Segmenter rows of Table I: the size_recall summary's buckets (key None) or
    its sub-summary `key` (e.g. by_patches); cells 'recall (objects)'."""
    lines = ["", f"## {title}", "", "| model | " + " | ".join(f"{b} (objects)" for b in buckets) + " |",
             "|---" * (1 + len(buckets)) + "|"]
    for label, r in results.items():
        sr = r["size_recall"] if key is None else r["size_recall"].get(key)
        if r["row"]["table"] != "main" or r["head"] != "segmenter" or not sr:
            continue
        cells = [("–" if sr["mean"][b] is None else f"{100 * sr['mean'][b]:.1f}") + f" ({sr['objects'][b]})" for b in buckets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def summary(results: dict, machine: dict, out: Path) -> str:
    """The main README's section: Table I and the targets (the full report is OUT/README.md)."""
    names = next(iter(results.values()))["class_names"]
    main = [k for k, v in results.items() if v["row"]["table"] == "main"]
    lines = [_machine_line(machine) + ".", ""] + [x for line in _later_runs_lines(machine) for x in (line, "")]
    lines += table(results, main, names) + [""]
    if machine["not_trained"]:
        lines += [f"Not trained yet: {', '.join(machine['not_trained'])}.", ""]
    lines += targets(results) + ["", f"Ablation, size-stratified recall and plots: [{out}/README.md]({out}/README.md)."]
    return "\n".join(lines)


def write_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def save(fig, name):
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(str(out / name))

    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    colors = iter(plt.cm.tab20.colors)  # 20 distinct colours: the default cycle repeats after 10 Table I rows
    for label, r in results.items():  # Table I rows named; ablation points small and grey (their own plot names them)
        marker = {"vit": "s", "cts": "^", "clustvit": "o"}[r["kind"]]
        xy = (r["gflops"]["mean"], 100 * (r["miou"] or 0))
        if r["row"]["table"] == "main":
            ax.scatter(*xy, marker=marker, label=label, color=next(colors, "k"))
        else:
            ax.scatter(*xy, marker=marker, s=12, color="0.6", zorder=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: it hides no point
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("CWFID test: accuracy vs compute")
    save(fig, "miou_vs_gflops.png")
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(results) + 1), constrained_layout=True)
    labels = list(results)
    base = Counter(r.get("measured") for r in results.values()).most_common(1)[0][0]
    later = [results[k].get("measured") != base for k in labels]  # timed in another run: not comparable
    ax.barh([k + (" (later run)" if x else "") for k, x in zip(labels, later)], [results[k]["img_s"] for k in labels],
            hatch=["//" if x else "" for x in later], color=["0.7" if x else "C0" for x in later])
    ax.set_xlabel("images / s (batch 1)" + ("; hatched: timed in a later run" if any(later) else ""))
    ax.invert_yaxis()
    save(fig, "img_s.png")
    merged = [k for k, r in results.items() if r["kind"] != "vit" and r["row"]["table"] == "main" and r["images"]]
    if merged:  # Fig. 4 analogue: tokens per image by model; Fig. 1 analogue: classes per image
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(merged) + 2), constrained_layout=True,
                                      gridspec_kw={"width_ratios": (3, 1)})
        ax.boxplot([[im["tokens"] for im in results[k]["images"]] for k in merged], orientation="horizontal")  # matplotlib >= 3.10
        ax.set_yticks(range(1, len(merged) + 1), merged)
        ax.invert_yaxis()
        full = results[merged[0]]["tokens"]["full_mean"]
        ax.axvline(full, color="k", linestyle="--", label=f"ViT ({full:.0f})")
        oracles = {results[k]["oracle_tokens"] for k in merged if results[k].get("oracle_tokens")}
        for value in sorted(oracles):
            ax.axvline(value, color="gray", linestyle=":", label=f"oracle clusters ({value:.0f})")
        ax.set_xlabel("tokens per image after merging")
        ax.legend(fontsize=7, loc="lower right")
        classes = Counter(im["classes_present"] for im in results[merged[0]]["images"])
        ax2.bar([str(c) for c in sorted(classes)], [classes[c] for c in sorted(classes)])
        ax2.set_xlabel("classes per image")
        ax2.set_ylabel("images")
        save(fig, "tokens.png")
    ablation = {k: r for k, r in results.items() if r["row"]["table"] == "ablation"}
    if ablation:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
        for ax, key, fixed in ((axes[0], "k", ("ip", 4)), (axes[1], "ip", ("k", 3))):
            pts = sorted((r["row"]["overrides"][key], 100 * (r["miou"] or 0), r["gflops"]["mean"])
                         for r in ablation.values() if r["row"]["overrides"][fixed[0]] == fixed[1])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
                for x, y, g in pts:
                    ax.annotate(f"{g:.0f} GFLOPs", (x, y), fontsize=7)
            ax.set_xlabel(f"{key} ({fixed[0]} = {fixed[1]})")
            ax.set_ylabel("mIoU (%)")
        save(fig, "ablation.png")
    return paths


def main(argv: list[str] | None = None) -> int:
    from .readme import check_section, command_line, replace_section

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 iterations, 2 images: checks the pipeline")
    parser.add_argument("--ablation", action="store_true", help="also the k / ip ablation rows (8 more Cluster modules on the ViT)")
    parser.add_argument("--rows", nargs="+", metavar="LABEL", default=None,
                        help="only these rows (Table I or ablation labels, e.g. vit cts clustvit_k3_ip3)")
    parser.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                        help="start no new training after this many minutes of training (rows left out are named)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per model (default: the recipe's)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--data-root", default=None, help="CWFID folder (default ../shared/data/cwfid)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds for img/s (default 3)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N",
                        help="evaluate and time only the first N test images (default all 21)")
    parser.add_argument("--keep-other-rows", action="store_true",
                        help="keep the rows of OUT/results.json that this run does not measure (e.g. --rows vit_uper "
                             "clustvit_k3_ip3_uper_from_vit added to an earlier table); speed-ups only against a ViT "
                             "timed in the same run")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite OUT/README.md, the plots and (with --update-readme) the README "
                             "section from OUT/results.json and machine.json, e.g. after a change to the report's code")
    parser.add_argument("--update-readme", type=Path, default=None, metavar="README",
                        help=f"also write Table I and the targets into README's section {README_SECTION}")
    args = parser.parse_args(argv)
    with cli_errors(PROG):
        if args.iters is not None and args.iters < 1:
            raise ConfigError(f"--iters {args.iters}: must be >= 1")
        if args.num_images is not None and args.num_images < 1:
            raise ConfigError(f"--num-images {args.num_images}: must be >= 1")
        if args.budget is not None and args.budget < 0:
            raise ConfigError(f"--budget {args.budget:g}: minutes of training, >= 0")
        if args.render and (args.rows or args.keep_other_rows or args.quick or args.ablation):
            raise ConfigError("--render measures nothing and keeps every row of OUT/results.json; drop --rows, "
                              "--keep-other-rows, --quick and --ablation")
        if args.update_readme:
            check_section(args.update_readme, README_SECTION)
        select_rows(args.rows, args.ablation)  # a bad label fails before any training
        command = command_line("clustvit_core.paper_tables", argv)
        if args.render:
            results, machine = read_previous(args.out, "--render")
            write_report(results, machine, args.out)
        else:
            results, machine = run(args.out, quick=args.quick, ablation=args.ablation, rows=args.rows, budget=args.budget,
                                   iters=args.iters, device=args.device, data_root=args.data_root, rounds=args.rounds,
                                   num_images=args.num_images, keep_other_rows=args.keep_other_rows, command=command)
        if args.update_readme:  # the command of the run whose rows these are first; later runs name theirs (in summary)
            replace_section(args.update_readme, README_SECTION,
                            f"`{machine.get('command') or command}`\n\n{summary(results, machine, args.out)}")
        print(f"wrote {args.out / 'README.md'}" + (" and plots" if args.render else ", results.json, machine.json and plots"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
