"""ROS 2 node: camera images in, ClustViT semantic segmentation out.

    python -m clustvit_ros.segment_node --ros-args -p model:=cwfid_k3_ip3 -r image:=/camera/image_raw

The node is thin: `clustvit_core.predictor.Segmenter` does all model work; this file only moves
frames between DDS and it. Frames are handed from the subscription callback to one inference
thread through a keep-latest slot (a newer frame replaces a waiting one, which is counted as
dropped), so the node never builds a backlog. Topics, parameters and message fields: README.md.

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
from dataclasses import dataclass

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
from clustvit_ros.params import BY_NAME, PARAMETERS, Param, check_value, provider_list

UNLABELED = {np.uint8: 255, np.uint16: 65535}  # mask value of pixels without a class, by mask dtype
WARN_PERIOD_S = 5.0  # throttle of per-frame warnings
RATE_WINDOW = 30  # frames over which /diagnostics reports rate and latency
STATUS_HOLD_S = 10.0  # /diagnostics stays WARN / ERROR this long after a rejected frame / failed inference


@dataclass
class Frame:
    msg: Image | CompressedImage
    received: float  # time.perf_counter() when the callback got it


class LatestFrame:
    """A one-slot mailbox between the subscription callback and the inference thread.

    put() replaces a frame still waiting (returns True: that frame was dropped); take() blocks until
    a frame is there or the slot is closed (then returns None)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def put(self, frame: Frame) -> bool:
        with self._cond:
            dropped = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return dropped

    def take(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            return None if self._closed else frame

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
        self.counters = Counters()
        self.slot = LatestFrame()
        self.last_sequence: dict[bytes | None, int] = {}  # publisher gid -> its last publication sequence number
        self.recent: deque[tuple[float, float, int]] = deque(maxlen=RATE_WINDOW)  # (done time, total ms, tokens)
        self.last_error = ""  # the latest inference failure, with its time (for /diagnostics)
        self.last_error_time = self.last_rejected_time = -float("inf")
        self.last_frame_time: float | None = None  # of the last frame that reached the callback
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
                            engine_cache=p("engine_cache") or None)
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

        # Reliable, depth 1: served to reliable (the tutorials' default) and best-effort subscribers alike,
        # and never a queue of stale frames; `qos_overrides./segment_node/mask.publisher.*` change it.
        overrides = QoSOverridingOptions.with_default_policies()
        out_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_mask, self.pub_confidence, self.pub_mask_color, self.pub_overlay, self.pub_clusters = (
            self.create_lifecycle_publisher(Image, endpoint.name, out_qos, qos_overriding_options=overrides)
            for endpoint in (api.MASK, api.CONFIDENCE, api.MASK_COLOR, api.OVERLAY, api.CLUSTERS))
        self.pub_stats = self.create_lifecycle_publisher(SegmentationStats, api.STATS.name, 10)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_label_info = self.create_lifecycle_publisher(LabelInfo, api.LABEL_INFO.name, latched)
        self.slot = LatestFrame()
        self.worker = threading.Thread(target=self._work, name="clustvit-inference", daemon=True)
        self.worker.start()
        self.state_label = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.pub_label_info.publish(self.label_info())
        image_qos = QoSProfile(**{**_qos_kwargs(qos_profile_sensor_data), "depth": 1})
        overrides = QoSOverridingOptions.with_default_policies()
        self.subscriptions_in = [self.create_subscription(Image, api.IMAGE_IN.name, self._on_image, image_qos,
                                                          qos_overriding_options=overrides)]
        if self._param("compressed_input"):
            self.subscriptions_in.append(self.create_subscription(
                CompressedImage, api.COMPRESSED_IN.name, self._on_image, image_qos, qos_overriding_options=overrides))
        self.last_frame_time = None  # no 'stale input' for the time the node was not listening
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
        self.slot.take(timeout=0)  # a frame still waiting is not processed after deactivate

    def _release(self) -> None:
        """Stop the inference thread (after the frame in progress), destroy the outputs, free the model."""
        self.close()
        for name in ("pub_mask", "pub_confidence", "pub_mask_color", "pub_overlay", "pub_clusters", "pub_stats",
                     "pub_label_info"):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
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

    def _on_image(self, msg, info) -> None:  # two parameters: rclpy then passes the MessageInfo
        received = time.perf_counter()
        self.last_frame_time = received
        self.counters.add("received")
        missed = self._missed_before(info)
        enabled = self._param("enable")
        if missed:
            self.counters.add("missed", missed)
            self.counters.add("dropped" if enabled else "skipped", missed)
        if not enabled:
            self.counters.add("skipped")
            return
        try:  # cheap checks here, so a bad frame never displaces a good one
            max_pixels = int(self._param("max_input_pixels"))
            if isinstance(msg, Image):
                check_image(msg, max_pixels)
            else:
                check_compressed(msg, max_pixels)
        except FrameError as exc:
            self._reject(exc)
            return
        if self.slot.put(Frame(msg, received)):
            self.counters.add("dropped")

    def _missed_before(self, info) -> int:
        """Frames of this frame's publisher that never reached the callback since its previous one
        (from the publication sequence numbers rmw reports; 0 where it reports none)."""
        seq = (info or {}).get("publication_sequence_number")
        if not seq:
            return 0
        gid = (info.get("publisher_gid") or {}).get("data")
        key = bytes(gid) if gid is not None else None
        last = self.last_sequence.get(key)
        self.last_sequence[key] = seq
        return max(seq - last - 1, 0) if last is not None else 0

    def _reject(self, exc: Exception) -> None:
        self.counters.add("rejected")
        self.last_rejected_time = time.perf_counter()
        self.get_logger().warning(f"rejected a frame on {self._input_topic()}: {exc}",
                                  throttle_duration_sec=WARN_PERIOD_S)

    def _input_topic(self) -> str:
        return self.resolve_topic_name(api.IMAGE_IN.name)

    # ------------------------------------------------------------------ inference thread

    def _work(self) -> None:
        while True:
            frame = self.slot.take()
            if frame is None:
                return
            try:
                self._process(frame)
            except FrameError as exc:
                self._reject(exc)
            except Exception as exc:  # noqa: BLE001 - a running node survives any bad frame
                if not self.context.ok():  # SIGINT/SIGTERM shut the context down under this frame: a requested stop
                    return
                self.counters.add("failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.last_error_time = time.perf_counter()
                self.get_logger().error(f"inference failed: {self.last_error}", throttle_duration_sec=WARN_PERIOD_S)

    def _process(self, frame: Frame) -> None:
        msg = frame.msg
        image = image_to_rgb(msg, int(self._param("max_input_pixels")))
        keep_bias = float(self._param("keep_bias"))
        result = self.segmenter(image, keep_bias=keep_bias,
                                confidence=self._wanted(self.pub_confidence, "publish_confidence"))
        t_post = time.perf_counter()
        self._publish_images(msg.header, image, result)
        counts = self.counters.take_since_stats()
        self.counters.add("processed")
        stats = self._stats(msg.header, image, result, keep_bias, counts)
        stats.postprocess_ms = float(result.postprocess_ms + 1e3 * (time.perf_counter() - t_post))
        done = time.perf_counter()
        stats.total_ms = float(1e3 * (done - frame.received))
        self.pub_stats.publish(stats)
        self.recent.append((done, stats.total_ms, result.tokens))

    def _wanted(self, publisher, switch: str) -> bool:
        return publisher.get_subscription_count() > 0 and bool(self._param(switch))

    def _publish_images(self, header, image: np.ndarray, result: Segmentation) -> None:
        seg = self.segmenter
        labels = result.labels
        if self._wanted(self.pub_mask, "publish_mask"):
            self.pub_mask.publish(array_to_image(labels, "mono8" if labels.dtype == np.uint8 else "mono16", header))
        if result.confidence is not None:
            self.pub_confidence.publish(array_to_image(result.confidence, "mono8", header))
        want_color = self._wanted(self.pub_mask_color, "publish_mask_color")
        want_overlay = self._wanted(self.pub_overlay, "publish_overlay")
        if want_color or want_overlay:
            color = colorize(labels, seg.palette)
            if want_color:
                self.pub_mask_color.publish(array_to_image(color, "rgb8", header))
            if want_overlay:
                alpha = float(self._param("overlay_alpha"))
                overlay = cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)
                self.pub_overlay.publish(array_to_image(overlay, "rgb8", header))
        if self._wanted(self.pub_clusters, "publish_clusters"):
            if result.cluster_ids is None:  # plain ViT: nothing is merged
                clusters = image
            else:
                clusters = cluster_overlay(image, result.cluster_ids, alpha=float(self._param("cluster_alpha")),
                                           k=seg.k, input_shape=result.content_size, patch=seg.data.patch_size)
            self.pub_clusters.publish(array_to_image(clusters, "rgb8", header))

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
        total = dict(self.counters.total)
        recent = list(self.recent)
        now = time.perf_counter()
        fresh = [r for r in recent if now - r[0] < 5.0]
        rate = (len(fresh) - 1) / (fresh[-1][0] - fresh[0][0]) if len(fresh) > 1 and fresh[-1][0] > fresh[0][0] else 0.0
        latencies = [r[1] for r in fresh]
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
        elif self.last_frame_time is not None and now - self.last_frame_time > float(self._param("stale_timeout")):
            status.level = DiagnosticStatus.WARN
            status.message = f"stale input: no frame on {self._input_topic()} for {now - self.last_frame_time:.1f} s"
        else:
            status.level, status.message = DiagnosticStatus.OK, "running" if fresh else "waiting for images"
        values = {
            "model": seg.name if seg is not None else str(self._param("model")), "device": device,
            "precision": str(self._param("precision")), "lifecycle_state": self.state_label,
            "backend": seg.backend if seg is not None else str(self._param("backend")),
            "enabled": str(enabled).lower(),
            "input_topic": self._input_topic(), "rate_hz": f"{rate:.2f}",
            "latency_mean_ms": f"{np.mean(latencies):.1f}" if latencies else "",
            "latency_max_ms": f"{max(latencies):.1f}" if latencies else "",
            "tokens_mean": f"{np.mean([r[2] for r in fresh]):.1f}" if fresh else "",
            **{f"frames_{k}": str(v) for k, v in total.items()},
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(array)

    def close(self) -> None:
        """Stop the inference thread (after the frame in progress)."""
        self.slot.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
            self.worker = None


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
