"""Export trained weights for deployment: `python -m clustvit_core.export IN.safetensors OUT.safetensors [--fp16]`.

Takes a trainer output (best/final.safetensors, or a training checkpoint iter_*.safetensors), keeps the
model tensors, optionally stores them as float16 (half the size; the model casts them back on
loading), checks that the result loads strictly into the model its config describes, and writes it
atomically with that config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .errors import WeightsError, cli_errors
from .registry import build_model, load_config
from .weights import load_weights, model_tensors, read_checkpoint_config, read_state_dict, save_checkpoint


def export(src: str | Path, dst: str | Path, fp16: bool = False, model: str | None = None) -> Path:
    config = load_config(model) if model is not None else read_checkpoint_config(src)
    if config is None:
        raise WeightsError(f"{src}: holds no model config; pass --model NAME")
    tensors = model_tensors(read_state_dict(src))
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    out = save_checkpoint(dst, tensors, config, {"exported_from": str(src), "fp16": fp16})
    load_weights(build_model(config), out)  # must load strictly
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustvit_core.export",
        description="Keep the model tensors of a trainer output, optionally as float16, check they load, write them atomically.",
        epilog="Example:\n  python -m clustvit_core.export work_dirs/synthetic_agri_k3_ip3/best.safetensors "
        "weights/synthetic_agri_k3_ip3.safetensors --fp16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="best.safetensors, final.safetensors or checkpoints/iter_*.safetensors")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("--fp16", action="store_true", help="store floating-point tensors as float16")
    parser.add_argument("--model", default=None, help="registry name, when the input holds no config")
    args = parser.parse_args(argv)
    with cli_errors("clustvit_core.export"):
        out = export(args.input, args.output, args.fp16, args.model)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
