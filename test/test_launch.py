"""launch/segment.launch.py, its argument mapping (clustvit_ros.launch_args), config/segment.yaml and
config/clustvit.rviz. Needs neither rclpy nor `launch`: the launch file runs against recording fakes."""
import importlib.util
import inspect
import py_compile
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml

from clustvit_ros.interface import NODE_NAME
from clustvit_ros.launch_args import (RVIZ_IMAGE_OUTPUTS, SOURCE_CONFIG_DIR, LaunchArgumentError,
                                      config_file, launch_arguments, launch_plan)
from clustvit_ros.params import PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = ROOT / "launch" / "segment.launch.py"
PARAMS_YAML = ROOT / "config" / "segment.yaml"
RVIZ_CONFIG = ROOT / "config" / "clustvit.rviz"
DEFAULT_IMAGE = "/camera/image_raw"


# ---- fakes of the launch / launch_ros classes the launch file uses (same signatures, record arguments)

class FakeLaunchDescription:
    def __init__(self, initial_entities=None):
        self.entities = list(initial_entities or [])


class FakeDeclareLaunchArgument:
    def __init__(self, name, *, default_value=None, description=None, choices=None):
        self.name, self.default_value, self.description, self.choices = name, default_value, description, choices


class FakeOpaqueFunction:
    def __init__(self, *, function, args=None, kwargs=None):
        self.function, self.args, self.kwargs = function, args or [], kwargs or {}

    def execute(self, context):
        """What launch does when it visits the action: call the function with the context."""
        return self.function(context, *self.args, **self.kwargs)


class FakeLaunchConfiguration:
    def __init__(self, variable_name, *, default=None):
        self.variable_name, self.default = variable_name, default

    def perform(self, context):
        return context.launch_configurations.get(self.variable_name, self.default)


def _node_signature(*, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
                    remappings=None, ros_arguments=None, arguments=None, **execute_process_kwargs):
    """launch_ros.actions.Node's keyword arguments."""


class FakeNode:
    def __init__(self, **kwargs):
        inspect.signature(_node_signature).bind(**kwargs)  # TypeError on an argument Node does not take
        self.kwargs = kwargs


