"""The README's ROS interface tables match the code; parameter validation; the ROS packages' layout and
manifests (no ROS needed)."""
from __future__ import annotations

import argparse
import re
from xml.etree import ElementTree

import pytest

from clustvit_core.devices import DEVICE_HELP, PRECISIONS
from clustvit_core.errors import ConfigError
from clustvit_ros import interface
from clustvit_ros.params import (BY_NAME, PARAMETERS, add_options, check_value, markdown_table, ros_arguments,
                                 typed_values)
from ros_env import REPO


def readme_section(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- BEGIN benchmark:{name} -->\n(.*?)\n<!-- END benchmark:{name} -->", text, re.S)
    assert match, f"README.md has no section {name}"
    return match.group(1)


@pytest.mark.parametrize("name", interface.README_SECTIONS)
def test_readme_tables_are_generated_from_the_code(name):
    assert readme_section(name) == interface.sections()[name], (
        f"README section {name} is stale: run python -m clustvit_ros.interface --update-readme README.md")


def test_message_table_lists_every_field_of_the_message():
    fields = interface.message_fields(interface.MSG_DIR / "SegmentationStats.msg")
    names = [name for _, name, _ in fields]
    assert names[:2] == ["header", "model_name"] and "frames_dropped" in names and "class_pixel_counts" in names
    assert all(comment for _, _, comment in fields), "every field needs a comment (it is the README's meaning column)"
    msg = pytest.importorskip("clustvit_msgs.msg")
    assert names == list(msg.SegmentationStats.get_fields_and_field_types())


def test_message_fields_parser_keeps_shared_comments(tmp_path):
    path = tmp_path / "X.msg"
    path.write_text("# file header\n\n# size [px]\nuint32 width\nuint32 height\n\n# name\nstring name  # trailing\n")
    assert interface.message_fields(path) == [
        ("uint32", "width", "size [px]"), ("uint32", "height", "size [px]"), ("string", "name", "name")]
    path.write_text("uint32 width extra\n")
    with pytest.raises(ValueError, match="cannot parse"):
        interface.message_fields(path)


def test_parameter_table_and_validation():
    table = markdown_table()
    assert all(f"`{p.name}`" in table for p in PARAMETERS)
    assert check_value("overlay_alpha", 0.3) is None
    assert "outside" in check_value("overlay_alpha", 1.5)
    assert "outside" in check_value("keep_bias", -51.0)
    assert check_value("device", "cuda:1") is None and "cuda:N" in check_value("device", "gpu")
    assert "fp32" in check_value("precision", "int8")
    assert check_value("input_size", 512) is None
    assert check_value("input_size", 518) is None  # patch 14 (DINOv2): the node checks it against the model
    assert "empty" in check_value("model", " ")
    assert check_value("qos_overrides./image.subscription.depth", 5) is None  # not ours: rclpy checks it
    assert BY_NAME["keep_bias"].live and not BY_NAME["model"].live and BY_NAME["model"].configure
    assert not BY_NAME["autostart"].configure and not BY_NAME["autostart"].live



def test_devices_and_precisions_come_from_clustvit_core():
    assert DEVICE_HELP in BY_NAME["device"].description and BY_NAME["precision"].choices == PRECISIONS
    assert all(p in BY_NAME["precision"].description for p in PRECISIONS)
    assert DEVICE_HELP in check_value("device", "gpu")


def test_typed_values_and_ros_arguments():
    typed = typed_values({"keep_bias": 1, "device": "cuda:0", "threads": 2})
    assert typed == {"keep_bias": 1.0, "device": "cuda:0", "threads": 2} and isinstance(typed["keep_bias"], float)
    assert ros_arguments({"keep_bias": -1, "weights": "", "enable": False}) == [
        "-p", "keep_bias:=-1.0", "-p", 'weights:=""', "-p", "enable:=false"]
    for values, words in [({"keep_bais": 1.0}, "unknown node parameter 'keep_bais'"), ({"threads": "2"}, "type int"),
                          ({"threads": True}, "type int"), ({"precision": "int8"}, "fp32"),
                          ({"input_size": -16}, "outside")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            typed_values(values)


def test_command_line_options_come_from_the_table(capsys):
    parser = argparse.ArgumentParser(prog="p")
    add_options(parser, ("device", "keep_bias", "threads", "enable"))
    assert vars(parser.parse_args([])) == {"device": "auto", "keep_bias": 0.0, "threads": 0, "enable": True}
    args = parser.parse_args(["--keep-bias", "-2", "--no-enable", "--device", "cuda:1", "--threads", "3"])
    assert (args.keep_bias, args.enable, args.device, args.threads) == (-2.0, False, "cuda:1", 3)
    for argv, words in [(["--keep-bias", "99"], "outside [-50, 50]"), (["--threads", "1.5"], "not of type int"),
                        (["--device", "gpu"], "device='gpu'")]:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert words in capsys.readouterr().err

# ---------------------------------------------------------------------- the ROS packages

PACKAGES = ("clustvit_msgs", "clustvit_ros")  # each in the repository folder of its name
COLCON_MANIFESTS = ("package.xml", "CMakeLists.txt", "setup.py", "setup.cfg")  # how colcon identifies a package


def test_colcon_finds_both_packages_in_the_repository():
    """colcon does not look inside a folder it takes for a package: the root must not be one."""
    assert [name for name in COLCON_MANIFESTS if (REPO / name).exists()] == []
    for name in PACKAGES:
        assert ElementTree.parse(REPO / name / "package.xml").getroot().findtext("name") == name
        assert re.search(rf"^project\({name}\b", (REPO / name / "CMakeLists.txt").read_text(), re.M)


def test_manifests_agree_with_the_code():
    manifest = ElementTree.parse(REPO / "clustvit_ros" / "package.xml").getroot()
    assert interface.MSG_PACKAGE in [e.text for e in manifest.findall("exec_depend")]
    msgs_cmake = (REPO / interface.MSG_PACKAGE / "CMakeLists.txt").read_text()
    assert sorted(re.findall(r'"(msg/\w+\.msg)"', msgs_cmake)) == sorted(
        f"msg/{path.name}" for path in interface.MSG_DIR.glob("*.msg"))
    executables = re.search(r"foreach\(CLUSTVIT_MODULE ([\w ]+)\)", (REPO / "clustvit_ros" / "CMakeLists.txt").read_text())
    for module in executables.group(1).split():
        assert "\ndef main(" in (REPO / "clustvit_ros" / f"{module}.py").read_text(), module


def test_backend_and_provider_names_match_clustvit_core():
    """params.py keeps torch-free copies of these names; they must stay equal to the core's."""
    from clustvit_core.onnx_runtime import PROVIDERS
    from clustvit_core.predictor import BACKENDS
    from clustvit_ros import params

    assert params.BACKENDS == BACKENDS and params.PROVIDERS == tuple(PROVIDERS)
