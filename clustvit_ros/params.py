"""The segmentation node's parameters: one table, read by the node (declarations, descriptors,
validation), the launch helper, config/segment.yaml's test and the README's table.

Importing this module needs no ROS. `python -m clustvit_ros.params` prints the README table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Param:
    name: str
    default: bool | int | float | str
    description: str
    live: bool = False  # may change while the node runs (else read-only after start)
    range: tuple[float, float] | None = None  # inclusive bounds of a number
    choices: tuple[str, ...] | None = None  # documentation of allowed strings

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "int", float: "double", str: "string"}[type(self.default)]


PARAMETERS: tuple[Param, ...] = (
    Param("model", "synthetic_agri_k3_ip3",
          "Model registry name (config/models/NAME.yaml) or a path to a model YAML."),
    Param("weights", "",
          "Weights file (.safetensors or weights-only .pth); empty = the file the registry entry names."),
    Param("device", "auto", "Inference device: auto (cuda if available, else cpu), cpu, cuda or cuda:N.",
          choices=("auto", "cpu", "cuda", "cuda:N")),
    Param("precision", "fp32", "Inference precision: fp32, fp16 or bf16 (fp16/bf16 autocast; fp16 needs CUDA).",
          choices=PRECISIONS),
    Param("input_size", 0, "Network input side in pixels (multiple of 16); 0 = the model's training size.",
          range=(0, 4096)),
    Param("threads", 0, "CPU threads for torch (0 = torch's default).", range=(0, 256)),
    Param("enable", True, "Process frames; false = subscriptions stay, nothing is computed (also ~/enable service).",
          live=True),
    Param("keep_bias", 0.0,
          "Added to the Cluster module's keep logit: > 0 keeps more tokens (slower), < 0 merges more (faster).",
          live=True, range=(-50.0, 50.0)),
    Param("overlay_alpha", 0.5, "Palette weight in ~/overlay (0 = image only, 1 = palette only).", live=True,
          range=(0.0, 1.0)),
    Param("cluster_alpha", 0.6, "Cluster colour weight in ~/clusters (kept tokens stay untinted).", live=True,
          range=(0.0, 1.0)),
    Param("publish_mask", True, "Publish ~/mask (when subscribed).", live=True),
    Param("publish_mask_color", True, "Publish ~/mask_color (when subscribed).", live=True),
    Param("publish_overlay", True, "Publish ~/overlay (when subscribed).", live=True),
    Param("publish_clusters", True, "Publish ~/clusters (when subscribed).", live=True),
    Param("compressed_input", False,
          "Also subscribe to image/compressed (sensor_msgs/CompressedImage, png/jpeg)."),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", range=(0.05, 60.0)),
)

BY_NAME = {p.name: p for p in PARAMETERS}


def check_value(name: str, value) -> str | None:
    """None if `value` is acceptable for parameter `name`, else the reason (one line, names the fix)."""
    spec = BY_NAME.get(name)
    if spec is None:
        return None  # not ours (e.g. qos_overrides.*, use_sim_time): rclpy validates those
    if spec.range is not None and not (spec.range[0] <= value <= spec.range[1]):
        return f"{name}={value!r} is outside [{spec.range[0]:g}, {spec.range[1]:g}]"
    if name == "device" and not DEVICE_PATTERN.match(str(value)):
        return f"device={value!r}: use auto, cpu, cuda or cuda:N"
    if name == "precision" and value not in PRECISIONS:
        return f"precision={value!r}: use one of {', '.join(PRECISIONS)}"
    if name == "input_size" and value % 16:
        return f"input_size={value}: must be a multiple of 16 (or 0 for the model's size)"
    if name == "model" and not str(value).strip():
        return "model is empty: name a registered model (config/models/NAME.yaml) or a YAML path"
    return None


def markdown_table() -> str:
    """The parameters as a Markdown table (the README's)."""
    rows = ["| Parameter | Type | Default | Live | Description |", "|---|---|---|---|---|"]
    for p in PARAMETERS:
        default = repr(p.default) if isinstance(p.default, str) else str(p.default).lower() \
            if isinstance(p.default, bool) else str(p.default)
        bounds = f" Range {p.range[0]:g}..{p.range[1]:g}." if p.range else ""
        rows.append(f"| `{p.name}` | {p.type_name} | `{default}` | {'yes' if p.live else 'no'} | "
                    f"{p.description}{bounds} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