def _fake_modules() -> dict[str, ModuleType]:
    """sys.modules entries standing in for `launch` and `launch_ros`."""
    contents = {
        "launch": {"LaunchDescription": FakeLaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": FakeDeclareLaunchArgument,
                           "OpaqueFunction": FakeOpaqueFunction},
        "launch.substitutions": {"LaunchConfiguration": FakeLaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": FakeNode},
    }
    modules = {}
    for name, attributes in contents.items():
        modules[name] = ModuleType(name)
        vars(modules[name]).update(attributes)
    return modules


@pytest.fixture
def launch_file(monkeypatch):
    """launch/segment.launch.py imported against the fakes."""
    for name, module in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_launch(launch_file, **arguments) -> list[FakeNode]:
    """The Node actions the launch description yields for command-line `arguments` (name:=value)."""
    description = launch_file.generate_launch_description()
    declared = {e.name: e.default_value for e in description.entities if isinstance(e, FakeDeclareLaunchArgument)}
    assert set(arguments) <= set(declared)
    context = SimpleNamespace(launch_configurations={**declared, **arguments})
    [opaque] = [e for e in description.entities if isinstance(e, FakeOpaqueFunction)]
    return opaque.execute(context)


# ---- the launch file

def test_launch_file_byte_compiles(tmp_path):
    py_compile.compile(str(LAUNCH_FILE), cfile=str(tmp_path / "segment.launch.pyc"), doraise=True)


def test_launch_file_declares_every_argument(launch_file):
    entities = launch_file.generate_launch_description().entities
    declared = [e for e in entities if isinstance(e, FakeDeclareLaunchArgument)]
    expected = launch_arguments()
    assert [d.name for d in declared] == [a.name for a in expected] == [
        "model", "weights", "device", "resize_mode", "backend", "providers", "image_topics", "image", "namespace",
        "params_file", "use_sim_time", "use_rviz"]
    assert [d.default_value for d in declared] == [a.default for a in expected]
    assert all(d.description for d in declared)
    choices = {d.name: d.choices for d in declared}
    assert choices["use_sim_time"] == choices["use_rviz"] == ["true", "false"]
    assert choices["image"] is None


def test_launch_file_starts_segment_node_with_defaults(launch_file):
    [node] = run_launch(launch_file)
    assert node.kwargs == {
        "output": "screen",
        "package": "clustvit_ros",
        "executable": "segment_node",
        "name": "segment_node",
        "namespace": "",
        "parameters": [str(config_file("segment.yaml").resolve()), {"use_sim_time": False}],
        "remappings": [("image", DEFAULT_IMAGE), ("image/compressed", f"{DEFAULT_IMAGE}/compressed")],
        "arguments": [],
    }


def test_launch_file_passes_arguments_and_starts_rviz(launch_file):
    segment, rviz = run_launch(launch_file, image="/front/image", namespace="robot1", device="cuda:1",
                               use_sim_time="true", use_rviz="true")
    assert segment.kwargs["namespace"] == "robot1"
    assert segment.kwargs["parameters"][1] == {"device": "cuda:1", "use_sim_time": True}
    assert segment.kwargs["remappings"] == [("image", "/front/image"), ("image/compressed", "/front/image/compressed")]
    assert (rviz.kwargs["package"], rviz.kwargs["executable"]) == ("rviz2", "rviz2")
    assert rviz.kwargs["arguments"] == ["-d", str(config_file("clustvit.rviz"))]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": True}]
    assert ("/segment_node/overlay", "robot1/segment_node/overlay") in rviz.kwargs["remappings"]


def test_launch_file_rejects_bad_value(launch_file):
    with pytest.raises(LaunchArgumentError, match="use_sim_time"):
        run_launch(launch_file, use_sim_time="yes")


# ---- clustvit_ros.launch_args

def test_default_plan():
    plan = launch_plan({})
    assert plan.rviz is None
    assert plan.segment_node.namespace == ""
    assert plan.segment_node.parameters == [str(config_file("segment.yaml").resolve()), {"use_sim_time": False}]
    assert plan.segment_node.remappings == [("image", DEFAULT_IMAGE),
                                            ("image/compressed", f"{DEFAULT_IMAGE}/compressed")]


def test_only_non_empty_model_weights_device_override_the_params_file(tmp_path):
    params_file = tmp_path / "mine.yaml"
    params_file.write_text("/**:\n  ros__parameters: {}\n")
    plan = launch_plan({"model": "cwfid_k3_ip3", "weights": "", "device": " cpu ", "params_file": str(params_file)})
    assert plan.segment_node.parameters == [str(params_file), {"model": "cwfid_k3_ip3", "device": "cpu",
                                                               "use_sim_time": False}]
    plan = launch_plan({"weights": "/w/model.safetensors", "use_sim_time": "true"})
    assert plan.segment_node.parameters[1] == {"weights": "/w/model.safetensors", "use_sim_time": True}


@pytest.mark.parametrize("namespace, node_namespace, rviz_target", [
    ("", "", "segment_node/overlay"),
    ("robot1", "robot1", "robot1/segment_node/overlay"),
    ("/fleet/robot1/", "/fleet/robot1", "/fleet/robot1/segment_node/overlay"),
])
def test_namespace_and_rviz_remapping(namespace, node_namespace, rviz_target):
    plan = launch_plan({"namespace": namespace, "image": "camera/image", "use_rviz": "true"})
    assert plan.segment_node.namespace == node_namespace
    assert plan.segment_node.remappings == [("image", "camera/image"), ("image/compressed", "camera/image/compressed")]
    assert plan.rviz.namespace == ""
    assert [source for source, _ in plan.rviz.remappings] == [f"/{NODE_NAME}/{t}" for t in RVIZ_IMAGE_OUTPUTS]
    assert plan.rviz.remappings[0] == ("/segment_node/overlay", rviz_target)


@pytest.mark.parametrize("arguments, named", [
    ({"use_sim_time": "yes"}, "use_sim_time"),
    ({"use_rviz": "1"}, "use_rviz"),
    ({"params_file": "/nonexistent/segment.yaml"}, "params_file"),
    ({"params_file": ""}, "params_file"),
    ({"device": "gpu"}, "device"),
    ({"image": "camera image"}, "image"),
    ({"image": ""}, "image"),
    ({"namespace": "1robot"}, "namespace"),
    ({"modle": "x"}, "modle"),
])
def test_errors_are_one_line_and_name_the_argument(arguments, named):
    with pytest.raises(LaunchArgumentError) as error:
        launch_plan(arguments)
    message = str(error.value)
    assert named in message and "\n" not in message


def _fake_install(prefix: Path, with_config: bool) -> None:
    """An ament index entry for clustvit_ros under `prefix`, optionally with config/segment.yaml."""
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "clustvit_ros").write_text("")
    (prefix / "share" / "clustvit_ros" / "config").mkdir(parents=True)
    if with_config:
        (prefix / "share" / "clustvit_ros" / "config" / "segment.yaml").write_text("/**: {}\n")


