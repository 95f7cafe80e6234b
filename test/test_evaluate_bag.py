"""evaluate_bag and the demo end to end: bag written -> node started -> replay over DDS -> report."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ros_env import REPO, ros_env

pytest.importorskip("rclpy")
pytest.importorskip("clustvit_msgs.msg")
# rclpy's type support imports lark (deprecated modules); cv_bridge 1.13 calls ndarray.tostring()
pytestmark = [pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:tostring:DeprecationWarning")]

from clustvit_core.data.synthetic import SyntheticScenes  # noqa: E402
from clustvit_core.errors import ConfigError  # noqa: E402
from clustvit_ros.bags import COMPRESSED_TYPE, write_image_bag  # noqa: E402
from clustvit_ros.evaluate_bag import (Collected, evaluate_bag, format_summary, node_command, save_plot,  # noqa: E402
                                       summarize)

KEYS = ("frames_in", "frames_processed", "frames_dropped", "frames_rejected", "latency_ms", "tokens_mean", "miou")


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    """12 test-split synthetic scenes, 320x240 at 20 Hz, with labels."""
    path = tmp_path_factory.mktemp("bags") / "synthetic"
    write_image_bag(path, SyntheticScenes("agri", 12, (240, 320), seed=2), rate=20.0)
    return path


def run_cli(args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "clustvit_ros.evaluate_bag", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_evaluate_bag_reports_every_frame(small_bag, tmp_path, monkeypatch):
    for key, value in ros_env(tmp_path / "log").items():
        monkeypatch.setenv(key, value)
    # reliable end to end: a best-effort frame may be lost in transport on a loaded machine (seen in CI: the
    # node never learns of a frame sent while discovery completes), which is not what this test is about
    result = evaluate_bag(small_bag, "synthetic_agri_k3_ip3", gt_topic="/labels", device="cpu", rate=1.0,
                          reliable=True, save_dir=tmp_path / "images", num_saved=2, progress=False)
    for key in KEYS:
        assert key in result
    assert result["frames_in"] == 12
    accounted = (result["frames_processed"] + result["frames_dropped"] + result["frames_rejected"]
                 + result["frames_lost"] + result["frames_failed"])
    assert accounted == 12
    assert result["frames_processed"] >= 1 and result["frames_rejected"] == 0 and result["frames_lost"] == 0
    assert result["frames_scored"] == result["frames_processed"]  # every mask matched its label by stamp
    assert 0.2 < result["miou"] <= 1.0  # the demo model scores ~0.47 on these scenes; a broken match ~0
    assert 0 < result["tokens_mean"] < result["patch_tokens"] == 256
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert len(result["per_frame"]) == result["frames_processed"]
    assert sorted(p.split("/")[-1].split("_")[0] for p in result["saved_images"]) in (
        ["clusters", "clusters", "overlay", "overlay"], ["clusters", "overlay"])  # a dropped frame saves none
    assert "mIoU" in format_summary(result)
    assert save_plot(result, tmp_path / "plot.png").stat().st_size > 1000
    json.dumps(result)  # the report is JSON-serializable


def test_summarize_falls_back_to_stats_without_diagnostics():
    class Stats:
        def __init__(self, dropped):
            self.model_name, self.frames_dropped, self.frames_rejected = "m", dropped, 0
            self.total_ms, self.inference_ms, self.tokens, self.patch_tokens, self.token_keep_ratio = 10.0, 5.0, 64, 256, 0.25

            class H:
                class stamp:
                    sec, nanosec = 1, 0
            self.header = H

    collected = Collected(stats=[(0.0, Stats(0)), (1.0, Stats(3))])
    result = summarize(collected, frames_in=6, class_names=["a"], replay_seconds=1.0)
    assert result["frames_processed"] == 2 and result["frames_dropped"] == 3 and result["frames_lost"] == 4
    assert result["fps"] == pytest.approx(1.0) and result["miou"] is None


def test_node_command_sets_typed_parameters():
    cmd = node_command("m", "/cam", COMPRESSED_TYPE, {"keep_bias": 1, "device": "cpu"})
    args = cmd[cmd.index("--ros-args") + 1:]
    for arg in ('model:="m"', "keep_bias:=1.0", 'device:="cpu"', "compressed_input:=true", "image/compressed:=/cam"):
        assert arg in args, (arg, args)
    assert not any("qos_overrides" in a for a in args)
    reliable = node_command("m", "/cam", COMPRESSED_TYPE, reliable=True)
    assert "qos_overrides./cam.subscription.reliability:=reliable" in reliable
    with pytest.raises(ConfigError, match="precision"):
        evaluate_bag("no_bag", "m", precision="int8")


def test_mono16_masks_are_scored():
    """A > 255-class model's mono16 ~/mask (as the node encodes it) is scored against its labels by stamp."""
    from std_msgs.msg import Header

    from clustvit_ros.evaluate_bag import _score
    from clustvit_ros.images import array_to_image

    labels = (np.arange(6 * 8, dtype=np.uint16) * 6).reshape(6, 8)  # ids 0..282 of 300 classes
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 5
    mask = array_to_image(labels, "mono16", header)
    collected = Collected()
    info = {"class_names": [f"c{i}" for i in range(300)]}
    _score(mask, {1_700_000_000_000_000_005: labels}, info, collected)
    assert collected.frames_scored == 1
    assert collected.confusion.shape == (300, 300) and np.trace(collected.confusion) == labels.size


