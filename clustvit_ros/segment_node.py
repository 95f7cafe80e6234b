"""ROS 2 node: camera images in, ClustViT semantic segmentation out.

    python -m clustvit_ros.segment_node --ros-args -p model:=cwfid_k3_ip3 -r image:=/camera/image_raw

The node is thin: `clustvit_core.predictor.Segmenter` does all model work; this file only moves
frames between DDS and it. Frames are handed from the subscription callback to one inference
thread through a keep-latest slot (a newer frame replaces a waiting one, which is counted as
dropped), so the node never builds a backlog. Topics, parameters and message fields: README.md.

Several cameras, one model (`image_topics`): each camera has its own subscription, keep-latest slot,
frame counters and outputs (~/CAMERA/*); the one inference thread takes the waiting frame of every
camera that has one and segments them in one batched forward pass (`Segmenter.segment_batch`). The
single camera (input `image`, outputs ~/*) is the same code with one camera named ''.

It is a lifecycle node (rclpy.lifecycle, the lifecycle_msgs services under ~/): parameters are declared
and checked at construction; configure loads the model and creates the outputs and the inference
thread; activate subscribes to the camera and enables the outputs; deactivate unsubscribes; cleanup
stops the thread and frees the model (and its GPU memory). /diagnostics and ~/enable work in every
state. With `autostart` (default) the node configures and activates itself, as a plain node would.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import rclpy
from clustvit_msgs.msg import SegmentationStats
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import LabelInfo, VisionClass
from std_srvs.srv import SetBool

from clustvit_core.errors import ClustViTError
from clustvit_core.predictor import Segmentation, Segmenter
from clustvit_core.visualize import cluster_overlay, colorize
from clustvit_ros import interface as api
from clustvit_ros.images import FrameError, array_to_image, check_compressed, check_image, image_to_rgb
from clustvit_ros.interface import NODE_NAME
from clustvit_ros.params import BY_NAME, PARAMETERS, Param, camera_topics, check_value, provider_list

UNLABELED = {np.uint8: 255, np.uint16: 65535}  # mask value of pixels without a class, by mask dtype
WARN_PERIOD_S = 5.0  # throttle of per-frame warnings
RATE_WINDOW = 30  # frames over which /diagnostics reports rate and latency
STATUS_HOLD_S = 10.0  # /diagnostics stays WARN / ERROR this long after a rejected frame / failed inference


@dataclass
class Frame:
    msg: Image | CompressedImage
    received: float  # time.perf_counter() when the callback got it


class LatestFrames:
    """Keep-latest slots, one per camera, between the subscription callbacks and the inference thread.

    put(camera, frame) replaces that camera's frame still waiting (returns True: that frame was dropped);
    take() blocks until some camera has a frame or the slots are closed, then takes the waiting frame of
    every camera that has one ({camera: frame}; {} once closed)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frames: dict[str, Frame] = {}
        self._closed = False

    def put(self, camera: str, frame: Frame) -> bool:
        with self._cond:
            dropped = camera in self._frames
            self._frames[camera] = frame
            self._cond.notify()
            return dropped

    def take(self, timeout: float | None = None) -> dict[str, Frame]:
        with self._cond:
            self._cond.wait_for(lambda: self._frames or self._closed, timeout)
            frames, self._frames = self._frames, {}
            return {} if self._closed else frames

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Counters:
    """Frame counters: totals (for /diagnostics) and since the last stats message (for ~/stats)."""

    # received: reached the image callback; missed: sent but never reached it (gaps in the publisher's
    # sequence numbers: overwritten in the depth-1 input queue, or lost in transport), also counted in
    # dropped, with the frames the keep-latest slot replaced; skipped: arrived while disabled.
    # received + missed = processed + dropped + rejected + failed + skipped (+ the frame in progress).
    NAMES = ("received", "missed", "processed", "dropped", "rejected", "failed", "skipped")

    def __init__(self):
        self._lock = threading.Lock()
        self.total = dict.fromkeys(self.NAMES, 0)
        self._since_stats = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.total[name] += n
            self._since_stats[name] += n

    def take_since_stats(self) -> dict[str, int]:
        with self._lock:
            out, self._since_stats = self._since_stats, dict.fromkeys(self.NAMES, 0)
            return out


