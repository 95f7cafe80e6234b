"""The node's ROS interface in one place: its default name, topic and service names (the node creates
exactly these; TOPIC and CAMERA stand for each camera of `image_topics`), and the README's interface
tables generated from them, from params.py and from the clustvit_msgs package's msg/*.msg.

    python -m clustvit_ros.interface                      # print the tables
    python -m clustvit_ros.interface --update-readme README.md

Importing this module needs no ROS.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from clustvit_ros.params import markdown_table as parameters_table

NODE_NAME = "segment_node"  # the node's default name: its private topics are /NODE_NAME/* (`~/*`)
MSG_PACKAGE = "clustvit_msgs"  # the ROS package of the node's own message types
MSG_DIR = Path(__file__).resolve().parent.parent / MSG_PACKAGE / "msg"
README_SECTIONS = ("ros-topics", "ros-parameters", "ros-stats", "ros-launch")


@dataclass(frozen=True)
class Endpoint:
    name: str  # as the node creates it (relative "image", private "~/mask", absolute "/diagnostics")
    type: str
    direction: str  # "in" (subscribed), "out" (published), "service"
    qos: str
    description: str


IMAGE_IN = Endpoint("image", "sensor_msgs/Image", "in", "sensor data (best effort, depth 1); `qos_overrides`",
                    "Camera images: rgb8, bgr8, rgba8, bgra8, mono8, mono16 (scaled to 8 bit). Remap it.")
COMPRESSED_IN = Endpoint("image/compressed", "sensor_msgs/CompressedImage", "in", "as `image`",
                         "With `compressed_input:=true`: png/jpeg frames.")
MASK = Endpoint("~/mask", "sensor_msgs/Image", "out", "reliable, depth 1; `qos_overrides`",
                "Class id per pixel at input resolution: mono8, 255 = unlabeled (mono16, 65535 = unlabeled, "
                "if > 255 classes).")
MASK_COLOR = Endpoint("~/mask_color", "sensor_msgs/Image", "out", "reliable, depth 1; `qos_overrides`",
                      "rgb8: the class palette of `~/mask`.")
OVERLAY = Endpoint("~/overlay", "sensor_msgs/Image", "out", "reliable, depth 1; `qos_overrides`",
                   "rgb8: the image blended with the palette (`overlay_alpha`).")
CLUSTERS = Endpoint("~/clusters", "sensor_msgs/Image", "out", "reliable, depth 1; `qos_overrides`",
                    "rgb8: the image with each merged-token cluster tinted (`cluster_alpha`), kept tokens untouched.")
CONFIDENCE = Endpoint("~/confidence", "sensor_msgs/Image", "out", "reliable, depth 1; `qos_overrides`",
                      "mono8 at input resolution: the winning class's softmax probability x 255 (Nav2's "
                      "segmentation confidence image).")
STATS = Endpoint("~/stats", f"{MSG_PACKAGE}/SegmentationStats", "out", "reliable, depth 10",
                 "One per processed frame: sizes, token counts, timings, drops, class pixel counts (below).")
LABEL_INFO = Endpoint("~/label_info", "vision_msgs/LabelInfo", "out", "reliable, transient local (latched)",
                      "Class id -> name (`class_map`), plus 255 (mono8) / 65535 (mono16) = UNLABELED; threshold 0. "
                      "The Nav2 / vision_msgs segmentation contract.")
DIAGNOSTICS = Endpoint("/diagnostics", "diagnostic_msgs/DiagnosticArray", "out", "reliable, depth 10",
                       "Every `diagnostics_period` s: rate, latency, tokens, frame counters, device, errors (with "
                       "`image_topics`: also each camera's as `CAMERA.rate_hz`, `CAMERA.frames_processed`, ...).")
ENABLE = Endpoint("~/enable", "std_srvs/SetBool", "service", "",
                  "Start/stop processing (sets the `enable` parameter).")
LIFECYCLE = Endpoint("~/change_state", "lifecycle_msgs/ChangeState", "service", "",
                     "Lifecycle transitions (configure loads the model, activate subscribes, deactivate "
                     "unsubscribes, cleanup frees the model); also `~/get_state`, `~/get_available_transitions`, "
                     "`~/transition_event`, as every rclpy lifecycle node has. Outputs publish only while active.")

CAMERA_OUTPUTS = (MASK, CONFIDENCE, MASK_COLOR, OVERLAY, CLUSTERS, STATS)  # one set per camera
CAMERAS_IN = Endpoint("TOPIC", "sensor_msgs/Image", "in", "as `image`",
                      "Each topic of `image_topics` (several cameras, one model), instead of `image`; with "
                      "`compressed_input` also TOPIC/compressed.")
CAMERA_OUT = Endpoint("~/CAMERA/*", "as `~/mask` ... `~/stats`", "out", "as `~/mask` ... `~/stats`",
                      "With `image_topics`: each camera's own mask, confidence, mask_color, overlay, clusters and "
                      "stats (with its frames' headers), instead of `~/mask` ... `~/stats`. CAMERA = the topic "
                      "without its last name, `/` as `_`: `/front/image_raw` -> `~/front/mask`, `/cam/left/image` "
                      "-> `~/cam_left/mask`. `~/label_info`, `/diagnostics` and `~/enable` stay single.")

ENDPOINTS = (IMAGE_IN, COMPRESSED_IN, CAMERAS_IN, MASK, CONFIDENCE, MASK_COLOR, OVERLAY, CLUSTERS, STATS, CAMERA_OUT,
             LABEL_INFO, DIAGNOSTICS, ENABLE, LIFECYCLE)


def camera_output(endpoint: Endpoint, camera: str) -> str:
    """The name of a per-camera output (one of CAMERA_OUTPUTS) for `camera`: the endpoint's own (~/mask) for
    the single camera (''), ~/CAMERA/mask for a camera of `image_topics`."""
    return f"~/{camera}/{endpoint.name[2:]}" if camera else endpoint.name


def topics_table(node_name: str = NODE_NAME) -> str:
    """Markdown table of the node's topics and services."""
    rows = ["| Name | Type | Direction | QoS | Content |", "|---|---|---|---|---|"]
    for e in ENDPOINTS:
        name = e.name.replace("~", f"/{node_name}") if e.name.startswith("~") else e.name
        kind = e.type if "`" in e.type else f"`{e.type}`"
        rows.append(f"| `{name}` | {kind} | {e.direction} | {e.qos} | {e.description} |")
    return "\n".join(rows)


