"""The arguments of launch/segment.launch.py and how they become the launch's Node actions.

Plain Python (no `launch`, `launch_ros` or rclpy) so the mapping is tested without a ROS install: the
launch file declares `launch_arguments()`, resolves them to strings and hands them to `launch_plan()`.

    plan = launch_plan({"image": "/cam/image_raw", "device": "cuda", "use_rviz": "true"})
    Node(**plan.segment_node.kwargs())
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from clustvit_ros.interface import NODE_NAME
from clustvit_ros.params import BY_NAME, check_value

PACKAGE = "clustvit_ros"
NODE_EXECUTABLE = "segment_node"
PARAMS_FILE_NAME = "segment.yaml"
RVIZ_CONFIG_NAME = "clustvit.rviz"
# The node's image outputs that config/clustvit.rviz shows, as ~/NAME topics of NODE_NAME.
RVIZ_IMAGE_OUTPUTS = ("overlay", "clusters", "confidence", "mask_color")
SOURCE_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

BOOL_CHOICES = ("true", "false")
# launch arguments that override the params file when non-empty
PARAM_OVERRIDES = ("model", "weights", "device", "resize_mode", "backend", "providers", "image_topics")
_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
TOPIC_PATTERN = re.compile(rf"^/?{_TOKEN}(/{_TOKEN})*$")
NAMESPACE_PATTERN = re.compile(rf"^/?({_TOKEN}(/{_TOKEN})*)?$")


class LaunchArgumentError(ValueError):
    """A launch argument's value is unusable; the message (one line) names the argument and the fix."""


@dataclass(frozen=True)
class LaunchArgument:
    """One DeclareLaunchArgument: its name, default (a string, as launch passes values) and description."""
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NodeAction:
    """The keyword arguments of one launch_ros.actions.Node."""
    package: str
    executable: str
    name: str
    namespace: str = ""
    parameters: list = field(default_factory=list)  # parameter file paths and {name: value} dicts, in order
    remappings: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    arguments: list[str] = field(default_factory=list)  # command-line arguments before --ros-args

    def kwargs(self) -> dict:
        """`Node(**action.kwargs())`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class LaunchPlan:
    """What segment.launch.py starts: the segmentation node and, if asked for, RViz2."""
    segment_node: NodeAction
    rviz: NodeAction | None  # None: use_rviz is false


def _installed_share() -> Path | None:
    """share/clustvit_ros of the installed package per the ament index, or None when not found."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, OSError):  # not installed, or AMENT_PREFIX_PATH unset
        return None


def config_file(name: str) -> Path:
    """config/NAME of the installed package if it has one, else of this source tree."""
    share = _installed_share()
    if share is not None and (share / "config" / name).is_file():
        return share / "config" / name
    return SOURCE_CONFIG_DIR / name


def _override_description(name: str) -> str:
    """The node parameter's description, plus how an empty launch argument behaves."""
    return f"{BY_NAME[name].description} Empty = the value in params_file."


def launch_arguments() -> tuple[LaunchArgument, ...]:
    """The launch file's arguments, in declaration order."""
    return (
        *(LaunchArgument(name, "", _override_description(name)) for name in PARAM_OVERRIDES),
        LaunchArgument("image", "/camera/image_raw",
                       "Input topic (sensor_msgs/Image); with compressed_input, IMAGE/compressed is read too."),
        LaunchArgument("namespace", "", f"Namespace of the node: outputs are NAMESPACE/{NODE_NAME}/*."),
        LaunchArgument("params_file", str(config_file(PARAMS_FILE_NAME)),
                       "ROS 2 parameters file of the node (launch arguments model/weights/device override it)."),
        LaunchArgument("use_sim_time", "false", "Use the /clock topic's time (e.g. with `ros2 bag play --clock`).",
                       BOOL_CHOICES),
        LaunchArgument("use_rviz", "false", f"Also start RViz2 with config/{RVIZ_CONFIG_NAME}.", BOOL_CHOICES),
    )


