"""Where an exported model's time goes under ONNX Runtime (CPU): per op type, from ONNX Runtime's own profiler.

    python scripts/profile_onnx.py                      # cwfid_vit and cwfid_k3_ip3, 6 CWFID test images, 448x448
    python scripts/profile_onnx.py --attention ort --num-images 3

Each model is exported as `benchmark --backends onnxruntime` exports it (oracle clusters for a ClustViT, random
weights: the token counts come from the ground truth), run once untimed and then `--rounds` times per image with
profiling on. Printed per model: wall ms per image, the share of it spent inside kernels, the matrix products'
throughput (GMAC/s, from the profiled input shapes), the merge's own steps (NonZero, CumSum, Gather, Where, ...)
and the op types that take the most time.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MATMUL_OPS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
MERGE_OPS = {"NonZero", "CumSum", "Gather", "GatherElements", "Where", "Equal", "ArgMax", "ReduceSum", "Not"}


def macs(input_shape: list[int], output_shape: list[int]) -> int:
    """Multiply-accumulates of one matrix-product node: every output element sums over A's last dimension
    (the profiler lists only non-constant inputs, so B's shape may be missing; the output's is always there)."""
    return math.prod(output_shape) * input_shape[-1] if input_shape and output_shape else 0


def summarize_profile(path: str | Path, runs: int) -> dict:
    """Per-op-type kernel microseconds per run, matrix-product MACs, from an ONNX Runtime profile JSON."""
    events = json.loads(Path(path).read_text())
    per_op, mac_total, mm_us, wall = collections.Counter(), 0, 0, []
    for e in events:
        if e.get("name") == "model_run":
            wall.append(e["dur"])
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"].get("op_name", "?")
        per_op[op] += e["dur"]
        if op in MATMUL_OPS:
            first = lambda key: next(iter(e["args"][key][0].values())) if e["args"].get(key) else []  # noqa: E731
            mac_total += macs(first("input_type_shape"), first("output_type_shape"))
            mm_us += e["dur"]
    return {"per_op_us": {k: v / runs for k, v in per_op.items()}, "matmul_gmac_s": mac_total / max(mm_us, 1) / 1e3,
            "run_ms": sum(wall) / max(len(wall), 1) / 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Runs on the CPU provider.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--models", nargs="+", default=["cwfid_vit", "cwfid_k3_ip3"], help="registry names (default: cwfid_vit cwfid_k3_ip3)")
    parser.add_argument("--images", default="cwfid:test", help="as benchmark --images (default cwfid:test)")
    parser.add_argument("--num-images", type=int, default=6, help="images (default 6)")
    parser.add_argument("--size", type=int, default=448, help="input side in pixels (default 448)")
    parser.add_argument("--rounds", type=int, default=2, help="profiled passes over the images (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--attention", choices=("onnx", "ort"), default="onnx", help="export --attention (default onnx)")
    parser.add_argument("--top", type=int, default=10, help="op types listed per model (default 10)")
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch

    from clustvit_core.benchmark import load_samples
    from clustvit_core.errors import cli_errors
    from clustvit_core.onnx_runtime import export_onnx
    from clustvit_core.preprocessing import preprocess
    from clustvit_core.pseudo import oracle_ids
    from clustvit_core.registry import build_model

    with cli_errors("scripts/profile_onnx.py"), tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build_model(name, img_size=args.size).eval()
            cfg = model.config
            samples = load_samples(args.images, args.num_images, args.size, None, cfg.palette)
            x = preprocess([s.image for s in samples], args.size, cfg.mean, cfg.std).numpy()
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", size=(args.size, args.size), oracle=model.clustering,
                               attention=args.attention)
            feeds = [{"image": x[i : i + 1], "keep_bias": np.asarray(0.0, np.float32)} for i in range(len(samples))]
            if model.clustering:  # the clusters from the ground truth, built once, outside the timed loop
                for f, s in zip(feeds, samples):
                    f["oracle_ids"] = oracle_ids(s.labels, args.size, cfg.k, cfg.patch_size).numpy()
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / name)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for f in feeds:  # untimed (allocations, first-shape work), but profiled: counted in `runs` below
                session.run(None, f)
            start = time.perf_counter()
            for _ in range(args.rounds):
                for f in feeds:
                    session.run(None, f)
            wall_ms = 1e3 * (time.perf_counter() - start) / (args.rounds * len(samples))
            runs = (args.rounds + 1) * len(samples)
            prof = summarize_profile(session.end_profiling(), runs)
            per_op = prof["per_op_us"]
            kernels_ms = sum(per_op.values()) / 1e3
            merge_ms = sum(v for k, v in per_op.items() if k in MERGE_OPS) / 1e3
            with torch.inference_mode():
                tokens = [int(model(torch.from_numpy(f["image"]), **({"cluster_ids": torch.from_numpy(f["oracle_ids"])}
                                                                     if model.clustering else {})).tokens[0]) for f in feeds]
            print(f"== {name} ({args.attention} attention, {len(samples)} images of {args.images} at {args.size}x{args.size}, "
                  f"{args.threads} threads, tokens mean {sum(tokens) / len(tokens):.0f})")
            print(f"   {wall_ms:.1f} ms/image (profiler on); inside kernels {kernels_ms:.1f} ms "
                  f"({100 * kernels_ms / prof['run_ms']:.1f} % of a run); matrix products {prof['matmul_gmac_s']:.0f} GMAC/s; "
                  f"merge steps ({', '.join(sorted(MERGE_OPS & set(per_op)))}) {merge_ms:.2f} ms "
                  f"({100 * merge_ms / prof['run_ms']:.1f} %)")
            for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"   {op:24s} {us / 1e3:8.2f} ms  {100 * us / 1e3 / kernels_ms:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