@dataclass(eq=False)
class Camera:
    """One input stream and its outputs: the single camera (name '', input `image`, outputs ~/mask ...) or a
    camera of `image_topics` (outputs ~/NAME/mask ...)."""

    name: str
    topic: str  # the input topic as subscribed (before remapping and namespace)
    counters: Counters = field(default_factory=Counters)
    recent: deque = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))  # (done time, total ms, tokens)
    last_sequence: dict = field(default_factory=dict)  # publisher gid -> its last publication sequence number
    last_frame_time: float | None = None  # of the last frame that reached the callback
    pub: dict = field(default_factory=dict)  # "mask", ..., "stats" -> lifecycle publisher (while configured)


def descriptor(spec: Param) -> ParameterDescriptor:
    kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
            float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}[type(spec.default)]
    d = ParameterDescriptor(name=spec.name, type=kind, description=spec.description,
                            read_only=not (spec.live or spec.configure))
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.range and kind == ParameterType.PARAMETER_DOUBLE:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]))]
    elif spec.range and kind == ParameterType.PARAMETER_INTEGER:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return d


class SegmentNode(LifecycleNode):
    """The segmentation node. Raises ClustViTError from the constructor for a bad parameter value;
    a model that cannot be loaded fails the configure transition (`configure_error` says why)."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.state_label = "unconfigured"  # the lifecycle state this node is in (parameters, /diagnostics)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.add_on_set_parameters_callback(self._check_parameters)
        bad = [reason for spec in PARAMETERS if (reason := check_value(spec.name, self._param(spec.name)))]
        if bad:
            raise ClustViTError(f"parameter {bad[0]}")

        self.segmenter: Segmenter | None = None  # loaded on configure, freed on cleanup
        self.configure_error = ""  # why the last configure failed
        self.subscriptions_in: list = []  # the camera subscriptions (exist while active)
        self.worker: threading.Thread | None = None
        self.cameras: dict[str, Camera] = {}
        self.cameras = self._wanted_cameras()  # made again on configure (image_topics may change while unconfigured)
        self.slots = LatestFrames()
        self.pub_label_info = None
        self.last_error = ""  # the latest inference failure, with its time (for /diagnostics)
        self.last_error_time = self.last_rejected_time = -float("inf")
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, api.DIAGNOSTICS.name, 10)
        self.create_service(SetBool, api.ENABLE.name, self._on_enable)
        self.create_timer(self._param("diagnostics_period"), self._publish_diagnostics)

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self._param
        try:
            seg = Segmenter(p("model"), p("weights") or None, device=p("device"), precision=p("precision"),
                            input_size=p("input_size"), threads=p("threads"), resize_mode=p("resize_mode"),
                            backend=p("backend"), providers=provider_list(p("providers")),
                            engine_cache=p("engine_cache") or None, cuda_graphs=p("cuda_graphs"))
            seg.warm_up()
        except ClustViTError as exc:
            self.configure_error = str(exc)
            if not p("autostart"):  # with autostart, main() prints the one error line and exits
                self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.segmenter, self.configure_error = seg, ""
        runs_on = (f"onnxruntime ({', '.join(seg.model.providers)})" if seg.backend == "onnxruntime"
                   else f"{seg.device} {seg.precision}")
        self.get_logger().info(f"model {seg.name} ({seg.num_classes} classes, k={seg.k}) on {runs_on}, "
                               f"input {seg.size[1]}x{seg.size[0]}")  # size: (h, w)

        self.cameras = self._wanted_cameras()
        if "" not in self.cameras:
            self.get_logger().info("cameras (one batch): " + ", ".join(
                f"{cam.topic} -> ~/{cam.name}/*" for cam in self.cameras.values()))
        # Reliable, depth 1: served to reliable (the tutorials' default) and best-effort subscribers alike,
        # and never a queue of stale frames; `qos_overrides./segment_node/mask.publisher.*` change it.
        overrides = QoSOverridingOptions.with_default_policies()
        out_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        for cam in self.cameras.values():  # outputs ~/mask ... (the single camera) or ~/CAMERA/mask ...
            for endpoint in api.CAMERA_OUTPUTS:
                topic = api.camera_output(endpoint, cam.name)
                cam.pub[endpoint.name[2:]] = (
                    self.create_lifecycle_publisher(SegmentationStats, topic, 10) if endpoint is api.STATS else
                    self.create_lifecycle_publisher(Image, topic, out_qos, qos_overriding_options=overrides))
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_label_info = self.create_lifecycle_publisher(LabelInfo, api.LABEL_INFO.name, latched)
        self.slots = LatestFrames()
        self.worker = threading.Thread(target=self._work, name="clustvit-inference", daemon=True)
        self.worker.start()
        self.state_label = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.pub_label_info.publish(self.label_info())
        image_qos = QoSProfile(**{**_qos_kwargs(qos_profile_sensor_data), "depth": 1})
        overrides = QoSOverridingOptions.with_default_policies()
        types = {"": Image, "/compressed": CompressedImage} if self._param("compressed_input") else {"": Image}
        for cam in self.cameras.values():
            callback = partial(self._on_image, cam)
            self.subscriptions_in += [self.create_subscription(msg_type, cam.topic + suffix, callback, image_qos,
                                                               qos_overriding_options=overrides)
                                      for suffix, msg_type in types.items()]
            cam.last_frame_time = None  # no 'stale input' for the time the node was not listening
        self.state_label = "active"
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self.state_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.state_label = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._release()
        self.state_label = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._release()
        self.state_label = "unconfigured"
        return super().on_error(state)

    def _unsubscribe(self) -> None:
        for sub in self.subscriptions_in:
            self.destroy_subscription(sub)
        self.subscriptions_in = []
        self.slots.take(timeout=0)  # frames still waiting are not processed after deactivate

    def _release(self) -> None:
        """Stop the inference thread (after the frame in progress), destroy the outputs, free the model."""
        self.close()
        for pub in [p for cam in self.cameras.values() for p in cam.pub.values()] + [self.pub_label_info]:
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        for cam in self.cameras.values():
            cam.pub = {}
        self.pub_label_info = None
        if self.segmenter is not None:
            on_cuda = self.segmenter.device.type == "cuda"
            self.segmenter = None
            gc.collect()
            if on_cuda:
                import torch

                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ parameters

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _wanted_cameras(self) -> dict[str, Camera]:
        """The cameras `image_topics` names (none: the single camera '' on `image`); a camera the node had
        already keeps its counters."""
        known = self.cameras
        wanted = camera_topics(self._param("image_topics")) or [("", api.IMAGE_IN.name)]
        return {name: known[name] if name in known and known[name].topic == topic else Camera(name, topic)
                for name, topic in wanted}

    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            spec = BY_NAME.get(param.name)
            if spec is not None and spec.configure and not spec.live and self.state_label != "unconfigured":
                return SetParametersResult(successful=False, reason=(
                    f"{param.name} is read-only while the node is {self.state_label}: change it while unconfigured "
                    f"(lifecycle deactivate + cleanup, then configure) or restart the node"))
            reason = check_value(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.set_parameters([Parameter("enable", value=bool(request.data))])
        response.success = True
        response.message = "processing enabled" if request.data else "processing disabled"
        return response

    def label_info(self) -> LabelInfo:
        """vision_msgs/LabelInfo: class id -> name, plus the mask type's largest id as UNLABELED (vision_msgs'
        convention: 255 for mono8, 65535 for mono16 masks); no confidence threshold is applied (0)."""
        seg = self.segmenter
        classes = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(seg.class_names)]
        classes.append(VisionClass(class_id=UNLABELED[seg.label_dtype], class_name="UNLABELED"))
        msg = LabelInfo(class_map=classes, threshold=0.0)
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    # ------------------------------------------------------------------ input

    def _on_image(self, cam: Camera, msg, info) -> None:  # bound to a camera: rclpy then passes the MessageInfo
        received = time.perf_counter()
        cam.last_frame_time = received
        cam.counters.add("received")
        missed = self._missed_before(cam, info)
        enabled = self._param("enable")
        if missed:
            cam.counters.add("missed", missed)
            cam.counters.add("dropped" if enabled else "skipped", missed)
        if not enabled:
            cam.counters.add("skipped")
            return
        try:  # cheap checks here, so a bad frame never displaces a good one
            max_pixels = int(self._param("max_input_pixels"))
            if isinstance(msg, Image):
                check_image(msg, max_pixels)
            else:
                check_compressed(msg, max_pixels)
        except FrameError as exc:
            self._reject(cam, exc)
            return
        if self.slots.put(cam.name, Frame(msg, received)):
            cam.counters.add("dropped")

    @staticmethod
    def _missed_before(cam: Camera, info) -> int:
        """Frames of this frame's publisher that never reached the callback since its previous one
        (from the publication sequence numbers rmw reports; 0 where it reports none)."""
        seq = (info or {}).get("publication_sequence_number")
        if not seq:
            return 0
        gid = (info.get("publisher_gid") or {}).get("data")
        key = bytes(gid) if gid is not None else None
        last = cam.last_sequence.get(key)
        cam.last_sequence[key] = seq
        return max(seq - last - 1, 0) if last is not None else 0

    def _reject(self, cam: Camera, exc: Exception) -> None:
        cam.counters.add("rejected")
        self.last_rejected_time = time.perf_counter()
        self.get_logger().warning(f"rejected a frame on {self._input_topic(cam)}: {exc}",
                                  throttle_duration_sec=WARN_PERIOD_S)

    def _input_topic(self, cam: Camera) -> str:
        return self.resolve_topic_name(cam.topic)

    # ------------------------------------------------------------------ inference thread

    def _work(self) -> None:
        """One batch per round: the waiting frame of every camera that has one, in one forward pass."""
        while frames := self.slots.take():
            batch = []  # (camera, frame, RGB image)
            for name, frame in frames.items():
                cam = self.cameras[name]
                with self._counting_failures([cam]):
                    batch.append((cam, frame, image_to_rgb(frame.msg, int(self._param("max_input_pixels")))))
            keep_bias, results = float(self._param("keep_bias")), []
            with self._counting_failures([cam for cam, _, _ in batch]):
                confidence = any(self._wanted(cam.pub["confidence"], "publish_confidence") for cam, _, _ in batch)
                results = self.segmenter.segment_batch([image for _, _, image in batch], keep_bias=keep_bias,
                                                       confidence=confidence)
            for (cam, frame, image), result in zip(batch, results):
                with self._counting_failures([cam]):
                    self._publish(cam, frame, image, result, keep_bias)

    @contextmanager
    def _counting_failures(self, cameras: list[Camera]):
        """Run a step for these cameras' frames: a malformed frame is rejected, any other error fails the
        frames (a running node survives any bad frame); an error during shutdown is a requested stop."""
        try:
            yield
        except FrameError as exc:
            for cam in cameras:
                self._reject(cam, exc)
        except Exception as exc:  # noqa: BLE001
            if not self.context.ok():  # SIGINT/SIGTERM shut the context down under this frame: a requested stop
                return
            for cam in cameras:
                cam.counters.add("failed")
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.last_error_time = time.perf_counter()
            self.get_logger().error(f"inference failed: {self.last_error}", throttle_duration_sec=WARN_PERIOD_S)

    def _publish(self, cam: Camera, frame: Frame, image: np.ndarray, result: Segmentation, keep_bias: float) -> None:
        t_post = time.perf_counter()
        header = frame.msg.header
        self._publish_images(cam, header, image, result)
        counts = cam.counters.take_since_stats()
        cam.counters.add("processed")
        stats = self._stats(header, image, result, keep_bias, counts)
        stats.postprocess_ms = float(result.postprocess_ms + 1e3 * (time.perf_counter() - t_post))
        done = time.perf_counter()
        stats.total_ms = float(1e3 * (done - frame.received))
        cam.pub["stats"].publish(stats)
        cam.recent.append((done, stats.total_ms, result.tokens))

    def _wanted(self, publisher, switch: str) -> bool:
        return publisher.get_subscription_count() > 0 and bool(self._param(switch))

    def _publish_images(self, cam: Camera, header, image: np.ndarray, result: Segmentation) -> None:
        seg, pub = self.segmenter, cam.pub
        labels = result.labels
        if self._wanted(pub["mask"], "publish_mask"):
            pub["mask"].publish(array_to_image(labels, "mono8" if labels.dtype == np.uint8 else "mono16", header))
        if result.confidence is not None and self._wanted(pub["confidence"], "publish_confidence"):
            pub["confidence"].publish(array_to_image(result.confidence, "mono8", header))
        want_color = self._wanted(pub["mask_color"], "publish_mask_color")
        want_overlay = self._wanted(pub["overlay"], "publish_overlay")
        if want_color or want_overlay:
            color = colorize(labels, seg.palette)
            if want_color:
                pub["mask_color"].publish(array_to_image(color, "rgb8", header))
            if want_overlay:
                alpha = float(self._param("overlay_alpha"))
                overlay = cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)
                pub["overlay"].publish(array_to_image(overlay, "rgb8", header))
        if self._wanted(pub["clusters"], "publish_clusters"):
            if result.cluster_ids is None:  # plain ViT: nothing is merged
                clusters = image
            else:
                clusters = cluster_overlay(image, result.cluster_ids, alpha=float(self._param("cluster_alpha")),
                                           k=seg.k, input_shape=result.content_size, patch=seg.data.patch_size)
            pub["clusters"].publish(array_to_image(clusters, "rgb8", header))

    def _stats(self, header, image: np.ndarray, r: Segmentation, keep_bias: float,
               counts: dict[str, int]) -> SegmentationStats:
        # rclpy silently sends numpy scalars in float32 fields as 0.0: convert every value explicitly.
        h, w = image.shape[:2]
        return SegmentationStats(
            header=header, model_name=self.segmenter.name,
            image_width=int(w), image_height=int(h),
            network_width=int(r.network_size[1]), network_height=int(r.network_size[0]),
            patch_tokens=int(r.patch_tokens), tokens=int(r.tokens), clusters_used=int(r.clusters_used),
            kept_tokens=int(r.kept_tokens), token_keep_ratio=float(r.tokens / r.patch_tokens),
            keep_bias=float(keep_bias), preprocess_ms=float(r.preprocess_ms), inference_ms=float(r.inference_ms),
            frames_dropped=int(counts["dropped"]), frames_rejected=int(counts["rejected"]),
            class_names=list(self.segmenter.class_names),
            class_pixel_counts=[int(c) for c in r.class_pixels],
            unlabeled_pixels=int(h * w - int(r.class_pixels.sum())),
        )

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        seg = self.segmenter
        now = time.perf_counter()
        cams = list(self.cameras.values())
        counts = {cam.name: dict(cam.counters.total) for cam in cams}
        total = {k: sum(c[k] for c in counts.values()) for k in Counters.NAMES}
        fresh = {cam.name: [r for r in list(cam.recent) if now - r[0] < 5.0] for cam in cams}
        rates = {name: _rate(records) for name, records in fresh.items()}
        every = [r for records in fresh.values() for r in records]
        latencies = [r[1] for r in every]
        stale = [f"{self._input_topic(cam)} for {now - cam.last_frame_time:.1f} s" for cam in cams
                 if cam.last_frame_time is not None and now - cam.last_frame_time > float(self._param("stale_timeout"))]
        device = str(seg.device) if seg is not None else ""
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: segmentation", hardware_id=device)
        enabled = bool(self._param("enable"))
        if self.configure_error:
            status.level, status.message = DiagnosticStatus.ERROR, f"configure failed: {self.configure_error}"
        elif self.state_label != "active":
            status.level, status.message = DiagnosticStatus.OK, f"{self.state_label} (lifecycle)"
        elif now - self.last_error_time < STATUS_HOLD_S:
            status.level, status.message = DiagnosticStatus.ERROR, f"inference failed: {self.last_error}"
        elif not enabled:
            status.level, status.message = DiagnosticStatus.OK, "disabled"
        elif now - self.last_rejected_time < STATUS_HOLD_S:
            status.level = DiagnosticStatus.WARN
            status.message = f"malformed frames rejected ({total['rejected']} in all; see the node's log)"
        elif stale:
            status.level, status.message = DiagnosticStatus.WARN, f"stale input: no frame on {', '.join(stale)}"
        else:
            status.level, status.message = DiagnosticStatus.OK, "running" if every else "waiting for images"
        values = {
            "model": seg.name if seg is not None else str(self._param("model")), "device": device,
            "precision": str(self._param("precision")), "lifecycle_state": self.state_label,
            "backend": seg.backend if seg is not None else str(self._param("backend")),
            "enabled": str(enabled).lower(),
            "input_topic": ", ".join(self._input_topic(cam) for cam in cams), "rate_hz": f"{sum(rates.values()):.2f}",
            "latency_mean_ms": f"{np.mean(latencies):.1f}" if latencies else "",
            "latency_max_ms": f"{max(latencies):.1f}" if latencies else "",
            "tokens_mean": f"{np.mean([r[2] for r in every]):.1f}" if every else "",
            **{f"frames_{k}": str(v) for k, v in total.items()},
        }
        for cam in cams:  # several cameras: each one's topic, rate and counters too
            if cam.name:
                values[f"{cam.name}.input_topic"] = self._input_topic(cam)
                values[f"{cam.name}.rate_hz"] = f"{rates[cam.name]:.2f}"
                values.update({f"{cam.name}.frames_{k}": str(v) for k, v in counts[cam.name].items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(array)

    def close(self) -> None:
        """Stop the inference thread (after the batch in progress)."""
        self.slots.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
            self.worker = None


def _rate(records: list[tuple[float, float, int]]) -> float:
    """Frames per second over (done time, ...) records in time order."""
    span = records[-1][0] - records[0][0] if records else 0.0
    return (len(records) - 1) / span if span > 0 else 0.0


def _qos_kwargs(profile: QoSProfile) -> dict:
    return {"history": profile.history, "depth": profile.depth, "reliability": profile.reliability,
            "durability": profile.durability}


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); a model that cannot be loaded exits 2 with one line."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = SegmentNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                if not rclpy.ok():  # SIGINT/SIGTERM during start-up: a requested stop
                    return 0
                raise ClustViTError(node.configure_error or "configure failed (see the log above)")
            node.trigger_activate()
        rclpy.spin(node)
    except ClustViTError as exc:
        print(f"{NODE_NAME}: error: {exc}", file=sys.stderr)
        return 2
    except ParameterException as exc:  # a -p / params-file value of the wrong type or out of range
        reason = " ".join(str(exc).split())
        fix = ("write doubles with a decimal point, e.g. keep_bias:=1.0" if isinstance(exc, InvalidParameterTypeException)
               else "types, ranges and defaults: python -m clustvit_ros.params")
        print(f"{NODE_NAME}: error: {reason} ({fix})", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM while the node was starting: rclpy shut its context down under the
        # constructor, whose next rcl call failed. That is a requested stop, not an error.
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