def test_config_file_prefers_the_installed_package(tmp_path, monkeypatch):
    _fake_install(tmp_path, with_config=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    assert config_file("segment.yaml") == tmp_path / "share" / "clustvit_ros" / "config" / "segment.yaml"


@pytest.mark.parametrize("installed", [None, "without_config"])
def test_config_file_falls_back_to_the_source_tree(tmp_path, monkeypatch, installed):
    if installed:
        _fake_install(tmp_path, with_config=False)
        monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    else:
        monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert config_file("segment.yaml") == SOURCE_CONFIG_DIR / "segment.yaml" == PARAMS_YAML
    assert {a.name: a.default for a in launch_arguments()}["params_file"] == str(PARAMS_YAML)


# ---- config files

def test_params_file_holds_every_parameter_at_its_default():
    parameters = yaml.safe_load(PARAMS_YAML.read_text())["/**"]["ros__parameters"]
    assert list(parameters) == [p.name for p in PARAMETERS]
    for p in PARAMETERS:
        value = parameters[p.name]
        assert value == p.default and type(value) is type(p.default), p.name


def test_params_file_qos_example_parses_and_names_the_launch_input():
    lines = PARAMS_YAML.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# qos_overrides:")
    example = yaml.safe_load(textwrap.dedent("\n".join(line.replace("# ", "", 1) for line in lines[start:])))
    [(topic, entities)] = example["qos_overrides"].items()
    assert topic == DEFAULT_IMAGE
    assert entities["subscription"]["reliability"] in ("reliable", "best_effort")


def test_rviz_config_shows_the_node_outputs_best_effort():
    config = yaml.safe_load(RVIZ_CONFIG.read_text())
    manager = config["Visualization Manager"]
    displays = manager["Displays"]
    assert [d["Class"] for d in displays] == ["rviz_default_plugins/Image"] * len(RVIZ_IMAGE_OUTPUTS)
    assert [d["Topic"]["Value"] for d in displays] == [f"/{NODE_NAME}/{t}" for t in RVIZ_IMAGE_OUTPUTS]
    for display in displays:
        assert display["Topic"] | {"Value": None} == {"Value": None, "Reliability Policy": "Best Effort",
                                                      "Durability Policy": "Volatile",
                                                      "History Policy": "Keep Last", "Depth": 1}
    enabled = {d["Topic"]["Value"]: d["Enabled"] for d in displays}
    assert enabled == {"/segment_node/overlay": True, "/segment_node/clusters": True, "/segment_node/confidence": True,
                       "/segment_node/mask_color": False}
    assert manager["Global Options"]["Fixed Frame"] == "camera"
    assert config["Panels"] and config["Window Geometry"]["Width"] > 0
