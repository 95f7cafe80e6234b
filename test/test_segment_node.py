"""clustvit_ros.segment_node end to end: the node runs as a subprocess (demo model, CPU) and this
process talks to it over DDS with rclpy: images in; mask, colour mask, overlay, clusters, stats,
label_info and /diagnostics out; parameters, the enable service, malformed frames, a flood of frames
(keep-latest), bad start-up configurations and shutdown by SIGINT / SIGTERM.

Most tests share one node process (module fixture `node`), in the order of this file; the tests that
change its parameters restore them. Tests that need a process of their own start it themselves.
Needs the ROS build (scripts/ros_setup.sh VENV); skips without it.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (ROS 2 wheels: scripts/ros_setup.sh)")
pytest.importorskip("clustvit_msgs.msg", reason="clustvit_msgs not built (scripts/ros_setup.sh VENV)")
pytest.importorskip("cv_bridge", reason="cv_bridge not installed (requirements-ros.txt)")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import LabelInfo  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from clustvit_core.data.synthetic import make_scene  # noqa: E402
from clustvit_core.registry import load_config  # noqa: E402
from clustvit_msgs.msg import SegmentationStats  # noqa: E402
from ros_env import (random_domain_id, rclpy_context, ros_env, start_ros_process, stop_ros_process,  # noqa: E402
                     wait_for)

pytestmark = [
    pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning"),  # lark, via rosidl
    pytest.mark.filterwarnings("ignore:tostring:DeprecationWarning"),  # cv_bridge 1.13 on NumPy 2.x
]

NODE = "/segment_node"
NODE_CMD = [sys.executable, "-m", "clustvit_ros.segment_node", "--ros-args", "-p", "device:=cpu"]
IMAGE_OUTPUTS = ("mask", "confidence", "mask_color", "overlay", "clusters")
H, W = 120, 160  # test frames: small, not square, not the network size
NETWORK = load_config("synthetic_agri_k3_ip3").data.input_size[0]  # the demo model's (square) input
PATCH_TOKENS = (NETWORK // load_config("synthetic_agri_k3_ip3").patch_size) ** 2
CLASS_NAMES = ["soil", "crop", "weed"]
PALETTE = np.array([[125, 90, 60], [40, 200, 40], [235, 45, 45]], np.uint8)  # config/models/synthetic_agri_k3_ip3
START_TIMEOUT_S = 60.0  # node start: import torch + load the model (5-10 s alone; slower under load)
FRAME_TIMEOUT_S = 20.0  # one frame through the node (inference ~0.05-0.5 s on CPU)
_domains: set[int] = set()


def fresh_env(log_dir) -> dict:
    """ros_env() in a ROS_DOMAIN_ID that no other process of this module uses."""
    while (domain := random_domain_id()) in _domains:
        pass
    _domains.add(domain)
    return ros_env(log_dir, domain_id=domain)


def scene(seed: int = 0) -> np.ndarray:
    return make_scene("agri", seed, (H, W))[0]


def pixels(msg: Image) -> np.ndarray:
    """An rgb8 / mono8 output message as an array (checks the row layout on the way)."""
    channels = {"rgb8": 3, "mono8": 1}[msg.encoding]
    assert msg.step == msg.width * channels and len(msg.data) == msg.step * msg.height
    a = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, channels)
    return a[..., 0] if channels == 1 else a


def key(header) -> tuple:
    return header.stamp.sec, header.stamp.nanosec, header.frame_id


class Observer:
    """This process's side of the conversation: publishers of input frames, subscriptions to every
    output (messages recorded with their arrival time), and service clients. `cameras` (name -> input
    topic, a node with image_topics): also each camera's publisher and outputs, recorded as CAMERA/mask ..."""

    def __init__(self, context, proc, log_file: Path, cameras: dict[str, str] | None = None):
        self.proc, self.log_file = proc, log_file
        self.node = rclpy.create_node("segment_node_tester", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        prefixes = ["", *(f"{camera}/" for camera in cameras or {})]
        self.received: dict[str, list] = {p + name: [] for p in prefixes for name in (*IMAGE_OUTPUTS, "stats")}
        self.received["diagnostics"] = []
        best_effort = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
        reliable = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
        for p in prefixes:
            for name in IMAGE_OUTPUTS:
                self.node.create_subscription(Image, f"{NODE}/{p}{name}", self._recorder(p + name), best_effort)
            if p:
                self.node.create_subscription(SegmentationStats, f"{NODE}/{p}stats", self._recorder(p + "stats"),
                                              reliable)
        # a client as the ROS tutorials write one: reliable, depth 10 (the default QoS)
        self.received["mask_default_qos"] = []
        self.node.create_subscription(Image, f"{NODE}/mask", self._recorder("mask_default_qos"), 10)
        self.node.create_subscription(SegmentationStats, f"{NODE}/stats", self._recorder("stats"), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        inputs = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, "/image", inputs)
        self.pub_compressed = self.node.create_publisher(CompressedImage, "/image/compressed", inputs)
        self.pub_camera = {camera: self.node.create_publisher(Image, topic, inputs)
                           for camera, topic in (cameras or {}).items()}
        self.param_client = self.node.create_client(SetParameters, f"{NODE}/set_parameters")
        self.enable_client = self.node.create_client(SetBool, f"{NODE}/enable")
        self._seq = 0

    def _recorder(self, name):
        return lambda msg: self.received[name].append((time.monotonic(), msg))

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name.startswith(f"{NODE}:"):
                self.received["diagnostics"].append((time.monotonic(), status))

    # ---------------------------------------------------------------- waiting

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait(self, predicate, timeout: float = FRAME_TIMEOUT_S, what: str = "") -> None:
        ok = wait_for(lambda: predicate() or self.proc.poll() is not None, self.executor, timeout)
        assert self.proc.poll() is None, f"the node exited ({self.proc.returncode}):\n{self.output()}"
        assert ok and predicate(), f"timed out after {timeout} s waiting for {what}\nnode output:\n{self.output()}"

    def spin_for(self, seconds: float) -> None:
        """Spin for a while (only to collect messages that must NOT come; never for correctness)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    # ---------------------------------------------------------------- input

    def header(self):
        from std_msgs.msg import Header

        self._seq += 1
        h = Header(frame_id=f"camera_{self._seq}")
        h.stamp.sec, h.stamp.nanosec = 1_763_000_000 + self._seq, 1_000 * self._seq + 7
        return h

    def send(self, array: np.ndarray, encoding: str = "rgb8", *, pad: int = 0, bigendian: bool = False,
             camera: str | None = None):
        """Publish `array` as an Image with a new unique header (on `camera`'s topic, default /image);
        returns the header."""
        h, w = array.shape[:2]
        if array.dtype == np.uint16:
            array = array.astype(">u2" if bigendian else "<u2")
        rows = np.ascontiguousarray(array).reshape(h, -1).view(np.uint8)
        if pad:
            rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
        msg = Image(header=self.header(), height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                    step=rows.shape[1])
        msg.data = rows.tobytes()
        (self.pub_camera[camera] if camera else self.pub_image).publish(msg)
        return msg.header

    def send_raw(self, msg):
        """Publish a hand-made (possibly malformed) Image or CompressedImage with a new header."""
        msg.header = self.header()
        (self.pub_compressed if isinstance(msg, CompressedImage) else self.pub_image).publish(msg)
        return msg.header

    # ---------------------------------------------------------------- output

    def of(self, name: str, header) -> list:
        return [m for _, m in self.received[name] if key(m.header) == key(header)]

    def stats(self, header, timeout: float = FRAME_TIMEOUT_S) -> SegmentationStats:
        self.wait(lambda: self.of("stats", header), timeout, f"stats of frame {key(header)}")
        found = self.of("stats", header)
        assert len(found) == 1, f"{len(found)} stats messages for one frame"
        return found[0]

    def stats_of(self, camera: str, header) -> SegmentationStats:
        """The stats of a frame sent on `camera` (image_topics), waited for."""
        self.wait(lambda: self.of(f"{camera}/stats", header), FRAME_TIMEOUT_S, f"{camera}'s stats of {key(header)}")
        return self.of(f"{camera}/stats", header)[0]

    def images(self, header, names=IMAGE_OUTPUTS) -> dict[str, Image]:
        self.wait(lambda: all(self.of(n, header) for n in names), FRAME_TIMEOUT_S,
                  f"{names} of frame {key(header)}")
        return {n: self.of(n, header)[0] for n in names}

    def latest_counters(self) -> dict[str, int]:
        return diag_counters(self.received["diagnostics"][-1][1]) if self.received["diagnostics"] else {}

    def counters(self) -> dict[str, int]:
        """Cumulative frame counters from a /diagnostics message published after this call."""
        start = len(self.received["diagnostics"])
        self.wait(lambda: len(self.received["diagnostics"]) >= start + 2, 10.0, "two fresh /diagnostics")
        return diag_counters(self.received["diagnostics"][-1][1])

    # ---------------------------------------------------------------- services

    def _call(self, client, request):
        self.wait(lambda: client.service_is_ready(), 10.0, f"service {client.srv_name}")
        future = client.call_async(request)
        self.wait(future.done, 10.0, f"a response of {client.srv_name}")
        return future.result()

    def set_params(self, **values):
        """Set parameters through the node's set_parameters service; returns the SetParametersResults."""
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return self._call(self.param_client, request).results

    def set_ok(self, **values):
        results = self.set_params(**values)
        assert all(r.successful for r in results), [r.reason for r in results]

    def enable(self, on: bool):
        return self._call(self.enable_client, SetBool.Request(data=on))


def diag_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def diag_counters(status, camera: str = "") -> dict[str, int]:
    """The frame counters of a /diagnostics status: the node's totals, or one camera's (CAMERA.frames_*)."""
    prefix = f"{camera}.frames_" if camera else "frames_"
    return {k[len(prefix):]: int(v) for k, v in diag_values(status).items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- the shared node


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node process (demo model, CPU, compressed input on, diagnostics every 0.2 s) and an
    Observer connected to it, ready: one frame has gone through with every output."""
    tmp = tmp_path_factory.mktemp("segment_node")
    env = fresh_env(tmp / "ros_log")
    log_file = tmp / "node_output.txt"
    with open(log_file, "w") as out:
        proc = start_ros_process(NODE_CMD + ["-p", "diagnostics_period:=0.2", "-p", "compressed_input:=true",
                                             "-p", "stale_timeout:=3600.0"],  # test_stale_input sets it low
                                 env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with rclpy_context(env) as ctx:
            obs = Observer(ctx, proc, log_file)
            obs.wait(lambda: obs.node.count_publishers(f"{NODE}/stats") > 0
                     and obs.node.count_subscribers("/image") > 0, START_TIMEOUT_S, "the node's topics")
            image = scene(0)
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # until our subscriptions are matched on the node's side too
                header = obs.send(image)
                ok = wait_for(lambda: obs.of("stats", header) and all(obs.of(n, header) for n in IMAGE_OUTPUTS),
                              obs.executor, 3.0)
                if ok or time.monotonic() > deadline:
                    break
            obs.images(header)
            yield obs
            obs.executor.shutdown()
            obs.node.destroy_node()
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)


def expected_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return cv2.addWeighted(image, 1.0 - alpha, PALETTE[mask], alpha, 0.0)


def test_outputs_headers_and_stats(node):
    image = scene(1)
    header = node.send(image)
    stats = node.stats(header)
    out = node.images(header)
    for name, msg in out.items():  # headers copied from the input exactly
        assert key(msg.header) == key(header), name
        assert (msg.width, msg.height) == (W, H), name
    assert key(stats.header) == key(header)
    # the default-QoS (reliable) subscriber gets the very same mask (issue 12 measured 0 of 20 before)
    node.wait(lambda: any(key(m.header) == key(header) for _, m in node.received["mask_default_qos"]),
              what="the mask on a default-QoS (reliable, depth 10) subscription")

    assert out["mask"].encoding == "mono8"
    mask = pixels(out["mask"])
    assert mask.max() < 3
    assert out["confidence"].encoding == "mono8"
    confidence = pixels(out["confidence"])
    assert confidence.min() >= 255 // 3 and confidence.max() <= 255  # the winning probability is >= 1 / classes
    assert len(np.unique(confidence)) > 2  # an image, not a constant
    for name in ("mask_color", "overlay", "clusters"):
        assert out[name].encoding == "rgb8", name
    np.testing.assert_array_equal(pixels(out["mask_color"]), PALETTE[mask])
    np.testing.assert_array_equal(pixels(out["overlay"]), expected_overlay(image, mask))
    tinted = (pixels(out["clusters"]) != image).any(axis=2)
    assert tinted.any() == (stats.clusters_used > 0)  # cluster pixels tinted, kept tokens untouched
    assert tinted.mean() < 1.0

    assert stats.model_name == "synthetic_agri_k3_ip3"
    assert (stats.image_width, stats.image_height) == (W, H)
    assert (stats.network_width, stats.network_height) == (NETWORK, NETWORK)
    assert stats.patch_tokens == PATCH_TOKENS
    assert stats.tokens == stats.kept_tokens + stats.clusters_used and 0 < stats.tokens <= PATCH_TOKENS
    assert stats.token_keep_ratio == pytest.approx(stats.tokens / stats.patch_tokens, rel=1e-6)
    assert stats.keep_bias == 0.0
    assert list(stats.class_names) == CLASS_NAMES
    assert len(stats.class_pixel_counts) == 3
    assert sum(stats.class_pixel_counts) + stats.unlabeled_pixels == W * H
    assert stats.class_pixel_counts.tolist() == np.bincount(mask.ravel(), minlength=3).tolist()
    assert min(stats.preprocess_ms, stats.inference_ms, stats.postprocess_ms) > 0
    assert stats.total_ms >= stats.inference_ms
    assert stats.total_ms >= 0.99 * (stats.preprocess_ms + stats.inference_ms + stats.postprocess_ms)
    assert stats.frames_rejected == 0 and stats.frames_dropped == 0


ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")


def as_encoding(image: np.ndarray, encoding: str) -> np.ndarray:
    """`image` (RGB) as a camera would send it in `encoding`; the mono ones hold the same gray picture."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    alpha = np.full(image.shape[:2] + (1,), 200, np.uint8)
    return {"rgb8": image, "bgr8": image[..., ::-1], "rgba8": np.concatenate([image, alpha], 2),
            "bgra8": np.concatenate([image[..., ::-1], alpha], 2), "mono8": gray,
            "mono16": gray.astype(np.uint16) * 257}[encoding]


@pytest.fixture(scope="module")
def masks_by_encoding(node):
    """encoding -> the node's mask for scene(2) sent in that encoding (filled on demand)."""
    cache = {}

    def mask(encoding):
        if encoding not in cache:
            header = node.send(as_encoding(scene(2), encoding), encoding, pad=4 if encoding == "bgra8" else 0)
            stats = node.stats(header)
            assert (stats.image_width, stats.image_height) == (W, H) and stats.frames_rejected == 0
            cache[encoding] = pixels(node.images(header, ["mask"])["mask"])
        return cache[encoding]
    return mask


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_is_segmented(masks_by_encoding, encoding):
    mask = masks_by_encoding(encoding)
    assert mask.shape == (H, W) and mask.max() < 3


def test_same_picture_in_any_channel_order_gives_the_same_mask(masks_by_encoding):
    rgb = masks_by_encoding("rgb8")
    for encoding in ("bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(masks_by_encoding(encoding), rgb, err_msg=encoding)
    np.testing.assert_array_equal(masks_by_encoding("mono16"), masks_by_encoding("mono8"))


def test_compressed_input(node):
    image = scene(3)
    ok, png = cv2.imencode(".png", image[..., ::-1])
    msg = CompressedImage(format="png")
    msg.data = png.tobytes()
    header = node.send_raw(msg)
    stats = node.stats(header)
    assert (stats.image_width, stats.image_height) == (W, H) and stats.frames_rejected == 0
    out = node.images(header, ["mask", "overlay"])
    assert key(out["mask"].header) == key(header)
    np.testing.assert_array_equal(pixels(out["overlay"]), expected_overlay(image, pixels(out["mask"])))
    # the same picture as a raw frame gives the same mask
    raw = node.send(image)
    np.testing.assert_array_equal(pixels(node.images(raw, ["mask"])["mask"]), pixels(out["mask"]))


def test_label_info_reaches_a_late_subscriber(node):
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = []
    sub = node.node.create_subscription(LabelInfo, f"{NODE}/label_info", got.append, latched)
    try:
        node.wait(lambda: got, 10.0, "the latched ~/label_info (vision_msgs/msg/LabelInfo)")
    finally:
        node.node.destroy_subscription(sub)
    classes = [(c.class_id, c.class_name) for c in got[0].class_map]
    assert classes == [(0, "soil"), (1, "crop"), (2, "weed"), (255, "UNLABELED")]  # mono8 masks
    assert got[0].threshold == 0.0


def test_keep_bias_is_live(node):
    image = scene(4)
    at_zero = node.stats(node.send(image))
    assert at_zero.keep_bias == 0.0 and at_zero.tokens < PATCH_TOKENS
    try:
        node.set_ok(keep_bias=50.0)
        header = node.send(image)
        keep_all = node.stats(header)
        assert keep_all.keep_bias == 50.0
        assert keep_all.tokens == keep_all.kept_tokens == keep_all.patch_tokens == PATCH_TOKENS
        assert keep_all.clusters_used == 0 and keep_all.token_keep_ratio == 1.0
        # nothing merged: the cluster view is the input image, untinted
        np.testing.assert_array_equal(pixels(node.images(header, ["clusters"])["clusters"]), image)

        node.set_ok(keep_bias=-5.0)
        merged = node.stats(node.send(image))
        assert merged.keep_bias == -5.0
        assert merged.tokens < at_zero.tokens
    finally:
        node.set_ok(keep_bias=0.0)
    assert node.stats(node.send(image)).tokens == at_zero.tokens


def test_overlay_alpha_is_live(node):
    image = scene(5)
    try:
        node.set_ok(overlay_alpha=0.25)
        out = node.images(node.send(image), ["mask", "overlay"])
        np.testing.assert_array_equal(pixels(out["overlay"]), expected_overlay(image, pixels(out["mask"]), 0.25))
    finally:
        node.set_ok(overlay_alpha=0.5)


@pytest.mark.parametrize("name, value, words", [
    ("overlay_alpha", 2.0, ["overlay_alpha"]),
    ("keep_bias", 100.0, ["keep_bias"]),
    ("keep_bias", "high", ["type"]),
    ("precision", "fp16", ["read-only"]),
    ("model", "cwfid_k3_ip3", ["read-only"]),
], ids=["overlay_alpha_2", "keep_bias_100", "keep_bias_string", "precision_read_only", "model_read_only"])
def test_invalid_parameter_values_are_rejected(node, name, value, words):
    (result,) = node.set_params(**{name: value})
    print(f"{name}={value!r} rejected: {result.reason}")
    assert not result.successful
    assert result.reason and all(w in result.reason for w in words), result.reason
    image = scene(5)
    header = node.send(image)
    stats = node.stats(header)  # still running, with the old values
    assert stats.keep_bias == 0.0 and stats.model_name == "synthetic_agri_k3_ip3"
    out = node.images(header, ["overlay", "mask"])
    np.testing.assert_array_equal(pixels(out["overlay"]), expected_overlay(image, pixels(out["mask"]), 0.5))


def test_enable_service(node):
    before = node.counters()
    response = node.enable(False)
    headers = []
    try:
        assert response.success and "disabled" in response.message
        for i in range(3):  # one at a time, each seen by the node (frames_received) before the next
            headers.append(node.send(scene(6)))
            node.wait(lambda: node.latest_counters()["received"] >= before["received"] + i + 1, 10.0,
                      f"the node to receive disabled frame {i + 1}")
        after = node.counters()
        assert after["processed"] == before["processed"]
        assert not any(node.of("stats", h) for h in headers)
        status = node.received["diagnostics"][-1][1]
        assert diag_values(status)["enabled"] == "false" and status.message == "disabled"
    finally:
        response = node.enable(True)
    assert response.success and "enabled" in response.message
    stats = node.stats(node.send(scene(6)))
    assert not any(node.of("stats", h) for h in headers)  # disabled frames are not processed later either
    assert stats.frames_dropped == 0
    node.counters()  # fresh diagnostics
    assert diag_values(node.received["diagnostics"][-1][1])["enabled"] == "true"


def malformed_frames() -> dict:
    ok = bytes(8 * 30)  # an 8x10 rgb8 frame
    return {
        "unsupported_encoding": Image(height=8, width=10, encoding="32FC1", step=40, data=bytes(320)),
        "zero_size": Image(height=0, width=10, encoding="rgb8", step=30, data=b""),
        "step_shorter_than_row": Image(height=8, width=10, encoding="rgb8", step=20, data=bytes(160)),
        "data_length_mismatch": Image(height=8, width=10, encoding="rgb8", step=30, data=ok[:-30]),
        "compressed_garbage": CompressedImage(format="jpeg", data=b"\xff\xd8 this is not a jpeg" * 10),
        "compressed_empty": CompressedImage(format="png", data=b""),
    }


def test_malformed_frames_are_rejected_and_the_node_keeps_running(node):
    before = node.counters()
    frames = malformed_frames()
    for i, (kind, msg) in enumerate(frames.items()):  # one at a time: the input slot keeps only the latest
        node.send_raw(msg)
        node.wait(lambda: node.latest_counters()["rejected"] >= before["rejected"] + i + 1, 10.0,
                  f"rejection of {kind}")
    after = node.counters()
    assert after["rejected"] - before["rejected"] == len(frames)
    assert after["processed"] == before["processed"] and after["failed"] == before["failed"] == 0
    status = node.received["diagnostics"][-1][1]
    assert status.level == DiagnosticStatus.WARN and "rejected" in status.message, status
    good = node.stats(node.send(scene(7)))
    assert good.frames_rejected == len(frames)  # counted since the previous stats message
    assert node.stats(node.send(scene(7))).frames_rejected == 0
    assert "rejected a frame" in node.output()


def test_decompression_bomb_is_rejected_from_its_header(node):
    """A PNG announcing 20000 x 20000 pixels (issue 12: 9.1 GB and 16 s without a frame) is rejected by its
    header: the node's memory stays flat and the next small frame is processed at once."""
    from test_images import _png_header

    def rss_mb() -> float:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024

    before, rss_before = node.counters(), rss_mb()
    for _ in range(2):
        msg = CompressedImage(format="png")
        msg.data = _png_header(20000, 20000)
        node.send_raw(msg)
    node.wait(lambda: node.latest_counters()["rejected"] >= before["rejected"] + 1, 10.0, "rejection of the bomb")
    sent = time.monotonic()
    stats = node.stats(node.send(scene(8)), timeout=10.0)
    assert time.monotonic() - sent < 10.0
    assert stats.frames_rejected >= 1 and stats.frames_rejected + stats.frames_dropped == 2  # one may be overwritten in the queue
    assert rss_mb() < rss_before + 200, (rss_before, rss_mb())


def test_stale_input_turns_diagnostics_warn(node):
    node.stats(node.send(scene(9)))
    try:
        node.set_ok(stale_timeout=0.5)
        node.wait(lambda: "stale input" in node.received["diagnostics"][-1][1].message, 10.0, "a stale-input WARN")
        status = node.received["diagnostics"][-1][1]
        assert status.level == DiagnosticStatus.WARN and "/image" in status.message
        node.stats(node.send(scene(9)))  # frames again: the WARN goes ...
        node.set_ok(stale_timeout=5.0)  # ... and stays gone long enough to be seen on a loaded machine
        node.wait(lambda: node.received["diagnostics"][-1][1].level == DiagnosticStatus.OK, 10.0, "OK again")
    finally:
        node.set_ok(stale_timeout=3600.0)


def test_publish_switch_stops_an_output(node):
    headers = []
    try:
        node.set_ok(publish_overlay=False)
        for seed in (8, 9):
            headers.append(node.send(scene(seed)))
            node.images(headers[-1], ["mask", "mask_color", "clusters"])  # published around the overlay
            node.stats(headers[-1])
        node.spin_for(0.3)  # only to give a wrongly published overlay time to arrive
        assert not any(node.of("overlay", h) for h in headers)
    finally:
        node.set_ok(publish_overlay=True)
    node.images(node.send(scene(9)), ["overlay"])


def test_flood_keeps_only_the_latest_frame(node):
    image = scene(10)
    before = node.counters()
    flood = [node.send(image) for _ in range(100)]  # as fast as possible
    node.stats(flood[-1])  # keep-latest: the newest frame is never dropped
    marker = node.send(scene(11))
    marker_sent = time.monotonic()
    node.stats(marker)
    marker_latency = next(t for t, m in node.received["stats"] if key(m.header) == key(marker)) - marker_sent
    after = node.counters()

    keys = {key(h) for h in flood}
    processed_flood = [m for _, m in node.received["stats"] if key(m.header) in keys]
    window = processed_flood + node.of("stats", marker)
    assert 0 < len(processed_flood) < 100
    delta = {k: after[k] - before[k] for k in after}
    print(f"flood: {len(processed_flood)} of 100 processed, counters {delta}, marker latency {marker_latency:.3f} s")
    assert delta["dropped"] > 0, delta
    assert sum(m.frames_dropped for m in window) == delta["dropped"], delta
    assert delta["processed"] == len(window), delta
    assert delta["rejected"] == delta["failed"] == 0, delta
    # every one of the 101 frames is accounted for: it reached the callback, or the node saw it missing
    # (a gap in this publisher's sequence numbers: overwritten in the depth-1 input queue) ...
    assert delta["received"] + delta["missed"] == 101, delta
    # ... and was either processed or dropped (missed frames count as dropped)
    assert delta["processed"] + delta["dropped"] == 101, delta
    assert delta["missed"] <= delta["dropped"], delta
    stamps = [m.header.stamp.sec for m in processed_flood]
    assert stamps == sorted(stamps)  # processed in order, never an older frame after a newer one
    # no backlog: the marker waits for at most the frame in progress
    slowest = max(m.total_ms for m in window) / 1e3
    assert marker_latency < 1.0 + 3 * slowest, (marker_latency, slowest)


def test_big_endian_mono16_frame_is_segmented(node):
    gray = cv2.cvtColor(scene(12), cv2.COLOR_RGB2GRAY)
    before = node.counters()
    header = node.send(gray.astype(np.uint16) * 257, "mono16", bigendian=True)
    handled = ("processed", "rejected", "failed")
    node.wait(lambda: sum(node.latest_counters()[k] - before[k] for k in handled) >= 1, 10.0,
              "the node to handle the frame")
    after = node.counters()
    assert after["failed"] == before["failed"], f"inference failed: {node.received['diagnostics'][-1][1].message}"
    little = node.images(node.send(gray.astype(np.uint16) * 257, "mono16"), ["mask"])["mask"]
    np.testing.assert_array_equal(pixels(node.images(header, ["mask"])["mask"]), pixels(little))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnxruntime_backend_same_outputs_as_torch(node, tmp_path):
    """The demo model exported to ONNX, run by a second node with backend auto (model:=FILE.onnx): the same
    mask and token counts as the torch node for the same frame, stats and headers alike, and a malformed
    frame is rejected while the node keeps running."""
    pytest.importorskip("onnxruntime")
    from clustvit_core.onnx_runtime import export_onnx
    from clustvit_core.registry import build_model

    onnx_path = export_onnx(build_model("synthetic_agri_k3_ip3", weights="default"), tmp_path / "demo.onnx")
    env = fresh_env(tmp_path / "ros_log")
    log_file = tmp_path / "out.txt"
    with open(log_file, "w") as out:
        proc = start_ros_process(NODE_CMD + ["-p", f"model:={onnx_path}", "-p", "diagnostics_period:=0.2"], env,
                                 stdout=out, stderr=subprocess.STDOUT)
    image = scene(7)
    torch_header = node.send(image)
    torch_stats, torch_mask = node.stats(torch_header), pixels(node.images(torch_header, ["mask"])["mask"])
    try:
        with rclpy_context(env) as ctx:
            obs = Observer(ctx, proc, log_file)
            obs.wait(lambda: obs.node.count_subscribers("/image") > 0, START_TIMEOUT_S, "the onnxruntime node")
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                header = obs.send(image)
                if wait_for(lambda: obs.of("stats", header) and obs.of("mask", header), obs.executor, 3.0):
                    break
                assert time.monotonic() < deadline, f"no output\n{obs.output()}"
            stats, mask = obs.of("stats", header)[0], pixels(obs.of("mask", header)[0])
            bad = Image(height=H, width=W, encoding="rgb8", step=3 * W)
            bad.data = bytes(10)  # far too short
            obs.send_raw(bad)
            good = obs.send(scene(8))
            obs.stats(good)
            obs.wait(lambda: obs.latest_counters().get("rejected", 0) >= 1, 10.0, "the rejected frame counted")
            status = obs.received["diagnostics"][-1][1]
            obs.executor.shutdown()
            obs.node.destroy_node()
        code, _ = stop_ros_process(proc, timeout=15.0)
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)
    assert code == 0 and "Traceback" not in log_file.read_text()
    assert "onnxruntime (CPUExecutionProvider)" in log_file.read_text()
    assert diag_values(status)["backend"] == "onnxruntime"
    assert key(stats.header) == key(header) and stats.model_name == torch_stats.model_name
    assert (stats.tokens, stats.kept_tokens, stats.clusters_used) == (
        torch_stats.tokens, torch_stats.kept_tokens, torch_stats.clusters_used)
    assert (mask == torch_mask).mean() >= 0.999


def test_sigint_stops_the_node_cleanly(node):
    """Last test of the shared node: SIGINT (what stop_ros_process sends) while frames are being
    segmented -> exit 0, no traceback, no ERROR (issue 12: 'inference failed: ... context is invalid')."""
    before = len(node.output())
    for seed in range(6):
        node.send(scene(seed))
        time.sleep(0.02)
    code, _ = stop_ros_process(node.proc, timeout=15.0)
    out = node.output()
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "ERROR" not in out[before:], out[before:]


# ----------------------------------------------------------------------------- processes of their own


def test_sigterm_stops_the_node_cleanly(tmp_path):
    env = fresh_env(tmp_path / "ros_log")
    log_file = tmp_path / "out.txt"
    with open(log_file, "w") as out:
        proc = start_ros_process(NODE_CMD + ["-p", "diagnostics_period:=0.1"], env, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        with rclpy_context(env) as ctx:
            listener = rclpy.create_node("diagnostics_listener", context=ctx)
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(listener)
            got = []
            listener.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
            spinning = wait_for(lambda: got or proc.poll() is not None, executor, START_TIMEOUT_S)
            executor.shutdown()
            listener.destroy_node()
        assert spinning and proc.poll() is None, f"no /diagnostics from the node:\n{log_file.read_text()}"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15.0)
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)
    text = log_file.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text


def test_sigterm_during_startup_exits_cleanly(tmp_path):
    """SIGTERM as soon as rclpy is initialized (its log file exists), long before the model is loaded.
    (SIGINT there fails too, but only in some tries: Python's KeyboardInterrupt races rclpy's shutdown.)"""
    env = fresh_env(tmp_path / "ros_log")
    proc = start_ros_process(NODE_CMD, env)
    try:
        assert wait_for(lambda: list((tmp_path / "ros_log").glob("*.log")) or proc.poll() is not None,
                        timeout=START_TIMEOUT_S), "rclpy.init() not reached"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30.0)
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)
    assert "Traceback" not in out, out
    assert proc.returncode == 0, out


