"""The main job, with nothing to download: the segmentation node with the shipped demo model, fed by
a replay of a synthetic field recording, over real DDS.

    python -m clustvit_ros.demo                 # what `make demo` runs

Builds a rosbag2 bag of synthetic field scenes (640x480, 10 Hz, with ground-truth labels; scenes of
the test split, never trained on), starts `segment_node` on it through `evaluate_bag`, prints fps,
latency, tokens and mIoU against the ground truth, and writes overlay / cluster PNGs, a per-frame
plot and the JSON report to the output folder.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from clustvit_core.errors import InputError, cli_errors
from clustvit_core.readme import command_line, replace_section
from clustvit_core.devices import PRECISIONS
from clustvit_ros.params import add_options

PROG = "python -m clustvit_ros.demo"
DEMO_MODEL = "synthetic_agri_k3_ip3"


def build_parser() -> argparse.ArgumentParser:
    intro, _, details = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(prog=PROG, description=f"{intro}\n\n{details}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames in the recording (default 60)")
    parser.add_argument("--rate", type=float, default=10.0, help="recording frame rate in Hz (default 10)")
    parser.add_argument("--size", default="640x480", help="frame size WxH (default 640x480)")
    parser.add_argument("--kind", default="agri", choices=("agri",),
                        help="scene kind (the shipped demo model is trained on agri scenes)")
    parser.add_argument("--model", default=DEMO_MODEL, help=f"model to run (default {DEMO_MODEL}, shipped)")
    add_options(parser, ("device",))
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="the node's inference backend; onnxruntime first exports the model's weights to "
                             "OUT/MODEL.onnx (checked against PyTorch, as python -m clustvit_core.export --onnx) "
                             "and runs that file (default torch)")
    add_options(parser, ("providers",))
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="the node's inference precision (default: with torch, bf16 on a CPU that computes bf16 in "
                             "hardware, Intel AMX or AVX512-BF16, where it is faster than fp32 at the same tokens; "
                             "else, and with onnxruntime, fp32)")
    parser.add_argument("--out", default="out/demo", help="output folder, replaced on each run (default out/demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--update-readme", metavar="README",
                        help="also write the results into the file's <!-- BEGIN benchmark:ros-demo --> section")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with cli_errors(PROG):
            return run(args, argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def demo_precision(device: str) -> str:
    """The demo's default precision: bf16 on a CPU that computes it natively (AMX, AVX512-BF16: faster than fp32 at
    the same tokens), else fp32 (the node's default)."""
    from clustvit_core.devices import native_bf16_cpu, resolve_device

    return "bf16" if resolve_device(device).type == "cpu" and native_bf16_cpu() else "fp32"


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from clustvit_ros.bags import write_image_bag
    from clustvit_ros.evaluate_bag import evaluate_bag, format_summary, save_plot
    from clustvit_ros.make_bag import SYNTHETIC_SEED, parse_size, synthetic_frames

    if args.frames < 1 or args.rate <= 0:
        raise InputError(f"--frames {args.frames} --rate {args.rate}: need at least 1 frame and a rate > 0")
    size = parse_size(args.size)
    if args.precision is None:
        args.precision = "fp32" if args.backend == "onnxruntime" else demo_precision(args.device)
    if args.backend == "torch" and args.providers != "cpu":
        raise InputError(f"--providers {args.providers}: providers are for --backend onnxruntime")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = args.model
    if args.backend == "onnxruntime":
        model = str(export_demo_onnx(args.model, out))
    bag = out / "synthetic_bag"
    frames = synthetic_frames(args.kind, args.frames, size, SYNTHETIC_SEED)
    write_image_bag(bag, frames, rate=args.rate, progress=not args.quiet)
    print(f"recording: {args.frames} synthetic {args.kind} frames {size[0]}x{size[1]} at {args.rate:g} Hz -> {bag}")
    backend = "torch" if args.backend == "torch" else f"onnxruntime, providers {args.providers}"
    print(f"running segment_node ({args.model}, {backend}, precision {args.precision}) on the replay ...", flush=True)
    node_params = {"device": args.device, "precision": args.precision, "backend": args.backend}
    if args.backend == "onnxruntime":
        node_params["providers"] = args.providers
    result = evaluate_bag(bag, model, gt_topic="/labels", rate=1.0, save_dir=out / "images", num_saved=3,
                          progress=not args.quiet, **node_params)
    (out / "report.json").write_text(json.dumps(result, indent=2))
    plot = save_plot(result, out / "frames.png")
    print(format_summary(result))
    print(f"wrote {out}/report.json, {plot}, and {len(result['saved_images'])} overlay/cluster PNGs in {out}/images")
    if args.update_readme:
        replace_section(args.update_readme, "ros-demo", markdown(result, args, command_line("clustvit_ros.demo", argv)))
    return 0


def export_demo_onnx(model: str, out: Path) -> Path:
    """`model`'s registry weights as a checked ONNX graph at its input size, OUT/MODEL.onnx."""
    from clustvit_core.export import export_onnx_file
    from clustvit_core.registry import default_weights

    dst = out / f"{model}.onnx"
    print(f"exporting {model} to {dst} (checked against PyTorch) ...", flush=True)
    return export_onnx_file(default_weights(model), dst, model=model, check_images=2, log=lambda _: None)


def markdown(r: dict, args: argparse.Namespace, command: str) -> str:
    """The demo's result as the README shows it."""
    import platform

    import torch

    from clustvit_ros.evaluate_bag import format_markdown

    setup = (f"{r['frames_in']} synthetic {args.kind} frames {args.size} at {args.rate:g} Hz, model {r['model']}, "
             f"backend {args.backend}" + (f" ({args.providers})" if args.backend != "torch" else "")
             + f", precision {args.precision}, {torch.get_num_threads()} CPU threads ({platform.machine()}), device {args.device}")
    return format_markdown(r, setup, command)


if __name__ == "__main__":
    sys.exit(main())