def _complete(values: Mapping[str, str]) -> dict[str, str]:
    """All arguments: the given values (stripped) over the defaults; unknown names are an error."""
    defaults = {arg.name: arg.default for arg in launch_arguments()}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise LaunchArgumentError(f"unknown launch argument {unknown[0]!r}: use one of {', '.join(defaults)}")
    return {**defaults, **{name: str(value).strip() for name, value in values.items()}}


def _parse_bool(name: str, text: str) -> bool:
    """'true' -> True, 'false' -> False."""
    if text not in BOOL_CHOICES:
        raise LaunchArgumentError(f"{name}:={text!r}: use {name}:=true or {name}:=false")
    return text == "true"


def _params_file(text: str) -> str:
    """The parameters file as an absolute path; it must exist."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise LaunchArgumentError(f"params_file:={text!r} is not a file: give an existing parameters YAML "
                                  f"(default {config_file(PARAMS_FILE_NAME)})")
    return str(path.resolve())


def _parameter_overrides(args: Mapping[str, str]) -> dict:
    """Node parameters set by launch arguments: non-empty model/weights/device (checked), use_sim_time."""
    overrides = {}
    for name in PARAM_OVERRIDES:
        if args[name]:
            problem = check_value(name, args[name])
            if problem:
                raise LaunchArgumentError(f"launch argument {problem}")
            overrides[name] = args[name]
    overrides["use_sim_time"] = _parse_bool("use_sim_time", args["use_sim_time"])
    return overrides


def _input_remappings(image: str) -> list[tuple[str, str]]:
    """The node's `image` and `image/compressed` inputs remapped to IMAGE and IMAGE/compressed."""
    if not TOPIC_PATTERN.match(image):
        raise LaunchArgumentError(f"image:={image!r} is not a topic name: use e.g. image:=/camera/image_raw")
    return [("image", image), ("image/compressed", f"{image}/compressed")]


def _namespace(text: str) -> str:
    """The namespace as given (absolute or relative to an enclosing PushRosNamespace), minus a trailing '/'."""
    namespace = text.rstrip("/")
    if not NAMESPACE_PATTERN.match(namespace):
        raise LaunchArgumentError(f"namespace:={text!r} is not a ROS namespace: use e.g. namespace:=robot1")
    return namespace


def _rviz_action(namespace: str, use_sim_time: bool) -> NodeAction:
    """RViz2 with config/clustvit.rviz, its /segment_node/* topics remapped to the node's namespace.

    RViz2 stays in the launch's own namespace and the remap targets are relative (or absolute when the
    node's namespace is), so they resolve to the node's topics under an enclosing PushRosNamespace too.
    """
    prefix = f"{namespace}/" if namespace else ""
    remappings = [(f"/{NODE_NAME}/{topic}", f"{prefix}{NODE_NAME}/{topic}") for topic in RVIZ_IMAGE_OUTPUTS]
    return NodeAction("rviz2", "rviz2", "rviz2", parameters=[{"use_sim_time": use_sim_time}],
                      remappings=remappings, arguments=["-d", str(config_file(RVIZ_CONFIG_NAME))])


def launch_plan(values: Mapping[str, str]) -> LaunchPlan:
    """The Node actions for resolved launch argument values (missing ones take their defaults).

    The node's parameters are the params file first, then the overrides (later entries win in ROS 2).
    Raises LaunchArgumentError for the first unusable value.
    """
    args = _complete(values)
    overrides = _parameter_overrides(args)
    namespace = _namespace(args["namespace"])
    segment_node = NodeAction(PACKAGE, NODE_EXECUTABLE, NODE_NAME, namespace=namespace,
                              parameters=[_params_file(args["params_file"]), overrides],
                              remappings=_input_remappings(args["image"]))
    use_rviz = _parse_bool("use_rviz", args["use_rviz"])
    rviz = _rviz_action(namespace, overrides["use_sim_time"]) if use_rviz else None
    return LaunchPlan(segment_node, rviz)