BAD_STARTS = {  # name -> (parameters, a word the one error line must contain)
    "unknown_model": (["-p", "model:=no_such_model"], "no_such_model"),
    "missing_weights": (["-p", "weights:=/nonexistent.safetensors"], "/nonexistent.safetensors"),
    "integer_for_a_double": (["-p", "keep_bias:=1"], "keep_bias:=1.0"),  # a parameter at start, wrong type
    "input_size_off_the_patch_grid": (["-p", "input_size:=500"], "input_size=500"),  # the model's patch size: 16
    "two_topics_one_camera_name": (["-p", "image_topics:=/cam/image,/cam/image_raw"], "'cam'"),
}
BAD_START_TIMEOUT_S = 30.0


@pytest.mark.parametrize("case", BAD_STARTS)
def test_bad_configuration_exits_with_one_line(tmp_path, case):
    args, word = BAD_STARTS[case]
    proc = start_ros_process(NODE_CMD + args, fresh_env(tmp_path / "ros_log"))
    try:
        out, _ = proc.communicate(timeout=BAD_START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code, out = stop_ros_process(proc)
        pytest.fail(f"still running after {BAD_START_TIMEOUT_S} s (exit code {code} after SIGINT):\n{out}")
    assert proc.returncode != 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert word in lines[0] and "error" in lines[0], lines[0]
    assert "Traceback" not in out


def test_more_than_255_classes_publish_mono16_masks(tmp_path):
    """A 300-class model (YAML path + weights file, random weights): ~/mask is mono16, label_info says so."""
    from clustvit_core.registry import build_model
    from clustvit_core.weights import save_checkpoint

    yaml_path = tmp_path / "wide300.yaml"
    yaml_path.write_text("num_classes: 300\nbackbone: tiny\ndepth: 2\nk: 3\nip: 1\nimg_size: 64\n")
    model = build_model(yaml_path)
    weights = save_checkpoint(tmp_path / "wide300.safetensors", model.state_dict(), model.config)
    env = fresh_env(tmp_path / "ros_log")
    log_file = tmp_path / "out.txt"
    with open(log_file, "w") as out:
        proc = start_ros_process(NODE_CMD + ["-p", f"model:={yaml_path}", "-p", f"weights:={weights}"], env,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        with rclpy_context(env) as ctx:
            obs = Observer(ctx, proc, log_file)
            info = []
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            obs.node.create_subscription(LabelInfo, f"{NODE}/label_info", info.append, latched)
            obs.wait(lambda: obs.node.count_subscribers("/image") > 0 and info, START_TIMEOUT_S, "the node")
            image = scene(2)
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # until our mask subscription is matched on the node's side too
                header = obs.send(image)
                if wait_for(lambda: obs.of("mask", header) and obs.of("stats", header), obs.executor, 3.0):
                    break
                assert time.monotonic() < deadline, f"no mask\n{obs.output()}"
            mask = obs.of("mask", header)[0]
            stats = obs.of("stats", header)[0]
            obs.executor.shutdown()
            obs.node.destroy_node()
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)
    ids = [c.class_id for c in info[0].class_map]
    assert ids == [*range(300), 65535] and info[0].class_map[-1].class_name == "UNLABELED"  # mono16 masks
    assert mask.encoding == "mono16" and (mask.height, mask.width) == (H, W) and mask.step == 2 * W
    values = np.frombuffer(bytes(mask.data), ">u2" if mask.is_bigendian else "<u2")
    assert values.max() < 300
    assert len(stats.class_pixel_counts) == 300 and sum(stats.class_pixel_counts) == H * W
    assert np.bincount(values, minlength=300).tolist() == list(stats.class_pixel_counts)


def test_lifecycle_transitions_over_the_lifecycle_services(tmp_path):
    """autostart:=false: the node waits unconfigured (no model, no camera subscription); configure,
    activate, deactivate and cleanup through lifecycle_msgs/ChangeState do what the README says; a model
    that cannot load fails configure with the reason on /diagnostics, and the node stays up."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    env = fresh_env(tmp_path / "ros_log")
    log_file = tmp_path / "out.txt"
    with open(log_file, "w") as out:
        proc = start_ros_process(NODE_CMD + ["-p", "autostart:=false", "-p", "diagnostics_period:=0.2",
                                             "-p", "model:=no_such_model"], env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with rclpy_context(env) as ctx:
            obs = Observer(ctx, proc, log_file)
            change = obs.node.create_client(ChangeState, f"{NODE}/change_state")
            get = obs.node.create_client(GetState, f"{NODE}/get_state")

            def state() -> str:
                return obs._call(get, GetState.Request()).current_state.label

            def transition(tid: int) -> bool:
                return obs._call(change, ChangeState.Request(transition=Transition(id=tid))).success

            def last_status():
                return obs.received["diagnostics"][-1][1]

            obs.wait(lambda: obs.received["diagnostics"], START_TIMEOUT_S, "/diagnostics")
            assert state() == "unconfigured"
            assert "unconfigured" in last_status().message and obs.node.count_subscribers("/image") == 0
            assert not transition(Transition.TRANSITION_CONFIGURE)  # model no_such_model
            assert state() == "unconfigured"
            obs.wait(lambda: "no_such_model" in last_status().message, 10.0, "the configure error on /diagnostics")
            assert last_status().level == DiagnosticStatus.ERROR

            obs.set_ok(model="synthetic_agri_k3_ip3")  # what configure reads may change while unconfigured
            (result,) = obs.set_params(diagnostics_period=0.5)
            assert not result.successful  # ... the rest stays read-only
            for cycle in range(2):  # configure -> activate -> deactivate -> cleanup, twice (the model reloads)
                assert transition(Transition.TRANSITION_CONFIGURE), obs.output()
                assert state() == "inactive" and obs.node.count_subscribers("/image") == 0
                (result,) = obs.set_params(model="cwfid_k3_ip3")
                assert not result.successful and "read-only while the node is inactive" in result.reason
                assert transition(Transition.TRANSITION_ACTIVATE)
                assert state() == "active"
                obs.wait(lambda: obs.node.count_subscribers("/image") > 0, 10.0, "the camera subscription")
                deadline = time.monotonic() + START_TIMEOUT_S
                while True:  # until our subscriptions are matched on the node's side too
                    header = obs.send(scene(cycle))
                    if wait_for(lambda: obs.of("stats", header) and obs.of("mask", header), obs.executor, 3.0):
                        break
                    assert time.monotonic() < deadline, f"no output while active\n{obs.output()}"
                obs.wait(lambda: last_status().message in ("running", "waiting for images"), 10.0, "status running")

                assert transition(Transition.TRANSITION_DEACTIVATE)
                assert state() == "inactive"
                obs.wait(lambda: obs.node.count_subscribers("/image") == 0, 10.0, "the camera unsubscribed")
                header = obs.send(scene(5))
                obs.spin_for(1.0)
                assert not obs.of("stats", header) and not obs.of("mask", header)
                obs.wait(lambda: "inactive" in last_status().message, 10.0, "inactive on /diagnostics")

                assert transition(Transition.TRANSITION_CLEANUP)
                assert state() == "unconfigured"
                obs.wait(lambda: obs.node.count_publishers(f"{NODE}/stats") == 0, 10.0, "outputs destroyed")
            obs.executor.shutdown()
            obs.node.destroy_node()
        code, _ = stop_ros_process(proc, timeout=15.0)
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)
    out = log_file.read_text()
    assert code == 0 and "Traceback" not in out, out



def test_latest_frames_keeps_one_frame_per_camera():
    """The inference thread's mailbox: a newer frame of a camera replaces its waiting one (dropped), never
    another camera's; take() empties every slot at once (one batch); closed, it gives {}."""
    from clustvit_ros.segment_node import Frame, LatestFrames

    slots = LatestFrames()
    a1, a2, b1 = (Frame(Image(), t) for t in (1.0, 2.0, 3.0))
    assert not slots.put("a", a1) and slots.put("a", a2) and not slots.put("b", b1)
    assert slots.take() == {"a": a2, "b": b1}
    assert slots.take(timeout=0) == {}
    assert not slots.put("a", a1)  # the slot is free again
    slots.close()
    assert slots.take() == {}


CAMERAS = {"cam_a": "/cam_a/image", "cam_b": "/cam_b/image"}  # image_topics -> camera names (outputs ~/cam_a/*)


def test_several_cameras_one_model(tmp_path):
    """image_topics: one node, one model, two cameras. Each camera's outputs carry its own frames' headers
    (frames of different sizes segmented in one batch). A flood of frames on cam_a while cam_b sends one
    frame at a time: every cam_b frame is processed (its keep-latest slot is its own), cam_a drops frames,
    and each camera's counters (/diagnostics CAMERA.frames_*, its stats' frames_dropped) add up."""
    env = fresh_env(tmp_path / "ros_log")
    log_file = tmp_path / "out.txt"
    with open(log_file, "w") as out:
        proc = start_ros_process(NODE_CMD + ["-p", f"image_topics:={','.join(CAMERAS.values())}",
                                             "-p", "diagnostics_period:=0.2"],
                                 env, stdout=out, stderr=subprocess.STDOUT)
    small, large = scene(1), make_scene("agri", 1, (2 * H, 2 * W))[0]  # the same picture at two sizes
    try:
        with rclpy_context(env) as ctx:
            obs = Observer(ctx, proc, log_file, cameras=CAMERAS)
            obs.wait(lambda: all(obs.node.count_subscribers(t) > 0 for t in CAMERAS.values())
                     and obs.node.count_publishers(f"{NODE}/cam_b/stats") > 0, START_TIMEOUT_S, "the cameras' topics")
            assert obs.node.count_subscribers("/image") == 0 and obs.node.count_publishers(f"{NODE}/mask") == 0
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # until our subscriptions are matched on the node's side too
                a, b = obs.send(small, camera="cam_a"), obs.send(large, camera="cam_b")
                if wait_for(lambda: all(obs.of(f"{c}/{n}", h) for c, h in (("cam_a", a), ("cam_b", b))
                                        for n in ("stats", *IMAGE_OUTPUTS)), obs.executor, 3.0):
                    break
                assert time.monotonic() < deadline, f"no output on both cameras\n{obs.output()}"

            # each camera's outputs: its own frames, headers and sizes; the same picture, the same mask
            for camera, header, shape, other in (("cam_a", a, (H, W), "cam_b"), ("cam_b", b, (2 * H, 2 * W), "cam_a")):
                stats = obs.of(f"{camera}/stats", header)[0]
                assert key(stats.header) == key(header) and (stats.image_height, stats.image_width) == shape
                assert stats.tokens == stats.kept_tokens + stats.clusters_used and stats.frames_rejected == 0
                for name in IMAGE_OUTPUTS:
                    (msg,) = obs.of(f"{camera}/{name}", header)
                    assert (msg.height, msg.width) == shape, (camera, name)
                    assert not obs.of(f"{other}/{name}", header), f"{camera}'s frame on {other}/{name}"
            mask_a, mask_b = (pixels(obs.of(f"{c}/mask", h)[0]) for c, h in (("cam_a", a), ("cam_b", b)))
            assert (cv2.resize(mask_b, (W, H), interpolation=cv2.INTER_NEAREST) == mask_a).mean() > 0.9

            # a flood on cam_a (bursts of 6 frames, back to back), cam_b one frame at a time (each sent once its
            # previous one is processed)
            obs.counters()  # a fresh /diagnostics
            before = {c: diag_counters(obs.received["diagnostics"][-1][1], c) for c in CAMERAS}
            flood, steady = [], []
            for _ in range(5):
                flood += [obs.send(small, camera="cam_a") for _ in range(6)]
                steady.append(obs.send(large, camera="cam_b"))
                obs.stats_of("cam_b", steady[-1])
            obs.stats_of("cam_a", flood[-1])  # keep-latest: the newest frame is never dropped
            obs.counters()
            status = obs.received["diagnostics"][-1][1]
            after = {c: diag_counters(status, c) for c in CAMERAS}
            obs.executor.shutdown()
            obs.node.destroy_node()
        code, _ = stop_ros_process(proc, timeout=15.0)
    finally:
        if proc.poll() is None:
            stop_ros_process(proc)
    text = log_file.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert "cameras (one batch): /cam_a/image -> ~/cam_a/*, /cam_b/image -> ~/cam_b/*" in text, text

    delta = {c: {k: after[c][k] - before[c][k] for k in after[c]} for c in CAMERAS}
    print(f"two cameras: counters {delta}")
    stats = {c: [m for _, m in obs.received[f"{c}/stats"] if key(m.header) in {key(h) for h in frames}]
             for c, frames in (("cam_a", flood), ("cam_b", steady))}
    # cam_b: every frame processed, nothing dropped
    assert len(stats["cam_b"]) == len(steady) == delta["cam_b"]["processed"], delta
    assert delta["cam_b"]["dropped"] == 0 and all(m.frames_dropped == 0 for m in stats["cam_b"])
    # cam_a: keep-latest drops most of the flood; every frame accounted for (as in the one-camera flood test)
    assert 0 < len(stats["cam_a"]) < len(flood) and delta["cam_a"]["processed"] == len(stats["cam_a"]), delta
    assert delta["cam_a"]["dropped"] > 0 and sum(m.frames_dropped for m in stats["cam_a"]) == delta["cam_a"]["dropped"]
    for c, n in (("cam_a", len(flood)), ("cam_b", len(steady))):
        assert delta[c]["received"] + delta[c]["missed"] == n == delta[c]["processed"] + delta[c]["dropped"], delta
        assert delta[c]["rejected"] == delta[c]["failed"] == 0, delta
    # the node's totals are the cameras' sums
    totals = diag_counters(status)
    assert all(totals[k] == after["cam_a"][k] + after["cam_b"][k] for k in totals), (totals, after)
    values = diag_values(status)
    assert values["cam_a.input_topic"] == "/cam_a/image" and float(values["cam_b.rate_hz"]) >= 0
    # one forward pass for both cameras: frames of a batch share its preprocess and inference times
    timings = lambda m: (m.preprocess_ms, m.inference_ms)  # noqa: E731
    assert {timings(m) for m in stats["cam_b"]} & {timings(m) for m in stats["cam_a"]}, "never batched"
