"""Bag tools: clustvit_ros.bags (write/read rosbag2 without ROS), make_bag and replay (rclpy).

The bag tests need only `rosbags`; the replay tests need rclpy (they skip without it) and one of them
runs the replay CLI as a subprocess publishing over DDS into a subscriber in this process.
"""
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from clustvit_core.data import cwfid
from clustvit_core.data.synthetic import SyntheticScenes, make_scene
from clustvit_core.errors import InputError
from clustvit_ros import bags, images, make_bag
from ros_env import rclpy_context, ros_env, start_ros_process, stop_ros_process, wait_for

# rclpy's message type support imports lark, which imports deprecated modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

START_NS = 1_763_000_000_500_000_000
RATE = 20.0  # frames per second of the test bags: stamps 50 ms apart


def scene_frames(num: int, size=(48, 64), labels_every: int = 1):
    """`num` small synthetic (rgb [H, W, 3], labels [H, W]) frames; labels None unless i % labels_every == 0."""
    frames = [make_scene("agri", i, size) for i in range(num)]
    return [(rgb, labels if i % labels_every == 0 else None) for i, (rgb, labels) in enumerate(frames)]


def stamps(num: int) -> list[int]:
    return [START_NS + round(i * 1e9 / RATE) for i in range(num)]


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    """A 4-frame raw rgb8 bag with labels (path, frames)."""
    frames = scene_frames(4)
    path = tmp_path_factory.mktemp("bags") / "small"
    bags.write_image_bag(path, frames, rate=RATE, start_ns=START_NS)
    return path, frames


# ------------------------------------------------------------------------------ write / read round trips

@pytest.mark.parametrize("storage,compressed,encoding", [
    ("sqlite3", None, "rgb8"), ("mcap", None, "bgr8"), ("sqlite3", "png", "rgb8"), ("mcap", "jpeg", "rgb8")])
def test_round_trip(tmp_path, storage, compressed, encoding):
    frames = scene_frames(3)
    path = tmp_path / "bag"
    count = bags.write_image_bag(path, frames, topic="/cam/image", gt_topic="/gt", rate=RATE, frame_id="cam0",
                                 storage=storage, encoding=encoding, compressed=compressed, start_ns=START_NS)
    assert count == 3
    image_type = bags.COMPRESSED_TYPE if compressed else bags.IMAGE_TYPE
    assert bags.list_topics(path) == {"/cam/image": (image_type, 3), "/gt": (bags.IMAGE_TYPE, 3)}
    assert (path / "metadata.yaml").is_file()
    assert list((path).glob("*.mcap" if storage == "mcap" else "*.db3"))

    # receive times equal header stamps; image and label of a frame share them
    messages = list(bags.read_messages(path, ["/cam/image", "/gt"]))
    assert [m.time_ns for m in messages] == sorted(m.time_ns for m in messages)
    assert sorted(m.time_ns for m in messages if m.topic == "/cam/image") == stamps(3)
    assert sorted(m.time_ns for m in messages if m.topic == "/gt") == stamps(3)

    images = list(bags.read_images(path, "/cam/image"))
    assert [stamp for stamp, _ in images] == stamps(3)
    for (_, image), (rgb, _) in zip(images, frames):
        assert image.shape == rgb.shape and image.dtype == np.uint8
        if compressed == "jpeg":
            assert np.abs(image.astype(int) - rgb).mean() < 6  # lossy, but the same picture in the same channel order
        else:
            np.testing.assert_array_equal(image, rgb)
    labels = bags.read_label_images(path, "/gt")
    assert list(labels) == stamps(3)
    for stamp, (_, expected) in zip(stamps(3), frames):
        np.testing.assert_array_equal(labels[stamp], expected)


