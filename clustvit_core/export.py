"""Export trained weights for deployment.

    python -m clustvit_core.export IN.safetensors OUT.safetensors [--fp16]     # weights for PyTorch
    python -m clustvit_core.export IN.safetensors OUT.onnx --onnx [--size H W]  # a graph for ONNX Runtime / TensorRT

Takes a trainer output (best/final.safetensors, or a training checkpoint iter_*.safetensors).
safetensors: keeps the model tensors, optionally as float16 (half the size; the model casts them back on
loading), checks that the result loads strictly into the model its config describes, writes it atomically
with that config. ONNX: the whole model with its token merging (`onnx_graph`), the config in the metadata,
then checked against PyTorch on real and synthetic images (same tokens per image, labels and logits;
`onnx_runtime.check_onnx`) — a graph that disagrees is not written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, WeightsError, cli_errors
from .onnx_graph import ATTENTION_KINDS
from .registry import build_model, load_config
from .weights import load_weights, model_tensors, read_checkpoint_config, read_state_dict, save_checkpoint

CHECK_IMAGES = 4  # images per check source


def export(src: str | Path, dst: str | Path, fp16: bool = False, model: str | None = None) -> Path:
    config = _config(src, model)
    tensors = model_tensors(read_state_dict(src))
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    out = save_checkpoint(dst, tensors, config, {"exported_from": str(src), "fp16": fp16})
    load_weights(build_model(config), out)  # must load strictly
    return out


def _config(src, model: str | None):
    config = load_config(model) if model is not None else read_checkpoint_config(src)
    if config is None:
        raise WeightsError(f"{src}: holds no model config; pass --model NAME")
    return config


def check_sources(config, data_root: str | None = None) -> list[str]:
    """Where the ONNX check takes its images: the model's dataset (test split) when it is on this machine,
    and generated field scenes."""
    from .data import build_dataset

    sources = []
    if config.dataset and not config.dataset.startswith("synthetic"):
        try:
            build_dataset(config.dataset, "test", root=data_root)
            sources.append(f"{config.dataset}:test")
        except Exception:  # noqa: BLE001 - not on this machine: generated scenes only
            pass
    return sources + ["synthetic:agri"]


def export_onnx_file(src: str | Path, dst: str | Path, *, model: str | None = None, size=None, opset: int | None = None,
                     check_images: int = CHECK_IMAGES, data_root: str | None = None, attention: str = "onnx",
                     log=print) -> Path:
    """Export `src` to `dst` (.onnx) and check it against PyTorch; WeightsError (nothing written) if they disagree."""
    from .benchmark import load_samples
    from .onnx_runtime import DEFAULT_OPSET, MAX_LOGIT_DIFF, MIN_LABEL_AGREEMENT, OnnxModel, check_onnx, export_onnx

    config = _config(src, model)
    net = build_model(config, weights=src)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.unchecked")
    export_onnx(net, tmp, size=size, opset=opset or DEFAULT_OPSET, provenance={"exported_from": str(src)},
                attention=attention)
    try:
        onnx_model = OnnxModel(tmp)
        h, w = onnx_model.size
        for source in check_sources(config, data_root):
            samples = load_samples(source, check_images, max(h, w), None, config.palette)
            images = [s.image for s in samples]
            for keep_bias in (0.0, -1.0):
                r = check_onnx(onnx_model, net, images, keep_bias=keep_bias)
                log(f"check {source} keep_bias {keep_bias:+.0f}: {r['images']} images, tokens "
                    f"{'equal' if r['tokens_equal'] else 'DIFFER'}, labels {100 * r['label_agreement']:.3f} % equal "
                    f"(worst image), logits max diff {r['max_logit_diff']:.2e}")
                if not r["ok"]:
                    raise WeightsError(
                        f"{dst}: ONNX Runtime disagrees with PyTorch on {source} (need equal tokens, >= "
                        f"{100 * MIN_LABEL_AGREEMENT:.1f} % equal labels, logits within {MAX_LOGIT_DIFF:g}); not written")
        tmp.replace(dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustvit_core.export",
        description="Export a trainer output: model tensors as .safetensors (optionally float16), or the whole "
        "model as an ONNX graph that keeps the per-image token merging and the keep_bias knob.",
        epilog="Examples:\n  python -m clustvit_core.export work_dirs/synthetic_agri_k3_ip3/best.safetensors "
        "weights/synthetic_agri_k3_ip3.safetensors --fp16\n"
        "  python -m clustvit_core.export work_dirs/cwfid_k3_ip3/final.safetensors cwfid_k3_ip3.onnx --onnx\n"
        "ONNX: inputs image (float [1, 3, H, W], normalized) and keep_bias (float scalar); outputs logits\n"
        "[1, C, H, W], cluster_ids [1, H/p, W/p] and tokens [1]. Run it with OnnxModel, evaluate/benchmark\n"
        "--backend onnxruntime or the ROS node (backend:=onnxruntime, model:=FILE.onnx).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="best.safetensors, final.safetensors or checkpoints/iter_*.safetensors")
    parser.add_argument("output", type=Path, help="the .safetensors (or, with --onnx, .onnx) file to write")
    parser.add_argument("--fp16", action="store_true", help="store floating-point tensors as float16 (safetensors)")
    parser.add_argument("--onnx", action="store_true", help="write an ONNX graph (also implied by an .onnx output name)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="ONNX input size in pixels, multiples of the patch size (default: the model's input size)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--attention", choices=ATTENTION_KINDS, default="onnx",
                        help="onnx: attention as MatMul/Softmax, runs anywhere (TensorRT included); ort: ONNX Runtime's "
                        "fused MultiHeadAttention op, faster on its CPU and CUDA providers, not TensorRT (default onnx)")
    parser.add_argument("--check-images", type=int, default=CHECK_IMAGES,
                        help=f"images per check source (the model's dataset if found, synthetic scenes) (default {CHECK_IMAGES})")
    parser.add_argument("--data-root", default=None, help="dataset folder for the check images")
    parser.add_argument("--model", default=None,
                        help="registry name whose config replaces the one stored with the weights (needed when the input "
                        "holds none), e.g. cwfid_k3_ip3_from_vit_decmerge for a cwfid_k3_ip3_from_vit file: the same "
                        "weights, the head on the merged sequence")
    args = parser.parse_args(argv)
    with cli_errors("clustvit_core.export"):
        if args.onnx or args.output.suffix == ".onnx":
            if args.fp16:
                raise ConfigError("--fp16 with --onnx: export fp32; TensorRT builds fp16 engines from it (providers tensorrt)")
            out = export_onnx_file(args.input, args.output, model=args.model, size=args.size, opset=args.opset,
                                   check_images=args.check_images, data_root=args.data_root, attention=args.attention)
        else:
            if args.attention != "onnx":
                raise ConfigError("--attention is an ONNX export setting: add --onnx (or an .onnx output name)")
            out = export(args.input, args.output, args.fp16, args.model)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
