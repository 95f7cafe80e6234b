"""clustvit_msgs/msg/SegmentationStats: fields, CDR round trip, and publish/subscribe across processes;
and the venv that scripts/ros_setup.sh builds imports the working tree's Python packages.

Needs the ROS build (scripts/ros_setup.sh VENV, then VENV/bin/python -m pytest); skips without it.
Run as a script (`python test/test_ros_msgs.py publish TOPIC`) it is the test's publisher process.
"""
import array
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if __name__ != "__main__":
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (ROS 2 wheels: scripts/ros_setup.sh)")
    msg_module = pytest.importorskip(
        "clustvit_msgs.msg", reason="clustvit_msgs not built (scripts/ros_setup.sh VENV)")
    SegmentationStats = msg_module.SegmentationStats
    # rosidl's parser (lark) imports deprecated modules
    pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

from clustvit_ros.interface import MSG_DIR
from ros_env import (MATCH_TIMEOUT_S, REPO, rclpy_context, ros_env, start_ros_process, stop_ros_process,
                     wait_for)

# Every field of the message and its ROS type, in order: a change to clustvit_msgs/msg/SegmentationStats.msg
# must be made here too (and in the node and the bag tools).
FIELDS = {
    "header": "std_msgs/Header",
    "model_name": "string",
    "image_width": "uint32",
    "image_height": "uint32",
    "network_width": "uint32",
    "network_height": "uint32",
    "patch_tokens": "uint32",
    "tokens": "uint32",
    "clusters_used": "uint32",
    "kept_tokens": "uint32",
    "token_keep_ratio": "float",
    "keep_bias": "float",
    "preprocess_ms": "float",
    "inference_ms": "float",
    "postprocess_ms": "float",
    "total_ms": "float",
    "frames_dropped": "uint32",
    "frames_rejected": "uint32",
    "class_names": "sequence<string>",
    "class_pixel_counts": "sequence<uint32>",
    "unlabeled_pixels": "uint32",
}