def test_cli_writes_json_and_rejects_bad_input(small_bag, tmp_path):
    env = ros_env(tmp_path / "log")
    out = tmp_path / "report.json"
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- BEGIN benchmark:bag -->\nold\n<!-- END benchmark:bag -->\nb\n")
    proc = run_cli([str(small_bag), "--model", "synthetic_agri_k3_ip3", "--device", "cpu", "--rate", "0",
                    "--reliable", "--json", str(out), "--quiet", "--resize-mode", "letterbox",
                    "--update-readme", str(readme), "--readme-section", "bag"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    section = readme.read_text()
    assert "`python -m clustvit_ros.evaluate_bag " in section and "| frames in |" in section and "old" not in section
    assert "resize_mode letterbox" in section
    report = json.loads(out.read_text())
    assert report["frames_in"] == 12 and report["miou"] is None  # no --gt-topic: no mIoU
    # as fast as possible: the node's depth-1 input queue overwrites frames before its callback sees
    # them ("lost"), the callback's keep-latest slot drops more ("dropped"); all are accounted for
    assert report["frames_processed"] >= 1
    assert report["frames_processed"] + report["frames_dropped"] + report["frames_lost"] == 12

    bad = run_cli([str(tmp_path / "missing"), "--model", "synthetic_agri_k3_ip3"], env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "missing" in bad.stderr

    bad_model = run_cli([str(small_bag), "--model", "no_such_model", "--quiet"], env)
    assert bad_model.returncode == 2 and "Traceback" not in bad_model.stderr
    assert "no_such_model" in bad_model.stderr.strip().splitlines()[-1]


def test_demo_runs_end_to_end(tmp_path):
    env = ros_env(tmp_path / "log")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "clustvit_ros.demo", "--frames", "6", "--size", "320x240",
                           "--device", "cpu", "--out", str(out), "--quiet"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mIoU" in proc.stdout and "tokens" in proc.stdout
    from clustvit_core.devices import native_bf16_cpu
    assert f"precision {'bf16' if native_bf16_cpu() else 'fp32'})" in proc.stdout  # the demo's default
    report = json.loads((out / "report.json").read_text())
    assert report["frames_in"] == 6 and report["frames_processed"] >= 1
    assert (out / "frames.png").is_file() and list((out / "images").glob("overlay_*.png"))
    assert np.isfinite(report["latency_ms"]["p50"])


def test_demo_on_the_onnxruntime_backend(tmp_path):
    """--backend onnxruntime: the shipped weights exported (and checked) to OUT/MODEL.onnx, the node runs that file;
    the same report, and the README markdown names the backend."""
    pytest.importorskip("onnxruntime")
    env = ros_env(tmp_path / "log")
    out, readme = tmp_path / "demo", tmp_path / "README.md"
    readme.write_text("<!-- BEGIN benchmark:ros-demo -->\n<!-- END benchmark:ros-demo -->\n")
    proc = subprocess.run([sys.executable, "-m", "clustvit_ros.demo", "--frames", "4", "--size", "320x240",
                           "--backend", "onnxruntime", "--out", str(out), "--quiet", "--update-readme", str(readme)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "onnxruntime, providers cpu, precision fp32" in proc.stdout and "mIoU" in proc.stdout
    assert (out / "synthetic_agri_k3_ip3.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["frames_processed"] >= 1 and report["tokens_mean"] < report["patch_tokens"]
    assert "backend onnxruntime (cpu), precision fp32" in readme.read_text()


def test_demo_providers_without_onnxruntime_backend_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clustvit_ros.demo", "--providers", "cuda", "--out", str(tmp_path / "d")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "python -m clustvit_ros.demo: error: --providers cuda: providers are for --backend onnxruntime"]
