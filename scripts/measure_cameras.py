"""Several cameras, one model: one segment_node serving two cameras (`image_topics`, one batched forward
pass) vs two segment_nodes with one camera each, measured in one run on this machine.

    python scripts/measure_cameras.py --update-readme README.md

Each setup gets the same synthetic field frames (640x480 by default) on /cam0/image and /cam1/image, RATE Hz
each and published together (as synchronized cameras), from this process over DDS (a private domain,
the shared-memory profile), and a consumer subscribed to every camera's ~/.../mask and ~/.../stats. After
a warm-up (until every camera's frames come back) it measures for SECONDS: frames processed per second
(stats messages of all cameras), latency (each node's own: image callback -> stats), the CPU time of
the node processes (user + system, /proc/PID/stat, over the window) and their resident memory (the sum
of their VmRSS in /proc, at the end of the window).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file: import the working tree's packages
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from clustvit_core.errors import InputError, cli_errors  # noqa: E402
from clustvit_core.readme import replace_section  # noqa: E402
from clustvit_ros.interface import NODE_NAME  # noqa: E402
from clustvit_ros.params import add_options, camera_name, ros_arguments  # noqa: E402

PROG = "python scripts/measure_cameras.py"
SECTION = "cameras"
TOPICS = ("/cam0/image", "/cam1/image")
START_TIMEOUT_S = 120.0


@dataclass
class Node:
    """A node process of a setup and the output topics of its cameras ({input topic: output prefix})."""

    cmd: list[str]
    outputs: dict[str, str]
    proc: subprocess.Popen | None = None
    log: Path | None = None


@dataclass
class Result:
    setup: str
    nodes: int
    seconds: float = 0.0
    sent: int = 0
    stats: list = field(default_factory=list)  # SegmentationStats received in the window
    rss_mib: float = 0.0
    cpu_s: float = 0.0  # CPU time of the node processes in the window

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def fps(self) -> float:
        return len(self.stats) / self.seconds if self.seconds else 0.0


def setups(model: str, device: str) -> dict[str, list[Node]]:
    """Setup name -> its node processes: one node with both cameras, or one node per camera."""
    node = [sys.executable, "-m", "clustvit_ros.segment_node", "--ros-args"]
    params = {"model": model, "device": device}
    one = Node(node + ros_arguments({**params, "image_topics": ",".join(TOPICS)}),
               {t: f"/{NODE_NAME}/{camera_name(t)}/" for t in TOPICS})
    each = [Node(node + ros_arguments(params) + ["-r", f"__node:={NODE_NAME}_{camera_name(t)}", "-r", f"image:={t}"],
                 {t: f"/{NODE_NAME}_{camera_name(t)}/"}) for t in TOPICS]
    return {"1 node, 2 cameras (one batch)": [one], "2 nodes, 1 camera each": each}


def rss_mib(pids) -> float:
    """The summed resident memory of processes `pids` [MiB], from /proc/PID/status."""
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def cpu_seconds(pids) -> float:
    """The summed CPU time (user + system) of processes `pids` so far [s], from /proc/PID/stat."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of the whole line
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, nodes: list[Node], env: dict, args, frames: list[np.ndarray], log_dir: Path) -> Result:
    """Start the setup's nodes, feed them, measure, stop them."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from clustvit_msgs.msg import SegmentationStats
    from clustvit_ros.images import array_to_image

    for i, node in enumerate(nodes):
        node.log = log_dir / f"{name.split()[0]}_{i}.log"
        with open(node.log, "w") as out:
            node.proc = subprocess.Popen(node.cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    result = Result(name, len(nodes))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]), signal_handler_options=SignalHandlerOptions.NO)
    try:
        observer = rclpy.create_node("clustvit_measure_cameras", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(observer)
        camera = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)  # as a camera driver's
        publishers = {t: observer.create_publisher(Image, t, camera) for t in TOPICS}
        got: dict[str, list] = {t: [] for t in TOPICS}
        for node in nodes:
            for topic, prefix in node.outputs.items():
                observer.create_subscription(SegmentationStats, prefix + "stats",
                                             lambda m, t=topic: got[t].append((time.monotonic(), m)), 100)
                observer.create_subscription(Image, prefix + "mask", lambda m: None, camera)

        def spin_until(deadline: float, done=lambda: False) -> None:
            while time.monotonic() < deadline and not done():
                for node in nodes:
                    if node.proc.poll() is not None:
                        raise InputError(f"segment_node exited ({node.proc.returncode}); log: {node.log}")
                executor.spin_once(timeout_sec=0.005)

        spin_until(time.monotonic() + START_TIMEOUT_S, lambda: all(
            observer.count_subscribers(t) > 0 for t in TOPICS) and all(
            observer.count_publishers(p + "stats") > 0 for n in nodes for p in n.outputs.values()))
        sent = 0

        def send_until(end: float, done=lambda: False) -> None:
            nonlocal sent
            next_send = time.monotonic()
            while time.monotonic() < end and not done():
                for topic in TOPICS:  # the same instant: synchronized cameras
                    header = observer.get_clock().now().to_msg()
                    msg = array_to_image(frames[sent % len(frames)], "rgb8")
                    msg.header.stamp, msg.header.frame_id = header, topic
                    publishers[topic].publish(msg)
                sent += 1
                next_send += 1.0 / args.rate
                spin_until(next_send)

        # warm-up: until every camera's frames come back (output subscriptions matched, caches warm)
        warm = time.monotonic() + START_TIMEOUT_S
        send_until(warm, lambda: all(len(v) >= 5 for v in got.values()))
        if not all(got.values()):
            raise InputError(f"{name}: no output within {START_TIMEOUT_S:.0f} s; logs in {log_dir}")
        spin_until(time.monotonic() + 1.0)
        for v in got.values():
            v.clear()
        pids = [n.proc.pid for n in nodes]
        sent, start, cpu_start = 0, time.monotonic(), cpu_seconds(pids)
        send_until(start + args.seconds)
        end = time.monotonic()
        result.seconds, result.sent = end - start, sent * len(TOPICS)
        result.cpu_s, result.rss_mib = cpu_seconds(pids) - cpu_start, rss_mib(pids)
        spin_until(end + 1.0)  # the last frames' stats (not counted: they arrive after the window)
        result.stats = [m for v in got.values() for t, m in v if t <= end]
        return result
    finally:
        context.try_shutdown()
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(2)  # SIGINT: a clean rclpy shutdown
        for node in nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(15)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()


def table(results: list[Result]) -> str:
    rows = ["| setup | node processes | frames sent | processed | processed/s | latency mean / p95 ms "
            "| inference ms / forward pass | CPU (nodes, % of a core) | memory (RSS, sum) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        latency = [m.total_ms for m in r.stats]
        forward = {(m.preprocess_ms, m.inference_ms) for m in r.stats}  # a batch's frames share them
        lat = f"{np.mean(latency):.0f} / {np.percentile(latency, 95):.0f}" if latency else "n/a"
        inf = f"{np.mean([i for _, i in forward]):.0f}" if forward else "n/a"
        rows.append(f"| {r.setup} | {r.nodes} | {r.sent} | {len(r.stats)} | {r.fps:.1f} | {lat} | {inf} "
                    f"| {r.cpu_percent:.0f} % | {r.rss_mib:.0f} MiB |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    intro, _, details = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(prog=PROG, description=f"{intro}\n\n{details}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic_agri_k3_ip3", help="model (default the shipped demo model)")
    add_options(parser, ("device",))
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second per camera (default 10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per setup (default 20)")
    parser.add_argument("--size", default="640x480", help="frame size WxH (default 640x480)")
    parser.add_argument("--update-readme", metavar="README",
                        help=f"also write the table into the file's <!-- BEGIN benchmark:{SECTION} --> section")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with cli_errors(PROG):
        return run(args, argv)


def run(args, argv) -> int:
    import platform

    import torch

    from clustvit_core.data.synthetic import make_scene
    from clustvit_ros.evaluate_bag import private_environment
    from clustvit_ros.make_bag import parse_size

    if args.rate <= 0 or args.seconds <= 0:
        raise InputError(f"--rate {args.rate} --seconds {args.seconds}: both must be > 0")
    w, h = parse_size(args.size)
    frames = [make_scene("agri", 1000 + i, (h, w))[0] for i in range(10)]
    results = []
    with tempfile.TemporaryDirectory(prefix="clustvit_cameras_") as tmp:
        for name, nodes in setups(args.model, args.device).items():
            env = private_environment()  # a fresh domain per setup
            env["ROS_LOG_DIR"] = tmp
            os.environ.update({k: v for k, v in env.items() if k != "ROS_DOMAIN_ID"})  # this process's DDS too
            print(f"{name}: running ({args.seconds:g} s) ...", flush=True)
            results.append(measure(name, nodes, env, args, frames, Path(tmp)))
    command = " ".join([PROG, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    text = "\n".join([
        f"`{command}`", "",
        f"2 cameras x {args.rate:g} Hz, synthetic agri frames {w}x{h}, model {args.model}, device {args.device}, "
        f"{torch.get_num_threads()} CPU threads ({platform.machine()}) per node process, {args.seconds:g} s per setup",
        "", table(results)])
    print(text)
    if args.update_readme:
        replace_section(args.update_readme, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