def filled_stats(seq: int = 0):
    """A SegmentationStats with every field set to a distinct value (floats exact in float32)."""
    from clustvit_msgs.msg import SegmentationStats

    m = SegmentationStats()
    m.header.stamp.sec = 1_763_000_000 + seq
    m.header.stamp.nanosec = 123_456_789
    m.header.frame_id = "camera_optical_frame"
    m.model_name = "cwfid_k3_ip3"
    m.image_width, m.image_height = 640, 480
    m.network_width, m.network_height = 512, 384
    m.patch_tokens = (512 // 16) * (384 // 16)  # 768
    m.kept_tokens = 150
    m.clusters_used = 3
    m.tokens = m.kept_tokens + m.clusters_used
    m.token_keep_ratio = 0.25  # exact in float32 (not tokens / patch_tokens here: exactness)
    m.keep_bias = -0.5
    m.preprocess_ms, m.inference_ms, m.postprocess_ms, m.total_ms = 1.5, 120.25, 3.75, 126.0
    m.frames_dropped = 7 + seq
    m.frames_rejected = 2
    m.class_names = ["soil", "crop", "weed"]
    m.class_pixel_counts = [300_000, 6_000, 900]
    m.unlabeled_pixels = 640 * 480 - sum(m.class_pixel_counts)
    return m


def test_fields_match_the_documented_message():
    assert list(SegmentationStats.get_fields_and_field_types().items()) == list(FIELDS.items())


def test_defaults_and_types():
    m = SegmentationStats()
    assert m.model_name == "" and m.tokens == 0 and m.token_keep_ratio == 0.0
    assert list(m.class_names) == [] and len(m.class_pixel_counts) == 0
    m = filled_stats()
    assert isinstance(m.class_pixel_counts, array.array) and m.class_pixel_counts.typecode == "I"
    # Kilted checks field values only with check_fields=True (or ROS_PYTHON_CHECK_FIELDS=1). Unchecked,
    # a numpy integer or -1 in a uint32 field fails at publish with a SystemError naming another field,
    # 2**32 + 5 wraps to 5, and an int or numpy.float32 in a float32 field is sent as 0.0:
    # publishers must convert with int() / float().
    m = SegmentationStats(check_fields=True)
    for field, bad in [("tokens", -1), ("tokens", 2**32), ("tokens", np.int64(5)), ("token_keep_ratio", 1),
                       ("token_keep_ratio", np.float32(0.5)), ("class_pixel_counts", [2**32])]:
        with pytest.raises(AssertionError):
            setattr(m, field, bad)
    m.tokens, m.token_keep_ratio = int(np.int64(5)), float(np.float32(0.5))
    with pytest.raises(AssertionError):
        m.class_pixel_counts = np.array([1, 2], dtype=np.int64)  # checked: numpy arrays are rejected ...
    m.class_pixel_counts = np.array([1, 2], dtype=np.int64).tolist()  # ... lists of Python ints are fine
    assert m.class_pixel_counts.tolist() == [1, 2]


def test_serialization_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    m = filled_stats()
    raw = serialize_message(m)
    assert isinstance(raw, bytes) and len(raw) > 100
    back = deserialize_message(raw, SegmentationStats)
    assert back == m
    for name in FIELDS:
        assert getattr(back, name) == getattr(m, name), name
    assert back.class_pixel_counts.tolist() == [300_000, 6_000, 900]
    assert back.header.stamp.nanosec == 123_456_789 and back.header.frame_id == "camera_optical_frame"


def test_rosbags_reads_and_writes_the_same_cdr():
    """The bag tools (rosbags, no ROS install) and rclpy agree on the message's bytes."""
    pytest.importorskip("rosbags", reason="rosbags not installed (requirements-ros.txt)")
    from rclpy.serialization import deserialize_message, serialize_message
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_text = (MSG_DIR / "SegmentationStats.msg").read_text()
    store.register(get_types_from_msg(msg_text, "clustvit_msgs/msg/SegmentationStats"))
    m = filled_stats()
    decoded = store.deserialize_cdr(serialize_message(m), "clustvit_msgs/msg/SegmentationStats")
    assert decoded.model_name == m.model_name and decoded.tokens == m.tokens
    assert list(decoded.class_names) == m.class_names
    assert decoded.class_pixel_counts.tolist() == m.class_pixel_counts.tolist()
    # and back: rosbags' bytes decode with rclpy (bytes may differ in padding: compare messages)
    assert deserialize_message(bytes(store.serialize_cdr(decoded, "clustvit_msgs/msg/SegmentationStats")),
                               SegmentationStats) == m


def test_publish_subscribe_across_processes(tmp_path):
    """A publisher subprocess (this file run as a script) and a subscriber here, matched by discovery."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    topic = "/clustvit_test/segmentation_stats"
    env = ros_env(tmp_path / "ros_log")
    proc = start_ros_process([sys.executable, str(Path(__file__).resolve()), "publish", topic], env)
    received = []
    try:
        with rclpy_context(env) as ctx:
            node = rclpy.create_node("stats_listener", context=ctx)
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            node.create_subscription(SegmentationStats, topic, received.append, qos)
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(node)
            assert wait_for(lambda: node.count_publishers(topic) > 0 or proc.poll() is not None, executor), \
                f"no publisher on {topic} within {MATCH_TIMEOUT_S} s"
            assert proc.poll() is None, "publisher exited early"
            assert wait_for(lambda: len(received) >= 3, executor), f"received {len(received)} of 3 messages"
            executor.remove_node(node)
            node.destroy_node()
    finally:
        code, out = stop_ros_process(proc)
        print(f"publisher output:\n{out}")  # shown by pytest when the test fails
    assert code == 0, f"publisher exit code {code}:\n{out}"
    assert "matched" in out, out
    first = received[0]
    expected = filled_stats(first.frames_dropped - 7)  # the publisher numbers its messages
    assert first == expected
    seqs = [m.frames_dropped - 7 for m in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs  # in order, no duplicates


def test_the_venv_imports_the_working_tree(tmp_path):
    """In the venv scripts/ros_setup.sh builds (the README's set-up), clustvit_core and clustvit_ros come
    from this working tree, seen from any folder (as from lib/clustvit_ros/segment_node): no copies that
    go stale when a .py file changes. The messages come from the build (clustvit_msgs)."""
    prefix = Path(sys.prefix)
    if not (prefix / "lib" / "clustvit_ros" / "segment_node").is_file():
        pytest.skip(f"clustvit_ros is not installed into this interpreter's prefix {prefix} (scripts/ros_setup.sh)")
    code = "import clustvit_core, clustvit_ros, clustvit_msgs.msg as m; print(clustvit_core.__file__, clustvit_ros.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    core, ros = (Path(p).resolve() for p in proc.stdout.split())
    assert (core, ros) == (REPO / "clustvit_core" / "__init__.py", REPO / "clustvit_ros" / "__init__.py")


def _publish(topic: str) -> int:
    """The publisher process: wait for a subscriber, then publish numbered messages until SIGINT."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from clustvit_msgs.msg import SegmentationStats

    rclpy.init()
    try:
        node = rclpy.create_node("stats_publisher")
        pub = node.create_publisher(SegmentationStats, topic,
                                    QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if not wait_for(lambda: pub.get_subscription_count() > 0, executor):
            print(f"no subscriber on {topic} within {MATCH_TIMEOUT_S} s", flush=True)
            return 1
        print("matched", flush=True)
        seq = 0

        def tick():
            nonlocal seq
            pub.publish(filled_stats(seq))
            seq += 1

        node.create_timer(0.05, tick)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "publish":
        sys.exit("usage: test_ros_msgs.py publish TOPIC")
    sys.exit(_publish(sys.argv[2]))


def test_vision_msgs_label_info_round_trip():
    """~/label_info's type: vision_msgs/msg/LabelInfo with the real package's fields (a ROS install's, or
    the stand-in ros/vision_msgs that scripts/ros_setup.sh builds where none is installed)."""
    vision_msgs = pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built (scripts/ros_setup.sh VENV)")
    from rclpy.serialization import deserialize_message, serialize_message

    LabelInfo, VisionClass = vision_msgs.LabelInfo, vision_msgs.VisionClass
    assert LabelInfo.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "class_map": "sequence<vision_msgs/VisionClass>", "threshold": "float"}
    assert VisionClass.get_fields_and_field_types() == {"class_id": "uint16", "class_name": "string"}
    m = LabelInfo(class_map=[VisionClass(class_id=0, class_name="soil"), VisionClass(class_id=65535, class_name="UNLABELED")],
                  threshold=0.5)
    m.header.frame_id = "camera"
    back = deserialize_message(serialize_message(m), LabelInfo)
    assert back == m and back.class_map[1].class_id == 65535
