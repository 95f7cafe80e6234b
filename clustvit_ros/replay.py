"""Publish a rosbag2 bag's camera frames with rclpy at their recorded pace (a camera driver stand-in).

    python -m clustvit_ros.replay bags/cwfid                       # every image topic, recorded pace
    python -m clustvit_ros.replay bags/cwfid --rate 0 --reliable   # as fast as possible, nothing lost
    python -m clustvit_ros.replay bags/cwfid --topic /camera/image_raw --remap /camera/image_raw:=/cam/image --loop

Messages are re-published as the bag's raw CDR bytes (no decoding), header stamps unchanged, so an
evaluator can match predictions to the ground truth recorded with the same stamps. In-process use
(e.g. an evaluator thread with its own node):

    replay = BagReplay(node, "bags/cwfid", ["/camera/image_raw", "/labels"], reliable=True)
    replay.wait_for_subscribers(1, timeout=10.0)
    result = replay.run(rate=0.0, stop=stop_event)    # ReplayResult: messages published per topic
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import rclpy
from rclpy.exceptions import InvalidTopicNameException
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from clustvit_core.errors import InputError, cli_errors

from .bags import IMAGE_TYPES, read_messages, select_topics

PROG = "python -m clustvit_ros.replay"
NODE_NAME = "clustvit_replay"
PROGRESS_PERIOD_S = 5.0  # the CLI prints a progress line this often


def qos_profile(reliable: bool = False) -> QoSProfile:
    """Publisher QoS: sensor data (best effort, keep last 1, like a camera driver) or reliable keep last 10."""
    if reliable:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def message_class(msgtype: str) -> type:
    """The rclpy message class of a type name 'pkg/msg/Type' (e.g. sensor_msgs/msg/Image)."""
    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        raise InputError(f"message type {msgtype!r}: expected a ROS 2 type name 'package/msg/Type'")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        raise InputError(f"message type {msgtype!r}: no Python class {package}.{kind}.{name}; install the ROS 2 "
                         f"message package {package} (e.g. pip install ros-{package.replace('_', '-')})") from None


def parse_remap(text: str) -> tuple[str, str]:
    """'FROM:=TO' -> (FROM, TO)."""
    source, sep, target = text.partition(":=")
    if not (sep and source and target):
        raise InputError(f"--remap {text!r}: write it as FROM:=TO, e.g. /camera/image_raw:=/cam/image")
    return source, target


@dataclass
class ReplayResult:
    published: dict[str, int]  # output topic -> messages published
    seconds: float = 0.0  # from the first to the last publish
    loops: int = 0  # complete passes over the bag
    first_publish: float | None = field(default=None, repr=False)  # time.monotonic() of the first publish

    @property
    def messages(self) -> int:
        return sum(self.published.values())

    def rate_hz(self, topic: str) -> float:
        """Achieved publish rate on output `topic` (0 with fewer than two messages)."""
        count = self.published[topic]
        return (count - 1) / self.seconds if count > 1 and self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: messages per topic, duration and achieved rate."""
        topics = ", ".join(f"{t} {n} ({self.rate_hz(t):.1f} Hz)" for t, n in self.published.items())
        loops = f", {self.loops} loops" if self.loops > 1 else ""
        return f"{self.messages} messages in {self.seconds:.2f} s{loops}: {topics}"