def test_header_fields_and_formats(small_bag, tmp_path):
    path, frames = small_bag
    with bags.open_bag(path) as reader:
        raw = next(c for c in reader.connections if c.topic == "/camera/image_raw")
        message = reader.deserialize(next(reader.messages([raw]))[2], raw.msgtype)
    h, w = frames[0][0].shape[:2]
    assert (message.header.frame_id, message.encoding, message.height, message.width, message.step) == \
        ("camera", "rgb8", h, w, 3 * w)
    assert bags.stamp_ns(message.header) == START_NS

    bags.write_image_bag(tmp_path / "c", frames[:1], compressed="jpeg", encoding="bgr8")
    with bags.open_bag(tmp_path / "c") as reader:
        message = reader.deserialize(next(reader.messages())[2], bags.COMPRESSED_TYPE)
    assert message.format == "bgr8; jpeg compressed bgr8"  # image_transport's compressed format string


def test_labels_only_where_given(tmp_path):
    bags.write_image_bag(tmp_path / "some", scene_frames(4, labels_every=2), rate=RATE, start_ns=START_NS)
    assert bags.list_topics(tmp_path / "some")["/labels"].count == 2
    assert list(bags.read_label_images(tmp_path / "some")) == stamps(4)[::2]
    bags.write_image_bag(tmp_path / "none", [(rgb, None) for rgb, _ in scene_frames(2)])
    assert list(bags.list_topics(tmp_path / "none")) == ["/camera/image_raw"]


def test_decode_image_handles_row_padding_and_channel_orders():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), np.uint8)  # step 12 > 3 pixels * 3 bytes
    padded[:, :9] = rgb[..., ::-1].reshape(2, 9)
    message = SimpleNamespace(encoding="bgr8", height=2, width=3, step=12, is_bigendian=0, data=padded.tobytes())
    np.testing.assert_array_equal(images.decode_image(message), rgb)
    rgba = np.dstack([rgb, np.full((2, 3), 7, np.uint8)])
    message = SimpleNamespace(encoding="rgba8", height=2, width=3, step=12, is_bigendian=0, data=rgba.tobytes())
    np.testing.assert_array_equal(images.decode_image(message), rgb)
    with pytest.raises(InputError, match="16UC1"):
        images.decode_image(SimpleNamespace(encoding="16UC1", height=1, width=1, step=2, is_bigendian=0, data=b"\0\0"))


def mono16_message(labels: np.ndarray, bigendian: bool = False, pad: int = 0):
    """A duck-typed mono16 sensor_msgs/Image of `labels` (uint16 [H, W]) with `pad` bytes after each row."""
    h, w = labels.shape
    rows = labels.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(h, 2 * w)
    rows = np.concatenate([rows, np.full((h, pad), 0xCD, np.uint8)], axis=1)
    return SimpleNamespace(encoding="mono16", height=h, width=w, step=2 * w + pad, is_bigendian=int(bigendian),
                           data=rows.tobytes())


@pytest.mark.parametrize("bigendian,pad", [(False, 0), (True, 0), (False, 6)])
def test_decode_image_keeps_mono16_class_ids(bigendian, pad):
    """The node publishes ~/mask as mono16 for > 255 classes: decoding keeps the class ids (no 8-bit scaling)."""
    labels = (np.arange(4 * 7, dtype=np.uint16) * 11).reshape(4, 7)  # ids 0..297, as a 300-class model gives
    labels[0, 0] = 65535  # unlabeled
    out = images.decode_image(mono16_message(labels, bigendian, pad))
    assert out.dtype == np.uint16 and out.shape == (4, 7)
    np.testing.assert_array_equal(out, labels)


def test_recorded_mono16_masks_read_as_class_ids(tmp_path):
    """A bag holding the node's mono16 ~/mask (e.g. recorded with `ros2 bag record`) reads back as uint16 ids."""
    from rosbags.rosbag2 import Writer

    labels = (np.arange(4 * 7, dtype=np.uint16) * 11).reshape(4, 7)
    store = bags.typestore()
    mask = store.types[bags.IMAGE_TYPE](header=bags._header(START_NS, "cam"), height=4, width=7, encoding="mono16",
                                        is_bigendian=0, step=14, data=labels.astype("<u2").view(np.uint8).reshape(-1))
    with Writer(tmp_path / "masks", version=bags.BAG_VERSION) as writer:
        connection = writer.add_connection("/segment_node/mask", bags.IMAGE_TYPE, typestore=store)
        writer.write(connection, START_NS, store.serialize_cdr(mask, bags.IMAGE_TYPE))
    masks = bags.read_label_images(tmp_path / "masks", "/segment_node/mask")
    assert list(masks) == [START_NS] and masks[START_NS].dtype == np.uint16
    np.testing.assert_array_equal(masks[START_NS], labels)


