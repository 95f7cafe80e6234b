"""The README's ROS interface tables match the code; parameter validation (no ROS needed)."""
from __future__ import annotations

import re

import pytest

from clustvit_ros import interface
from clustvit_ros.params import BY_NAME, PARAMETERS, check_value, markdown_table
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
    msg = pytest.importorskip("clustvit_ros.msg")
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
    assert "multiple of 16" in check_value("input_size", 500)
    assert check_value("input_size", 512) is None
    assert "empty" in check_value("model", " ")
    assert check_value("qos_overrides./image.subscription.depth", 5) is None  # not ours: rclpy checks it
    assert BY_NAME["keep_bias"].live and not BY_NAME["model"].live