class BagReplay:
    """Publishers on `node` for topics of a bag, and the loop that publishes its messages at their pace.

    Args:
        node: an rclpy node (its context must stay initialized while replaying).
        bag: rosbag2 bag folder.
        topics: bag topics to publish; None: every sensor_msgs Image and CompressedImage topic.
        remap: {bag topic: output topic}; other topics keep their names.
        reliable: reliable QoS keep last 10 instead of best effort keep last 1 (see qos_profile).
    Bag paths, topics and message types are checked here (InputError naming the bag or topic).
    """

    def __init__(self, node, bag: str | Path, topics: Sequence[str] | None = None, *,
                 remap: Mapping[str, str] | None = None, reliable: bool = False):
        self.bag = Path(bag)
        self.msgtypes = select_topics(self.bag, topics)  # bag topic -> msgtype
        remap = dict(remap or {})
        unknown = [t for t in remap if t not in self.msgtypes]
        if unknown:
            raise InputError(f"remap {', '.join(unknown)}: not a replayed topic; replayed: {', '.join(self.msgtypes)}")
        self.output_topics = {t: remap.get(t, t) for t in self.msgtypes}
        classes = {t: message_class(msgtype) for t, msgtype in self.msgtypes.items()}
        self.node = node
        self.publishers = {}
        try:
            for topic, output in self.output_topics.items():
                self.publishers[topic] = node.create_publisher(classes[topic], output, qos_profile(reliable))
        except InvalidTopicNameException as exc:
            self.destroy()
            raise InputError(f"topic {output!r} is not a valid ROS topic name ({str(exc).splitlines()[0]})") from None
        self.result = ReplayResult({output: 0 for output in self.output_topics.values()})

    def subscriber_count(self) -> int:
        """Subscriptions matched to the publishers, over all replayed topics."""
        return sum(p.get_subscription_count() for p in self.publishers.values())

    def wait_for_subscribers(self, count: int = 1, timeout: float = 10.0,
                             stop: threading.Event | None = None) -> bool:
        """Wait until `count` subscriptions (over all topics) have matched, at most `timeout` s or until
        `stop` is set; True if they have. Discovery needs no spinning."""
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout
        while self.subscriber_count() < count:
            if time.monotonic() >= deadline or stop.wait(0.05):
                return self.subscriber_count() >= count
        return True

    def run(self, rate: float = 1.0, *, loop: bool = False, stop: threading.Event | None = None,
            on_publish=None) -> ReplayResult:
        """Publish the bag's messages in bag-time order, `rate` times the recorded pace (0: as fast as
        possible), once or until `stop` is set with `loop`. `on_publish(result)` is called after each
        message. Returns (and keeps as self.result, updated live) the counts per output topic."""
        if rate < 0:
            raise InputError(f"rate {rate}: give a speed factor >= 0 (1 = recorded pace, 0 = as fast as possible)")
        stop = stop or threading.Event()
        result = self.result = ReplayResult({output: 0 for output in self.output_topics.values()})
        pass_start = time.monotonic()  # wall time of the first message of this pass
        while not stop.is_set():
            first_ns = last_ns = period_ns = None
            for message in read_messages(self.bag, list(self.msgtypes)):
                if first_ns is None:
                    first_ns = message.time_ns
                elif period_ns is None and message.time_ns > last_ns:
                    period_ns = message.time_ns - last_ns
                last_ns = message.time_ns
                if rate > 0:
                    delay = pass_start + (message.time_ns - first_ns) / 1e9 / rate - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                if stop.is_set():
                    break
                self._publish(message, result)
                if on_publish is not None:
                    on_publish(result)
            else:
                result.loops += 1
            if not loop or first_ns is None:
                break
            # the next pass starts one recorded frame period after this pass's last message
            pass_start += (last_ns - first_ns + (period_ns or 0)) / 1e9 / rate if rate > 0 else 0.0
        return result

    def _publish(self, message, result: ReplayResult) -> None:
        self.publishers[message.topic].publish(message.data)
        now = time.monotonic()
        if result.first_publish is None:
            result.first_publish = now
        result.seconds = now - result.first_publish
        result.published[self.output_topics[message.topic]] += 1

    def wait_for_acknowledgements(self, timeout: float = 5.0) -> bool:
        """With reliable QoS: wait (at most `timeout` s per topic) until every subscriber has
        acknowledged every message, so that exiting right after the last publish loses nothing.
        True at once with best effort."""
        from rclpy.duration import Duration

        return all(p.wait_for_all_acked(Duration(seconds=timeout)) for p in self.publishers.values())

    def destroy(self) -> None:
        """Destroy the publishers (the node stays)."""
        for publisher in self.publishers.values():
            self.node.destroy_publisher(publisher)
        self.publishers = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s BAG [options] [--ros-args ...]",
        description="Publish a rosbag2 bag's frames with rclpy (node clustvit_replay) at their recorded pace, as\n"
                    "the raw recorded messages (header stamps unchanged). Build a bag with clustvit_ros.make_bag.\n"
                    "Large images over best-effort QoS need the shared-memory Fast DDS profile: set\n"
                    "FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_shm.xml for this and the subscribing process.",
        epilog="examples:\n"
               f"  {PROG} bags/cwfid\n"
               f"  {PROG} bags/cwfid --rate 0 --reliable --wait-subscribers 2\n"
               f"  {PROG} bags/cwfid --topic /camera/image_raw --remap /camera/image_raw:=/cam/image --loop\n"
               f"  {PROG} bags/cwfid --ros-args -r __ns:=/robot1   # ROS arguments go last\n"
               "Ctrl-C (or SIGTERM) stops it cleanly and prints what was published.")
    parser.add_argument("bag", metavar="BAG", type=Path, help="rosbag2 bag folder (the one holding metadata.yaml)")
    parser.add_argument("--topic", action="append", metavar="TOPIC",
                        help=f"bag topic to publish; repeat for several (default: every {' and '.join(IMAGE_TYPES)} "
                             "topic in the bag, ground-truth labels included)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="speed factor: 1 = recorded pace (default), 2 = twice as fast, 0 = as fast as possible")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="publish bag topic FROM on topic TO; repeatable")
    parser.add_argument("--loop", action="store_true", help="start over at the end until stopped")
    parser.add_argument("--reliable", action="store_true",
                        help="reliable QoS, keep last 10 (default: best effort, keep last 1, like a camera driver); "
                             "subscribers with best-effort QoS still receive it")
    parser.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                        help="before publishing, wait until N subscriptions (over all published topics) have "
                             "matched (default 1; 0 = start at once)")
    parser.add_argument("--wait-timeout", type=float, default=10.0, metavar="S",
                        help="give up waiting for subscribers after S seconds and publish anyway (default 10)")
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="S",
                        help="wait S more seconds before the first frame (e.g. for a subscriber's model to load)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ("rate", "wait_subscribers", "wait_timeout", "start_delay"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 0")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []  # for rclpy, e.g. -r __ns:=/robot
    args = build_parser().parse_args(argv[: len(argv) - len(ros_args)])
    with cli_errors(PROG):
        _check_args(args)
        remap = dict(parse_remap(r) for r in args.remap)
        select_topics(args.bag, args.topic)  # bag and topic mistakes fail here, before ROS starts
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # stop cleanly like Ctrl-C
        node = replay = None
        try:
            rclpy.init(args=[PROG, *ros_args], signal_handler_options=SignalHandlerOptions.NO)
            node = rclpy.create_node(NODE_NAME)
            replay = BagReplay(node, args.bag, args.topic, remap=remap, reliable=args.reliable)
            _replay(replay, args)
        except KeyboardInterrupt:
            if replay is not None:
                print(f"replay: stopped; published {replay.result.summary()}", flush=True)
        finally:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def _replay(replay: BagReplay, args: argparse.Namespace) -> None:
    topics = ", ".join(f"{t} -> {o}" if t != o else t for t, o in replay.output_topics.items())
    if args.wait_subscribers > 0:
        print(f"replay: {args.bag}: waiting up to {args.wait_timeout:g} s for {args.wait_subscribers} "
              f"subscriber(s) on {topics}", flush=True)
        if not replay.wait_for_subscribers(args.wait_subscribers, args.wait_timeout):
            print(f"{PROG}: warning: {replay.subscriber_count()} of {args.wait_subscribers} subscriber(s) after "
                  f"{args.wait_timeout:g} s; publishing anyway", file=sys.stderr, flush=True)
    time.sleep(args.start_delay)
    print(f"replay: publishing {topics} at {'full speed' if args.rate == 0 else f'{args.rate:g}x recorded pace'}"
          f"{', looping' if args.loop else ''}", flush=True)
    next_report = [time.monotonic() + PROGRESS_PERIOD_S]

    def report(result: ReplayResult) -> None:
        if time.monotonic() >= next_report[0]:
            next_report[0] += PROGRESS_PERIOD_S
            print(f"replay: {result.summary()}", flush=True)

    result = replay.run(args.rate, loop=args.loop, on_publish=report)
    if not replay.wait_for_acknowledgements():
        print(f"{PROG}: warning: not every subscriber acknowledged the last messages within 5 s", file=sys.stderr)
    print(f"replay: done; published {result.summary()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
