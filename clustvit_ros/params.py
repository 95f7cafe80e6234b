"""The segmentation node's parameters: one table, read by the node (declarations, descriptors,
validation), the launch helper, evaluate_bag's command line, config/segment.yaml's test and the
README's table.

Importing this module needs no ROS (nor torch). `python -m clustvit_ros.params` prints the README table.
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clustvit_core.devices import DEVICE_HELP, PRECISIONS, check_precision
from clustvit_core.errors import ConfigError
from clustvit_core.config import RESIZE_MODES

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
BACKENDS = ("auto", "torch", "onnxruntime")  # = clustvit_core.predictor.BACKENDS (which imports torch)
PROVIDERS = ("cpu", "cuda", "tensorrt")  # = clustvit_core.onnx_runtime.PROVIDERS


def provider_list(text: str) -> list[str]:
    """'tensorrt, cuda,cpu' -> ['tensorrt', 'cuda', 'cpu']."""
    return [p.strip() for p in str(text).split(",") if p.strip()]


_NAME_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def camera_name(topic: str) -> str:
    """A camera's name in its output topics (~/NAME/mask, ...): the input topic's names without the last
    one (the image stream's own name, e.g. image_raw), joined by '_'; a topic of one name keeps it.
    /front/image_raw -> front, /cam/left/image -> cam_left, /front_camera -> front_camera."""
    parts = [p for p in str(topic).strip().split("/") if p]
    return "_".join(parts[:-1] if len(parts) > 1 else parts)


def camera_topics(text: str) -> list[tuple[str, str]]:
    """The `image_topics` parameter as [(camera name, input topic)], in its order; [] for an empty text
    (the single input `image`). ConfigError (one line) for a topic that is no plain ROS topic name or
    two topics that give the same camera name."""
    out: dict[str, str] = {}
    for topic in provider_list(text):
        if not all(_NAME_TOKEN.match(p) for p in topic.removeprefix("/").split("/")):
            raise ConfigError(f"image_topics: {topic!r} is not a topic name (names of letters, digits and _ "
                              f"separated by /, e.g. /front/image_raw)")
        name = camera_name(topic)
        if name in out:
            raise ConfigError(f"image_topics: {out[name]} and {topic} both give the camera name {name!r} "
                              f"(outputs ~/{name}/*): a camera is named after its topic without the last name")
        out[name] = topic
    return [(name, topic) for name, topic in out.items()]


@dataclass(frozen=True)
class Param:
    name: str
    default: bool | int | float | str
    description: str
    live: bool = False  # may change while the node runs
    configure: bool = False  # read on the lifecycle configure/activate: may change while the node is unconfigured
    # (neither: read-only after start)

    @property
    def when_settable(self) -> str:
        return "yes" if self.live else "when unconfigured" if self.configure else "no"
    range: tuple[float, float] | None = None  # inclusive bounds of a number
    choices: tuple[str, ...] | None = None  # documentation of allowed strings

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "int", float: "double", str: "string"}[type(self.default)]


PARAMETERS: tuple[Param, ...] = (
    Param("model", "synthetic_agri_k3_ip3",
          "Model registry name (config/models/NAME.yaml), a path to a model YAML, or an exported .onnx file.",
          configure=True),
    Param("weights", "",
          "Weights file (.safetensors or weights-only .pth); empty = the file the registry entry names.",
          configure=True),
    Param("device", "auto", f"Inference device: {DEVICE_HELP}.", choices=("auto", "cpu", "cuda", "cuda:N"),
          configure=True),
    Param("precision", "fp32",
          f"Inference precision: {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]} (fp16/bf16 autocast; fp16 needs CUDA).",
          choices=PRECISIONS, configure=True),
    Param("input_size", 0, "Network input side in pixels (a multiple of the model's patch size, checked on start); "
          "0 = the model's training size.",
          range=(0, 4096), configure=True),
    Param("backend", "auto",
          "Inference backend: torch, onnxruntime (model is an .onnx file from python -m clustvit_core.export --onnx) "
          "or auto (onnxruntime for an .onnx model).", choices=BACKENDS, configure=True),
    Param("providers", "cpu",
          "onnxruntime providers, comma-separated in order of preference: cpu, cuda, tensorrt (precision fp16 "
          "enables TensorRT fp16).", configure=True),
    Param("engine_cache", "",
          "Folder where TensorRT keeps its built engines (built once per model and GPU); empty = no cache.",
          configure=True),
    Param("cuda_graphs", False,
          "Backend torch on a CUDA device: replay the model from CUDA graphs (recorded per reduced token-count "
          "bucket on first use; on a GPU far faster at batch 1, see the README's GPU tables).", configure=True),
    Param("resize_mode", "stretch",
          "How frames reach the network's input: stretch (resize; aspect ratio lost) or letterbox (scale to fit, "
          "keep the aspect ratio, pad with the mean colour; masks cropped back).", choices=RESIZE_MODES,
          configure=True),
    Param("threads", 0, "CPU threads for torch (0 = torch's default).", range=(0, 256), configure=True),
    Param("autostart", True, "Configure and activate on start (lifecycle transitions the node makes itself); "
          "false = wait in 'unconfigured' for a lifecycle manager (configure loads the model, activate subscribes)."),
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
    Param("publish_confidence", True, "Publish ~/confidence (when subscribed).", live=True),
    Param("publish_mask_color", True, "Publish ~/mask_color (when subscribed).", live=True),
    Param("publish_overlay", True, "Publish ~/overlay (when subscribed).", live=True),
    Param("publish_clusters", True, "Publish ~/clusters (when subscribed).", live=True),
    Param("image_topics", "",
          "Several cameras, one model: input topics, comma-separated (e.g. /front/image_raw,/rear/image_raw), "
          "each with its own outputs ~/CAMERA/* (CAMERA: the topic without its last name, / as _: front, rear), "
          "batched into one forward pass; empty = the single input image and outputs ~/*.", configure=True),
    Param("compressed_input", False,
          "Also subscribe to image/compressed (sensor_msgs/CompressedImage, png/jpeg); with image_topics, "
          "TOPIC/compressed of each.", configure=True),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", range=(0.05, 60.0)),
    Param("stale_timeout", 2.0, "/diagnostics turns WARN when no frame arrived for this many seconds after frames "
          "had been arriving.", live=True, range=(0.1, 3600.0)),
    Param("max_input_pixels", 4096 * 4096,
          "Frames with more pixels (compressed ones judged by their PNG/JPEG header, before decoding) are rejected.",
          live=True, range=(1, 2**31 - 1)),
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
        return f"device={value!r}: use {DEVICE_HELP}"
    if name == "precision":
        try:
            check_precision(value)
        except ConfigError as exc:
            return str(exc)
    if name == "resize_mode" and value not in RESIZE_MODES:
        return f"resize_mode={value!r}: use {' or '.join(RESIZE_MODES)}"
    if name == "backend" and value not in BACKENDS:
        return f"backend={value!r}: use {', '.join(BACKENDS)}"
    if name == "providers":
        bad = [p for p in provider_list(value) if p not in PROVIDERS] or ([] if provider_list(value) else [""])
        if bad:
            return f"providers={value!r}: give a comma-separated list of {', '.join(PROVIDERS)}"
    if name == "image_topics":
        try:
            camera_topics(value)
        except ConfigError as exc:
            return str(exc)
    if name == "model" and not str(value).strip():
        return "model is empty: name a registered model (config/models/NAME.yaml) or a YAML path"
    return None


def typed_values(values: Mapping[str, object]) -> dict:
    """`values` of node parameters with the table's types (an int for a double becomes a float), checked;
    ConfigError (one line) for an unknown name, a value of the wrong type or a rejected value."""
    typed = {}
    for name, value in values.items():
        spec = BY_NAME.get(name)
        if spec is None:
            raise ConfigError(f"unknown node parameter {name!r}: use one of {', '.join(BY_NAME)}")
        typed[name] = _typed(spec, value)
        reason = check_value(name, typed[name])
        if reason:
            raise ConfigError(f"parameter {reason}")
    return typed


def _typed(spec: Param, value):
    """`value` as the parameter's type: an int is taken for a double; a bool is no number."""
    kind = type(spec.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"parameter {spec.name}={value!r}: expected a value of type {spec.type_name}")
    return value


def ros_arguments(values: Mapping[str, object]) -> list[str]:
    """`-p NAME:=VALUE` command-line arguments (after --ros-args) setting the node parameters `values`."""
    args = []
    for name, value in typed_values(values).items():
        args += ["-p", f"{name}:={json.dumps(value)}"]  # JSON is YAML: strings stay strings, 1.0 a double
    return args


def add_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Command-line options --NAME (dashes for underscores) setting the node parameters `names`: type,
    default, check and help from the table. Their values: `{name: getattr(args, name) for name in names}`."""
    for name in names:
        spec = BY_NAME[name]
        flag = f"--{name.replace('_', '-')}"
        text = spec.description + (f" Default: {spec.default}." if spec.default != "" else "")
        if isinstance(spec.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=spec.default, help=text)
        else:
            parser.add_argument(flag, type=_option_parser(spec), default=spec.default, help=text)


def _option_parser(spec: Param):
    """argparse `type` of a parameter: the text as the table's type, checked with check_value."""
    def parse(text: str):
        try:
            value = type(spec.default)(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not of type {spec.type_name}") from None
        reason = check_value(spec.name, value)
        if reason:
            raise argparse.ArgumentTypeError(reason)
        return value

    return parse


def markdown_table() -> str:
    """The parameters as a Markdown table (the README's)."""
    rows = ["| Parameter | Type | Default | Live | Description |", "|---|---|---|---|---|"]
    for p in PARAMETERS:
        default = repr(p.default) if isinstance(p.default, str) else str(p.default).lower() \
            if isinstance(p.default, bool) else str(p.default)
        bounds = f" Range {p.range[0]:g}..{p.range[1]:g}." if p.range else ""
        rows.append(f"| `{p.name}` | {p.type_name} | `{default}` | {p.when_settable} | "
                    f"{p.description}{bounds} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
