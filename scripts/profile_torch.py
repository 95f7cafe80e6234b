"""Where a PyTorch model's time goes per image, from torch.profiler: on a GPU, how much of the wall time the
device spends in kernels (the rest is Python, kernel launches and host-device waits), how many kernels an image
costs and which lines of our code make the host wait for the device; on the CPU, the op types that take the most time.

    python scripts/profile_torch.py --device cuda --precision fp16     # cwfid_vit and cwfid_k3_ip3, 6 CWFID images
    python scripts/profile_torch.py --num-images 2 --size 112          # on the CPU

Models as `benchmark` builds them (random weights, oracle clusters for a ClustViT: the token counts come from the
ground truth), one untimed pass per image, `--rounds` timed passes (no profiler: the wall time per image), then
`--rounds` profiled passes per image, batch 1. Kernel time is compared with the unprofiled wall time.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--models", nargs="+", default=["cwfid_vit", "cwfid_k3_ip3"], help="registry names (default: cwfid_vit cwfid_k3_ip3)")
    parser.add_argument("--images", default="cwfid:test", help="as benchmark --images (default cwfid:test)")
    parser.add_argument("--num-images", type=int, default=6, help="images (default 6)")
    parser.add_argument("--size", type=int, default=518, help="input side in pixels (default 518)")
    parser.add_argument("--rounds", type=int, default=3, help="profiled passes per image (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="autocast precision (default fp32)")
    parser.add_argument("--top", type=int, default=8, help="op types listed per model (default 8)")
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from clustvit_core import build_model
    from clustvit_core.benchmark import load_samples
    from clustvit_core.devices import autocast_dtype
    from clustvit_core.preprocessing import preprocess
    from clustvit_core.pseudo import oracle_ids, oracle_purity

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cast = autocast_dtype(args.precision, device, "--precision")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if cuda else 'CPU'}, {args.precision}, "
          f"{args.size}x{args.size}, batch 1")
    for name in args.models:
        model = build_model(name).to(device).eval()
        cfg = model.config
        samples = load_samples(args.images, args.num_images, args.size, None, cfg.palette)
        x = preprocess([s.image for s in samples], args.size, cfg.mean, cfg.std).to(device)
        kwargs = [{}] * len(samples)
        if cfg.clustering:
            kwargs = [{"cluster_ids": oracle_ids(s.labels, args.size, cfg.k, cfg.patch_size).to(device)} for s in samples]
        elif cfg.sharing:
            kwargs = [{"share_scores": oracle_purity(s.labels, args.size, cfg.patch_size).to(device)} for s in samples]

        def run_all():
            for i in range(len(samples)):
                with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
                    model(x[i : i + 1], **kwargs[i])
            if cuda:
                torch.cuda.synchronize(device)

        with torch.inference_mode():
            run_all()
            rounds = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                run_all()
                rounds.append((time.perf_counter() - start) * 1e3 / len(samples))
            wall_ms = statistics.median(rounds)
            waits = collections.Counter()
            if cuda:  # which lines make the host wait for the device (one pass over the images)
                root = str(Path(__file__).resolve().parents[1] / "clustvit_core")

                def where(message, *_args, **_kwargs):  # the innermost line of clustvit_core on the stack
                    if "synchroniz" in str(message):
                        ours = [f for f in traceback.extract_stack() if f.filename.startswith(root)]
                        waits[f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"] += 1

                with warnings.catch_warnings():
                    warnings.simplefilter("always")
                    warnings.showwarning = where
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        run_all()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
            with profile(activities=activities) as prof:
                for _ in range(args.rounds):
                    run_all()
        n = args.rounds * len(samples)
        events = prof.key_averages()
        line = f"{name}: {wall_ms:.2f} ms/img wall"
        if cuda:
            kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
            kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
            syncs = {e.key: e.count / n for e in events if e.key in SYNC_EVENTS}
            line += (f", GPU kernels {kernel_us / 1e3 / n:.2f} ms/img ({100 * kernel_us / 1e3 / n / wall_ms:.0f} % of wall), "
                     f"{kernels / n:.0f} kernels/img, per img: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in sorted(syncs.items())))
        print(line)
        if waits:
            print("  host waits for the device at (per img): "
                  + ", ".join(f"{where} {count / len(samples):.1f}" for where, count in waits.most_common()))
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        top = sorted((e for e in events if getattr(e, key) > 0), key=lambda e: -getattr(e, key))[: args.top]
        for e in top:
            print(f"    {e.key[:60]:60s} {getattr(e, key) / 1e3 / n:8.3f} ms/img  {e.count / n:7.1f} calls/img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