def test_write_refuses_existing_path_and_bad_frames(small_bag, tmp_path):
    path, frames = small_bag
    with pytest.raises(InputError, match="already exists"):
        bags.write_image_bag(path, frames)
    rgb, labels = frames[0]
    with pytest.raises(InputError, match=r"frame 1: labels must be uint8 \[H, W\]"):
        bags.write_image_bag(tmp_path / "bad", [(rgb, labels), (rgb, labels[:-1])])
    assert not (tmp_path / "bad").exists()  # a failed write leaves no half bag behind
    with pytest.raises(InputError, match=r"uint8 RGB \[H, W, 3\]"):
        bags.write_image_bag(tmp_path / "gray", [(labels, None)])
    with pytest.raises(InputError, match="storage 'rosbag1'"):
        bags.write_image_bag(tmp_path / "x", frames, storage="rosbag1")


def test_read_errors_name_the_bag_and_the_fix(small_bag, tmp_path):
    path, _ = small_bag
    with pytest.raises(InputError, match="bag not found"):
        bags.list_topics(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a readable rosbag2 bag.*metadata.yaml"):
        bags.list_topics(tmp_path / "empty")
    with pytest.raises(InputError, match=r"topic /nope not in the bag; its topics: /camera/image_raw \(sensor_msgs"):
        bags.read_messages(path, ["/nope"])
    with pytest.raises(InputError, match="colour images, not mono8"):
        bags.read_label_images(path, "/camera/image_raw")


# ------------------------------------------------------------------------------------------ make_bag

def test_make_bag_from_folders(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    frames = scene_frames(3)
    for i, (rgb, label_map) in enumerate(frames):
        cv2.imwrite(str(images / f"f{i}.png"), rgb[..., ::-1])
        label_map = label_map.copy()
        label_map[0, 0] = 255  # unlabeled pixels survive
        cv2.imwrite(str(labels / f"f{i}.png"), label_map)
    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--images", str(images), "--labels", str(labels), "--rate", "5"]) == 0
    line = capsys.readouterr().out.strip()
    assert "3 frames 64x48" in line and str(out) in line and "/labels" in line
    for (_, image), (rgb, _) in zip(bags.read_images(out, "/camera/image_raw"), frames):
        np.testing.assert_array_equal(image, rgb)
    label_maps = list(bags.read_label_images(out).values())
    assert [m[0, 0] for m in label_maps] == [255] * 3
    np.testing.assert_array_equal(label_maps[1][1:], frames[1][1][1:])
    assert np.diff(list(bags.read_label_images(out))).tolist() == [200_000_000] * 2  # 5 Hz

    # resizing: images bilinear, labels nearest (no new class ids); --no-labels drops the topic
    make_bag.main([str(tmp_path / "small"), "--images", str(images), "--labels", str(labels), "--size", "32x24",
                   "--num", "2", "--compressed", "png", "--storage", "mcap"])
    label_maps = list(bags.read_label_images(tmp_path / "small").values())
    assert len(label_maps) == 2 and label_maps[0].shape == (24, 32)
    assert set(np.unique(label_maps[0])) <= set(np.unique(frames[0][1])) | {255}
    make_bag.main([str(tmp_path / "nolabels"), "--images", str(images), "--no-labels"])
    assert list(bags.list_topics(tmp_path / "nolabels")) == ["/camera/image_raw"]


def test_make_bag_synthetic(tmp_path, capsys):
    out = tmp_path / "bag"
    make_bag.main([str(out), "--synthetic", "underwater", "--num", "2", "--size", "64x32", "--seed", "3",
                   "--topic", "/cam", "--gt-topic", "/gt", "--storage", "mcap"])
    assert "2 frames 64x32" in capsys.readouterr().out
    expected = SyntheticScenes("underwater", 2, (32, 64), seed=3)
    for i, (_, image) in enumerate(bags.read_images(out, "/cam")):
        np.testing.assert_array_equal(image, expected[i][0])
    for i, labels in enumerate(bags.read_label_images(out, "/gt").values()):
        np.testing.assert_array_equal(labels, expected[i][1])


@pytest.mark.skipif(not cwfid.default_root().is_dir(), reason=f"CWFID not found at {cwfid.default_root()}")
@pytest.mark.filterwarnings("ignore:.*listed in train and test")
def test_make_bag_from_dataset(tmp_path, capsys):
    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--dataset", "cwfid:test", "--num", "2", "--size", "160x120"]) == 0
    assert "2 frames 160x120" in capsys.readouterr().out
    assert bags.list_topics(out) == {"/camera/image_raw": (bags.IMAGE_TYPE, 2), "/labels": (bags.IMAGE_TYPE, 2)}
    labels = list(bags.read_label_images(out).values())
    assert labels[0].shape == (120, 160) and set(np.unique(labels[0])) <= {0, 1, 2, 255}


def cli_error(main, argv, capsys) -> str:
    """The one stderr line of a CLI that must fail with exit code 2."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_make_bag_errors(small_bag, tmp_path, capsys):
    path, _ = small_bag
    err = cli_error(make_bag.main, [str(tmp_path / "b"), "--images", str(tmp_path / "nope")], capsys)
    assert err.startswith(make_bag.PROG + ": error:") and "nope: folder not found" in err
    err = cli_error(make_bag.main, [str(path), "--synthetic", "agri", "--num", "1"], capsys)
    assert "already exists" in err
    err = cli_error(make_bag.main, [str(tmp_path / "b"), "--dataset", "nosuch:test"], capsys)
    assert "unknown dataset 'nosuch'" in err and "cwfid" in err
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((16, 16, 3), np.uint8))
    err = cli_error(make_bag.main, [str(tmp_path / "b"), "--images", str(tmp_path / "imgs"),
                                    "--labels", str(tmp_path / "imgs2")], capsys)
    assert "imgs2: folder not found" in err
    err = cli_error(make_bag.main, [str(tmp_path / "b"), "--images", str(tmp_path / "imgs"), "--seed", "1"], capsys)
    assert "--seed applies to --synthetic only" in err
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ replay (ROS)

def test_bag_bytes_are_rclpy_cdr(small_bag):
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    path, frames = small_bag
    message = next(bags.read_messages(path, ["/camera/image_raw"]))
    image = deserialize_message(message.data, Image)
    assert bags.stamp_ns(image.header) == START_NS
    np.testing.assert_array_equal(images.decode_image(image), frames[0][0])
    back = bags.typestore().deserialize_cdr(serialize_message(image), bags.IMAGE_TYPE)
    np.testing.assert_array_equal(images.decode_image(back), frames[0][0])


def test_replay_errors(small_bag, tmp_path, capsys):
    replay = pytest.importorskip("clustvit_ros.replay")
    path, _ = small_bag
    err = cli_error(replay.main, [str(path), "--topic", "/nope"], capsys)
    assert err.startswith(replay.PROG + ": error:") and "/nope not in the bag" in err and "/labels" in err
    err = cli_error(replay.main, [str(tmp_path / "missing")], capsys)
    assert "missing: bag not found" in err
    err = cli_error(replay.main, [str(path), "--remap", "/camera/image_raw"], capsys)
    assert "FROM:=TO" in err
    err = cli_error(replay.main, [str(path), "--rate", "-1"], capsys)
    assert "--rate -1.0: must be >= 0" in err


class Collector:
    """Subscriptions (reliable, deep queue) on `topics` in `node`, decoding what arrives: {topic: [(stamp, array)]}."""

    def __init__(self, node, topics):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.received = {topic: [] for topic in topics}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [node.create_subscription(Image, topic, self._callback(topic), qos) for topic in topics]

    def _callback(self, topic):
        return lambda msg: self.received[topic].append((bags.stamp_ns(msg.header), images.decode_image(msg)))

    def count(self) -> int:
        return sum(map(len, self.received.values()))


def check_frames(received, frames):
    """Images and labels arrived in order with the bag's stamps and pixels."""
    assert [s for s, _ in received["images"]] == stamps(len(frames))
    assert [s for s, _ in received["labels"]] == stamps(len(frames))
    for (_, image), (_, labels), (rgb, expected) in zip(received["images"], received["labels"], frames):
        np.testing.assert_array_equal(image, rgb)
        np.testing.assert_array_equal(labels, expected)


def test_replay_in_process_with_remap_and_stop(small_bag, tmp_path):
    pytest.importorskip("rclpy")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from clustvit_ros.replay import BagReplay

    path, frames = small_bag
    with rclpy_context(ros_env(tmp_path / "log")) as context:
        node = rclpy.create_node("bag_test_observer", context=context)
        replay_node = rclpy.create_node("clustvit_replay", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        collector = Collector(node, ["/cam", "/gt"])
        replay = BagReplay(replay_node, path, ["/camera/image_raw", "/labels"],
                           remap={"/camera/image_raw": "/cam", "/labels": "/gt"}, reliable=True)
        assert replay.wait_for_subscribers(2, timeout=10.0)
        result = replay.run(rate=0.0)
        assert result.published == {"/cam": 4, "/gt": 4} and result.loops == 1
        assert wait_for(lambda: collector.count() == 8, executor)
        check_frames({"images": collector.received["/cam"], "labels": collector.received["/gt"]}, frames)

        # looping at the recorded pace (20 Hz) until a stop event from another thread
        stop = threading.Event()
        looping = threading.Thread(target=replay.run, kwargs=dict(rate=1.0, loop=True, stop=stop))
        looping.start()
        assert wait_for(lambda: replay.result.published["/cam"] >= 6, timeout=5.0)  # a second pass has begun
        stop.set()
        looping.join(timeout=2.0)
        assert not looping.is_alive()
        assert replay.result.loops >= 1
        assert 10 < replay.result.rate_hz("/cam") < 60  # recorded 20 Hz (loose: a shared, noisy machine)
        replay.destroy()


def test_replay_cli_over_dds(small_bag, tmp_path):
    """The replay CLI in its own process publishes every frame of the bag, stamps and pixels intact."""
    pytest.importorskip("rclpy")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    path, frames = small_bag
    env = ros_env(tmp_path / "log")
    with rclpy_context(env) as context:
        node = rclpy.create_node("bag_test_observer", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        collector = Collector(node, ["/camera/image_raw", "/labels"])
        proc = start_ros_process([sys.executable, "-m", "clustvit_ros.replay", str(path), "--rate", "0",
                                  "--reliable", "--wait-subscribers", "2"], env)
        try:
            assert wait_for(lambda: collector.count() == 8, executor, timeout=30.0), collector.count()
            check_frames({"images": collector.received["/camera/image_raw"],
                          "labels": collector.received["/labels"]}, frames)
            out, _ = proc.communicate(timeout=10.0)
        finally:
            code, rest = stop_ros_process(proc)
    output = out + rest
    assert code == 0, output
    assert "done; published 8 messages" in output and "/camera/image_raw 4" in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_replay_cli_stops_cleanly(small_bag, tmp_path, signum):
    pytest.importorskip("rclpy")
    path, _ = small_bag
    proc = start_ros_process([sys.executable, "-m", "clustvit_ros.replay", str(path), "--loop",
                              "--wait-subscribers", "0", "--topic", "/camera/image_raw"], ros_env(tmp_path / "log"))
    lines = []
    try:
        for line in proc.stdout:  # wait until it publishes
            lines.append(line)
            if line.startswith("replay: publishing"):
                break
        proc.send_signal(signum)
        lines.append(proc.communicate(timeout=10.0)[0])
    except subprocess.TimeoutExpired:
        pass
    finally:
        code, rest = stop_ros_process(proc)
    output = "".join(lines) + rest
    assert code == 0, output
    assert "replay: stopped; published" in output and "Traceback" not in output, output