_FIELD = re.compile(r"^([A-Za-z0-9_/]+(?:\[\])?)\s+([a-z_][a-z0-9_]*)\s*$")


def message_fields(msg_file: str | Path) -> list[tuple[str, str, str]]:
    """(type, name, comment) of each field of a .msg file; the comment is the block of `#` lines
    directly above the field (shared by consecutive fields without their own comment)."""
    fields, comment, block = [], [], ""
    for raw in Path(msg_file).read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif not line:
            if comment and not fields:
                comment = []  # the file's header comment
            block = "" if comment else block
        else:
            match = _FIELD.match(line.split("#", 1)[0].strip())
            if not match:
                raise ValueError(f"{msg_file}: cannot parse field line {raw!r}")
            if comment:
                block, comment = " ".join(comment), []
            fields.append((match.group(1), match.group(2), block))
    return fields


def message_table(msg_file: str | Path = MSG_DIR / "SegmentationStats.msg") -> str:
    rows = ["| Field | Type | Meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | `{type_}` | {comment} |" for type_, name, comment in message_fields(msg_file)]
    return "\n".join(rows)


def launch_table() -> str:
    """Markdown table of launch/segment.launch.py's arguments."""
    from clustvit_ros.launch_args import launch_arguments

    rows = ["| Argument | Default | Meaning |", "|---|---|---|"]
    for arg in launch_arguments():
        # the params file's default path depends on the install
        default = "<share>/clustvit_ros/config/segment.yaml" if arg.name == "params_file" else arg.default
        rows.append(f"| `{arg.name}` | {f'`{default}`' if default else '(empty)'} | {arg.description} |")
    return "\n".join(rows)


def sections() -> dict[str, str]:
    """README section name -> its generated Markdown."""
    return {"ros-topics": topics_table(), "ros-parameters": parameters_table(), "ros-stats": message_table(),
            "ros-launch": launch_table()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustvit_ros.interface",
        description="Print the segmentation node's interface tables (topics, parameters, SegmentationStats "
                    "fields), generated from the code, or write them into a README's marked sections "
                    "(<!-- BEGIN benchmark:ros-topics --> ... <!-- END benchmark:ros-topics -->, likewise "
                    "ros-parameters and ros-stats).")
    parser.add_argument("--update-readme", metavar="README", help="rewrite the marked sections of this file")
    args = parser.parse_args(argv)
    from clustvit_core.errors import cli_errors
    from clustvit_core.readme import replace_section

    with cli_errors(parser.prog):
        for name, text in sections().items():
            if args.update_readme:
                replace_section(args.update_readme, name, text)
            else:
                print(f"## {name}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
