"""Evaluate the live segmentation node on a rosbag2 recording, through real DDS.

    python -m clustvit_ros.evaluate_bag BAG --model synthetic_agri_k3_ip3 --gt-topic /labels --json out.json

Starts `segment_node` as a separate process in a private ROS domain (localhost only, the package's
shared-memory Fast DDS profile), replays the bag's image topic into it at the recorded pace, and
collects its ~/stats (and ~/mask for mIoU against label images in the bag, matched by header stamp).
Reports frames in / processed / dropped (keep-latest: replaced by a newer frame in the node's slot or
already in its depth-1 input queue) / rejected (malformed) / lost (never known to the node at all),
latency percentiles (node: image callback -> stats publish), fps and token counts.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clustvit_core.errors import InputError, cli_errors
from clustvit_ros import interface as api
from clustvit_ros.bags import COMPRESSED_TYPE, list_topics, read_label_images, select_topics, stamp_ns
from clustvit_ros.interface import NODE_NAME
from clustvit_ros.launch_args import config_file
from clustvit_core.readme import check_section, command_line, replace_section
from clustvit_ros.params import add_options, ros_arguments, typed_values

PROG = "python -m clustvit_ros.evaluate_bag"
DEFAULT_TOPIC = "/camera/image_raw"  # make_bag's default
NODE_OPTIONS = ("weights", "backend", "providers", "device", "precision", "input_size", "resize_mode", "keep_bias",
                "threads")  # node parameters as options
DIAGNOSTICS_PERIOD = 0.2  # s: the node's cumulative counters arrive soon after the last frame


@dataclass
class Collected:
    """What the evaluator received from the node."""

    stats: list = field(default_factory=list)  # (receive time, SegmentationStats)
    diagnostics: dict[str, str] = field(default_factory=dict)  # latest values of the node's status
    diagnostics_time: float = 0.0
    confusion: np.ndarray | None = None  # [C, C] over masks matched to ground truth
    frames_scored: int = 0
    saved: list[str] = field(default_factory=list)


def private_environment(domain_id: int | None = None, base: dict | None = None) -> dict[str, str]:
    """Environment for the node and this process: a random ROS domain (unless given), discovery on
    this host only, the shared-memory Fast DDS profile (full-size images over best effort), logs in
    a temporary folder when neither ROS_LOG_DIR nor HOME is set."""
    env = dict(os.environ if base is None else base)
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.SystemRandom().randint(1, 101))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_file("fastdds_shm.xml")))
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if "ROS_LOG_DIR" not in env and "HOME" not in env:
        env["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="clustvit_ros_log_")
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def node_command(model: str, topic: str, msgtype: str, params: dict | None = None, extra: list[str] = (),
                 reliable: bool = False) -> list[str]:
    """The segment_node command line reading `topic` (an Image or CompressedImage topic), with `model` and
    the node parameters `params` ({name: value}, see clustvit_ros.params; ConfigError if one is invalid).
    `reliable`: the node's input subscription reliable too (its standard QoS override), so that with a
    reliable publisher no frame is lost in transport, not even one sent while discovery completes."""
    values = {"model": model, **(params or {}), "diagnostics_period": DIAGNOSTICS_PERIOD}
    if msgtype == COMPRESSED_TYPE:
        values["compressed_input"] = True
        remaps = [f"image:={topic}/_unused_raw", f"image/compressed:={topic}"]
    else:
        remaps = [f"image:={topic}"]
    cmd = [sys.executable, "-m", "clustvit_ros.segment_node", "--ros-args", *ros_arguments(values)]
    if reliable:
        cmd += ["-p", f"qos_overrides.{topic}.subscription.reliability:=reliable"]
    for remap in remaps:
        cmd += ["-r", remap]
    return cmd + list(extra)


def _percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(collected: Collected, frames_in: int, class_names: list[str], replay_seconds: float) -> dict:
    """The report: counters (from the node's cumulative /diagnostics), latency, fps, tokens, mIoU."""
    from clustvit_core.metrics import mean_iou, nan_to_none, per_class_iou, pixel_accuracy

    stats = [s for _, s in collected.stats]
    times = [t for t, _ in collected.stats]
    diag = collected.diagnostics
    total = lambda key, fallback: int(diag[key]) if key in diag else fallback  # noqa: E731
    processed = total("frames_processed", len(stats))
    received = total("frames_received", processed)
    latency = [s.total_ms for s in stats]
    result = {
        "model": stats[0].model_name if stats else None,
        "frames_in": frames_in,
        "frames_received": received,
        "frames_processed": processed,
        "frames_dropped": total("frames_dropped", sum(s.frames_dropped for s in stats)),
        "frames_rejected": total("frames_rejected", sum(s.frames_rejected for s in stats)),
        "frames_failed": total("frames_failed", 0),
        # never known to the node: not even as a gap in the sequence numbers (e.g. before its first frame)
        "frames_lost": max(frames_in - received - total("frames_missed", 0), 0),
        "replay_seconds": replay_seconds,
        "input_fps": frames_in / replay_seconds if replay_seconds > 0 else None,
        "fps": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None,
        "latency_ms": {"p50": _percentile(latency, 50), "p95": _percentile(latency, 95),
                       "p99": _percentile(latency, 99), "mean": float(np.mean(latency)) if latency else None},
        "inference_ms_mean": float(np.mean([s.inference_ms for s in stats])) if stats else None,
        "tokens_mean": float(np.mean([s.tokens for s in stats])) if stats else None,
        "patch_tokens": int(stats[0].patch_tokens) if stats else None,
        "token_keep_ratio_mean": float(np.mean([s.token_keep_ratio for s in stats])) if stats else None,
        "per_frame": [{"stamp_ns": stamp_ns(s.header), "total_ms": float(s.total_ms),
                       "inference_ms": float(s.inference_ms), "tokens": int(s.tokens)} for s in stats],
        "miou": None, "pixel_accuracy": None, "per_class_iou": None, "frames_scored": collected.frames_scored,
        "saved_images": collected.saved,
    }
    if collected.confusion is not None and collected.frames_scored:
        conf = collected.confusion
        result["miou"] = nan_to_none(mean_iou(conf))
        result["pixel_accuracy"] = nan_to_none(pixel_accuracy(conf))
        result["per_class_iou"] = {name: nan_to_none(v) for name, v in zip(class_names, per_class_iou(conf))}
    return result


def fmt_number(value, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def format_summary(r: dict) -> str:
    """A few lines for the terminal."""
    lat = r["latency_ms"]
    lines = [
        f"model {r['model']}: {r['frames_in']} frames in, {r['frames_processed']} processed, "
        f"{r['frames_dropped']} dropped (keep-latest), {r['frames_rejected']} rejected, {r['frames_lost']} lost",
        f"input {fmt_number(r['input_fps'])} fps, output {fmt_number(r['fps'])} fps; latency p50 {fmt_number(lat['p50'])} / "
        f"p95 {fmt_number(lat['p95'])} / p99 {fmt_number(lat['p99'])} ms (inference mean {fmt_number(r['inference_ms_mean'])} ms)",
        f"tokens {fmt_number(r['tokens_mean'])} of {r['patch_tokens']} "
        f"({fmt_number(None if r['token_keep_ratio_mean'] is None else 100 * r['token_keep_ratio_mean'], '.0f', ' %')})",
    ]
    if r["miou"] is not None:
        per_class = ", ".join(f"{k} {fmt_number(None if v is None else 100 * v)}" for k, v in r["per_class_iou"].items())
        lines.append(f"mIoU {100 * r['miou']:.1f} % over {r['frames_scored']} frames ({per_class})")
    return "\n".join(lines)


def format_markdown(r: dict, setup: str, command: str) -> str:
    """A run as a README section: the command, a setup line, one table row, the per-class IoU."""
    lat = r["latency_ms"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"`{command}`", "", setup, "",
        "| frames in | processed | dropped | rejected | lost | output fps | latency p50 / p95 / p99 ms "
        "| inference ms | tokens (of patch tokens) | mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['frames_in']} | {r['frames_processed']} | {r['frames_dropped']} | {r['frames_rejected']} "
        f"| {r['frames_lost']} | {fmt_number(r['fps'])} | {fmt_number(lat['p50'], '.0f')} / "
        f"{fmt_number(lat['p95'], '.0f')} / {fmt_number(lat['p99'], '.0f')} | {fmt_number(r['inference_ms_mean'], '.0f')} "
        f"| {fmt_number(r['tokens_mean'], '.0f')} ({r['patch_tokens']}) | {pct(r['miou'])} |",
    ]
    if r["per_class_iou"]:
        lines += ["", "Per-class IoU: " + ", ".join(f"{name} {pct(v)}" for name, v in r["per_class_iou"].items()) + "."]
    return "\n".join(lines)


def save_plot(result: dict, path: str | Path) -> Path:
    """Per-frame latency and tokens of the run (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = result["per_frame"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, constrained_layout=True)
    x = np.arange(len(frames))
    ax1.plot(x, [f["total_ms"] for f in frames], label="total (callback -> stats)")
    ax1.plot(x, [f["inference_ms"] for f in frames], label="inference")
    ax1.set_ylabel("ms")
    ax1.legend(loc="upper right")
    ax1.set_title(f"{result['model']}: {result['frames_processed']} of {result['frames_in']} frames processed")
    ax2.plot(x, [f["tokens"] for f in frames], color="tab:green")
    if result["patch_tokens"]:
        ax2.axhline(result["patch_tokens"], color="grey", linestyle="--", label="patch tokens (no merging)")
        ax2.legend(loc="upper right")
    ax2.set_ylabel("tokens after merging")
    ax2.set_xlabel("processed frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class NodeProcess:
    """segment_node as a child process; its output goes to a log file (shown when it fails)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True)

    def failure(self) -> str | None:
        """None while running; else why it stopped (its last output line)."""
        if self.proc.poll() is None:
            return None
        self._log.flush()
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit code {self.proc.returncode}"

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a clean rclpy shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def evaluate_bag(bag: str | Path, model: str, *, topic: str = DEFAULT_TOPIC, gt_topic: str | None = None,
                 rate: float = 1.0, reliable: bool = False, save_dir: str | Path | None = None, num_saved: int = 4,
                 domain_id: int | None = None, node_timeout: float = 120.0, settle: float = 2.0,
                 progress: bool = True, **node_params) -> dict:
    """Run the node on a bag and return the report (see `summarize`). `node_params` are the node's
    parameters (e.g. device="cpu", keep_bias=-1.0; clustvit_ros.params). Raises InputError for a bad bag,
    topic, or a node that fails to start (with its last output line), ConfigError for a bad parameter."""
    bag = Path(bag)
    node_params = typed_values(node_params)
    topics = list_topics(bag)
    msgtype = select_topics(bag, [topic])[topic]
    frames_in = topics[topic].count
    labels = read_label_images(bag, gt_topic) if gt_topic else {}
    if gt_topic and not labels:
        raise InputError(f"{bag}: no label images on {gt_topic}")
    save_stamps = _save_stamps(bag, topic, num_saved) if save_dir else set()

    env = private_environment(domain_id)
    with tempfile.TemporaryDirectory(prefix="clustvit_evaluate_") as tmp:
        node = NodeProcess(node_command(model, topic, msgtype, node_params, reliable=reliable), env,
                           Path(tmp) / "segment_node.log")
        try:
            collected, seconds, class_names = _run(env, bag, topic, node, labels, save_stamps, save_dir, rate,
                                                   reliable, node_timeout, settle, frames_in, progress)
        finally:
            code = node.stop()
    if code not in (0, None):
        print(f"{PROG}: warning: segment_node exited with code {code}", file=sys.stderr)
    return summarize(collected, frames_in, class_names, seconds)


def _save_stamps(bag: Path, topic: str, n: int) -> set[int]:
    """Header stamps of `n` frames spread evenly over the bag (the frames whose images are saved)."""
    from clustvit_ros.bags import read_images

    stamps = [stamp for stamp, _ in read_images(bag, topic)]
    if not stamps or n <= 0:
        return set()
    picks = np.linspace(0, len(stamps) - 1, min(n, len(stamps))).round().astype(int)
    return {stamps[i] for i in picks}


def _run(env, bag, topic, node: NodeProcess, labels, save_stamps, save_dir, rate, reliable, node_timeout,
         settle, frames_in, progress):
    """In this process: an rclpy node collecting the outputs and a replay thread feeding the node."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from vision_msgs.msg import LabelInfo

    from clustvit_msgs.msg import SegmentationStats
    from clustvit_ros.replay import BagReplay

    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # Fast DDS reads its profile from the environment of this process too
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]), signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    try:
        observer = rclpy.create_node("clustvit_evaluate_bag", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(observer)
        collected = Collected()
        prefix = f"/{NODE_NAME}/"
        info: dict = {}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        observer.create_subscription(LabelInfo, prefix + api.LABEL_INFO.name[2:],
                                     lambda m: info.update(class_names=label_names(m)), latched)
        observer.create_subscription(SegmentationStats, prefix + api.STATS.name[2:],
                                     lambda m: collected.stats.append((time.monotonic(), m)), 100)

        def on_diagnostics(msg):
            for status in msg.status:
                if status.name.startswith(f"/{NODE_NAME}:"):
                    collected.diagnostics = {kv.key: kv.value for kv in status.values}
                    collected.diagnostics_time = time.monotonic()

        observer.create_subscription(DiagnosticArray, api.DIAGNOSTICS.name, on_diagnostics, 10)
        sensor = QoSProfile(**{"depth": 10, "reliability": qos_profile_sensor_data.reliability,
                               "history": qos_profile_sensor_data.history})
        if labels:
            observer.create_subscription(Image, prefix + api.MASK.name[2:],
                                         lambda m: _score(m, labels, info, collected), sensor)
        if save_dir:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            for out in (api.OVERLAY, api.CLUSTERS):
                name = out.name[2:]
                observer.create_subscription(
                    Image, prefix + name, lambda m, name=name: _save(m, name, save_stamps, save_dir, collected), sensor)

        replay_node = rclpy.create_node("clustvit_replay", context=context)
        replay = BagReplay(replay_node, bag, [topic], reliable=reliable)
        deadline = time.monotonic() + node_timeout
        while not (replay.subscriber_count() > 0 and observer.count_publishers(prefix + api.STATS.name[2:]) > 0
                   and info):
            if (why := node.failure()) is not None:
                raise InputError(f"segment_node stopped: {why}")
            if time.monotonic() > deadline:
                raise InputError(f"segment_node did not subscribe to {topic} within {node_timeout:.0f} s "
                                 f"(log: {node.log_path})")
            executor.spin_once(timeout_sec=0.1)
        for _ in range(10):  # let the output subscriptions match before the first frame
            executor.spin_once(timeout_sec=0.05)
        result_box = {}
        thread = threading.Thread(target=lambda: result_box.update(r=replay.run(rate, stop=stop)), daemon=True)
        bar = _progress(frames_in, progress)
        thread.start()
        while thread.is_alive():
            executor.spin_once(timeout_sec=0.05)
            bar.update(len(collected.stats) - bar.n)
            if (why := node.failure()) is not None:
                raise InputError(f"segment_node stopped: {why}")
        # settle: until no new stats for `settle` s and a diagnostics message newer than the last stats
        last_count, quiet_since = -1, time.monotonic()
        while True:
            executor.spin_once(timeout_sec=0.05)
            if len(collected.stats) != last_count:
                last_count, quiet_since = len(collected.stats), time.monotonic()
            quiet = time.monotonic() - quiet_since
            if quiet > settle and collected.diagnostics_time > quiet_since + 0.2:
                break
            if quiet > settle + 10:
                break
        bar.update(len(collected.stats) - bar.n)
        bar.close()
        replay.destroy()
        seconds = result_box["r"].seconds if "r" in result_box else 0.0
        return collected, seconds, list(info.get("class_names", []))
    finally:
        stop.set()
        context.try_shutdown()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="frames processed", unit="frame", disable=not enabled, leave=False)


def label_names(msg) -> list[str]:
    """Class names by id from a vision_msgs/LabelInfo (ids 0..n-1; the UNLABELED entry left out)."""
    names = {c.class_id: c.class_name for c in msg.class_map if c.class_name != "UNLABELED"}
    return [names[i] for i in range(len(names))]


def _score(msg, labels: dict, info: dict, collected: Collected) -> None:
    """Add one mask's confusion against the ground truth with the same stamp."""
    from clustvit_core.metrics import confusion_matrix

    from clustvit_ros.images import decode_image

    gt = labels.get(stamp_ns(msg.header))
    if gt is None or not info:
        return
    pred = decode_image(msg)
    if pred.shape != gt.shape:
        return
    conf = confusion_matrix(pred, gt, len(info["class_names"]))
    collected.confusion = conf if collected.confusion is None else collected.confusion + conf
    collected.frames_scored += 1


def _save(msg, name: str, stamps: set[int], out_dir, collected: Collected) -> None:
    import cv2

    from clustvit_ros.images import decode_image

    stamp = stamp_ns(msg.header)
    if stamp not in stamps:
        return
    path = Path(out_dir) / f"{name}_{stamp}.png"
    cv2.imwrite(str(path), cv2.cvtColor(decode_image(msg), cv2.COLOR_RGB2BGR))
    collected.saved.append(str(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        epilog="examples:\n"
               f"  {PROG} bags/synthetic --model synthetic_agri_k3_ip3 --gt-topic /labels --plot out/eval.png\n"
               f"  {PROG} bags/cwfid --model cwfid_k3_ip3 --weights my.safetensors --device cuda --rate 2\n"
               "Make a bag: python -m clustvit_ros.make_bag --help. Exit code 2 on a bad bag, topic or model.")
    parser.add_argument("bag", metavar="BAG", help="rosbag2 bag folder (sqlite3 or mcap)")
    parser.add_argument("--model", required=True, help="registry name or model YAML (the node's `model`)")
    add_options(parser, NODE_OPTIONS)
    parser.add_argument("--update-readme", metavar="README",
                        help="also write the result (command, setup, table) into the file's marked section")
    parser.add_argument("--readme-section", default="ros-bag", metavar="SECTION",
                        help="marker name for --update-readme: <!-- BEGIN benchmark:SECTION --> (default ros-bag)")
    parser.add_argument("--topic", default=DEFAULT_TOPIC,
                        help=f"Image or CompressedImage topic in the bag (default {DEFAULT_TOPIC})")
    parser.add_argument("--gt-topic", help="topic of mono8 label images (255 = unlabeled) for mIoU, matched by stamp")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="replay speed: 1 = recorded pace (default), 2 = twice as fast, 0 = as fast as possible")
    parser.add_argument("--reliable", action="store_true",
                        help="replay with reliable QoS and make the node's input subscription reliable: no frame "
                        "lost in transport (default: best effort, like a camera driver)")
    parser.add_argument("--json", metavar="PATH", help="write the report (all numbers, per-frame list) as JSON")
    parser.add_argument("--plot", metavar="PNG", help="plot latency and tokens per frame")
    parser.add_argument("--save-images", metavar="DIR", help="write ~/overlay and ~/clusters PNGs of a few frames")
    parser.add_argument("--num-images", type=int, default=4, help="frames to save with --save-images (default 4)")
    parser.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID of the run (default: a random private one)")
    parser.add_argument("--node-timeout", type=float, default=120.0,
                        help="seconds to wait for the node to load its model and subscribe (default 120)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args, argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    with cli_errors(PROG):
        if args.update_readme:  # before the measurement, not after it
            check_section(args.update_readme, args.readme_section)
        if args.rate < 0:
            raise InputError(f"--rate {args.rate}: must be >= 0")
        if args.domain_id is not None and not 0 <= args.domain_id <= 232:
            raise InputError(f"--domain-id {args.domain_id}: must be in 0..232 (0..101 is safest)")
        result = evaluate_bag(
            args.bag, args.model, topic=args.topic, gt_topic=args.gt_topic, rate=args.rate, reliable=args.reliable,
            save_dir=args.save_images, num_saved=args.num_images, domain_id=args.domain_id,
            node_timeout=args.node_timeout, progress=not args.quiet,
            **{name: getattr(args, name) for name in NODE_OPTIONS})
        print(format_summary(result))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2))
            print(f"report: {args.json}")
        if args.plot:
            print(f"plot: {save_plot(result, args.plot)}")
        if result["saved_images"]:
            print(f"images: {len(result['saved_images'])} PNGs in {args.save_images}")
        if args.update_readme:
            import platform

            setup = (f"{result['frames_in']} frames of {Path(args.bag).name} at {fmt_number(result['input_fps'])} fps, "
                     f"model {result['model']}, backend {args.backend}"
                     + (f" ({args.providers})" if args.backend != "torch" else "")
                     + f", resize_mode {args.resize_mode}, {platform.machine()}, device {args.device}, "
                     f"threads {args.threads or 'default'}")
            replace_section(args.update_readme, args.readme_section,
                            format_markdown(result, setup, command_line("clustvit_ros.evaluate_bag", argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
