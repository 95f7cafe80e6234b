"""Tests of the metrics (clustvit_core.metrics), the evaluator (clustvit_core.evaluate) and its figures."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clustvit_core as cc
from clustvit_core import evaluate as ev
from clustvit_core.data import Sample
from clustvit_core.data.synthetic import SyntheticScenes
from clustvit_core.errors import ConfigError, InputError
from clustvit_core.metrics import (
    SizeRecall, confusion_matrix, mean_iou, object_recalls, per_class_accuracy, per_class_iou, pixel_accuracy,
    size_bucket,
)
from clustvit_core.visualize import cluster_map, cluster_overlay, colorize
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
TINY_SET = ["embed_dim=64", "depth=4", "num_heads=2", "patch_size=16", "img_size=64", "cluster_hidden=32", "ip=1"]


# ------------------------------------------------------------------------------------------ metrics

def test_confusion_matrix_iou_and_accuracy_by_hand():
    target = np.array([[0, 0, 1, 255], [0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 0], [0, 0, 1, 2]])  # class 2 only on an ignored pixel
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    iou = per_class_iou(conf)
    assert iou[0] == pytest.approx(2 / 4) and iou[1] == pytest.approx(2 / 4) and math.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx(0.5)  # the NaN class is left out
    assert pixel_accuracy(conf) == pytest.approx(4 / 6)
    acc = per_class_accuracy(conf)
    assert acc[0] == pytest.approx(2 / 3) and math.isnan(acc[2])
    # a class predicted but absent from the ground truth counts with IoU 0
    conf2 = confusion_matrix(np.array([[2, 0]]), np.array([[0, 0]]), 3)
    assert per_class_iou(conf2)[2] == 0.0 and mean_iou(conf2) == pytest.approx((0.5 + 0.0) / 2)
    # accumulation into an existing matrix; torch inputs work too
    total = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 3, out=conf.copy())
    assert total.tolist() == (2 * conf).tolist()
    with pytest.raises(InputError, match="class id 5"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 5), 3)


def test_size_buckets_boundaries():
    assert size_bucket(0.0499) == "small" and size_bucket(0.05) == "medium"
    assert size_bucket(0.1499) == "medium" and size_bucket(0.15) == "large"
    assert size_bucket(0.2999) == "large" and size_bucket(0.30) == "huge" and size_bucket(1.0) == "huge"


def hand_drawn_scene():
    """100 x 100: a 4 % square and a 9 % square of class 1, a 20 % rectangle of class 2, background 0 (67 %)."""
    target = np.zeros((100, 100), np.uint8)
    target[0:20, 0:20] = 1  # 400 px = 4 %  -> small
    target[60:90, 0:30] = 1  # 900 px = 9 % -> medium
    target[10:50, 40:90] = 2  # 2000 px = 20 % -> large
    pred = target.copy()
    pred[0:20, 0:10] = 0  # half of the small square missed: recall 0.5
    pred[60:90, 0:30] = 2  # the medium square entirely wrong: recall 0
    pred[10:20, 40:90] = 1  # 500 of 2000 rectangle pixels wrong: recall 0.75
    return pred, target


def test_size_stratified_recall_on_hand_drawn_objects():
    pred, target = hand_drawn_scene()
    objects = {(o.class_id, o.bucket): o for o in object_recalls(pred, target)}
    assert objects[(1, "small")].area_fraction == pytest.approx(0.04) and objects[(1, "small")].recall == 0.5
    assert objects[(1, "medium")].pixels == 900 and objects[(1, "medium")].recall == 0.0
    assert objects[(2, "large")].area_fraction == pytest.approx(0.20) and objects[(2, "large")].recall == 0.75
    background = objects[(0, "huge")]  # background counts as an object by default (as in the paper)
    assert background.pixels == 10000 - 3300
    assert background.recall == 1.0  # no background pixel was changed
    acc = SizeRecall(3)
    acc.update(pred, target)
    s = acc.summary(["bg", "a", "b"])
    assert s["mean"] == {"small": 0.5, "medium": 0.0, "large": 0.75, "huge": 1.0}
    assert s["objects"] == {"small": 1, "medium": 1, "large": 1, "huge": 1}
    assert s["per_class"]["a"] == {"small": 0.5, "medium": 0.0, "large": None, "huge": None}
    # excluding the background; a second image adds a small object of class 2 with recall 1
    acc = SizeRecall(3, exclude=[0])
    acc.update(pred, target)
    t2 = np.zeros((100, 100), np.uint8)
    t2[:10, :10] = 2
    acc.update(t2, t2)
    s = acc.summary(["bg", "a", "b"])
    assert s["mean"] == {"small": 0.75, "medium": 0.0, "large": 0.75, "huge": None}
    assert "bg" not in s["per_class"] and s["excluded_classes"] == ["bg"]
    assert s["per_class"]["b"]["small"] == 1.0 and s["per_class_objects"]["b"] == {"small": 1, "medium": 0, "large": 1, "huge": 0}


def test_recall_by_object_size_in_patch_tokens():
    """Given the image's patch tokens at the network input, each object gets its size in tokens and its
    PATCH_BUCKETS bucket; the summary has them only when some image came with its tokens."""
    pred, target = hand_drawn_scene()  # 100 x 100 labels
    objects = {(o.class_id, o.bucket): o for o in object_recalls(pred, target, patch_tokens=100)}  # 10x10 grid
    assert objects[(1, "small")].patches == pytest.approx(4.0) and objects[(1, "small")].patch_bucket == "4-16"
    assert objects[(1, "medium")].patch_bucket == "4-16" and objects[(2, "large")].patch_bucket == "16-64"
    assert objects[(0, "huge")].patch_bucket == ">= 64"
    assert all(o.patches is None and o.patch_bucket is None for o in object_recalls(pred, target))
    acc = SizeRecall(3, exclude=[0])
    acc.update(pred, target)
    assert acc.summary()["by_patches"] is None  # no image gave its tokens
    acc.update(pred, target, patch_tokens=100)
    tiny = np.zeros((100, 100), np.uint8)
    tiny[:5, :5] = 2  # 25 px = 0.25 tokens of a 10x10 grid, missed
    acc.update(np.zeros_like(tiny), tiny, patch_tokens=100)
    bp = acc.summary()["by_patches"]
    assert bp["objects"] == {"< 1": 1, "1-4": 0, "4-16": 2, "16-64": 1, ">= 64": 0}  # the first image is not counted
    assert bp["mean"] == {"< 1": 0.0, "1-4": None, "4-16": 0.25, "16-64": 0.75, ">= 64": None}
    assert bp["buckets"]["< 1"] == [0.0, 1.0] and bp["buckets"][">= 64"] == [64.0, None]


def test_objects_are_8_connected_and_ignore_is_no_object():
    target = np.full((10, 10), 255, np.uint8)
    target[0:3, 0:3] = 1
    target[3:5, 3:5] = 1  # touches the first square only at a corner: same object
    target[8:10, 8:10] = 1  # separate
    objects = object_recalls(target, target)
    assert sorted(o.pixels for o in objects) == [4, 13]
    assert all(o.class_id == 1 for o in objects)


# ---------------------------------------------------------------------------------------- evaluate

class TinyDataset:
    """Items as `Sample`s, like the registry's datasets (synthetic agri scenes, 80x96 labels)."""

    name = "tiny-agri"

    def __init__(self, n=3, size=(80, 96)):
        self.scenes = SyntheticScenes("agri", n, size=size)
        self.class_names, self.palette, self.num_classes = self.scenes.class_names, self.scenes.palette, 3

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        image, labels = self.scenes[i]
        return Sample(image, labels, f"scene_{i}")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return cc.build_model("cwfid_k3_ip3", **{**TINY, "ip": 1})


KEYS = {"model", "dataset", "num_images", "num_classes", "class_names", "input", "keep_bias", "clustering", "miou",
        "pixel_accuracy", "mean_class_accuracy", "per_class", "confusion_matrix", "size_recall", "tokens",
        "classes_per_image", "gflops", "seconds", "figures", "images"}


def test_evaluate_reports_every_metric_and_writes_figures(tiny, tmp_path):
    tiny.train()
    result = ev.evaluate(tiny, TinyDataset(3), flops_images=1, show=2, out_dir=tmp_path, batch_size=2, progress=False)
    assert tiny.training  # the caller's mode is restored
    assert set(result.to_dict()) == KEYS | {"split", "data_root", "weights", "device", "torch_threads"}
    assert result.num_images == 3 and result.class_names == ["soil", "crop", "weed"]
    assert 0 <= result.miou <= 1 and 0 <= result.pixel_accuracy <= 1
    assert set(vars(result.per_class["crop"])) == {"iou", "accuracy", "gt_pixels", "pred_pixels"}
    conf = np.array(result.confusion_matrix)
    assert conf.shape == (3, 3) and conf.sum() == 3 * 80 * 96  # at label resolution, nothing ignored
    assert set(result.size_recall["mean"]) == {"small", "medium", "large", "huge"}
    by_patches = result.size_recall["by_patches"]  # the same objects by their size in the 16 tokens of the input
    assert sum(by_patches["objects"].values()) == sum(result.size_recall["objects"].values()) > 0
    tok = result.tokens
    assert tok.full_mean == 16 and 1 <= tok.mean <= 16 and sum(tok.histogram["counts"]) == 3
    assert len(tok.histogram["edges"]) == len(tok.histogram["counts"]) + 1
    assert sum(row["images"] for row in result.classes_per_image) == 3
    assert result.gflops.images == 1 and result.gflops.mean > 0
    assert [r.gflops is not None for r in result.images] == [True, False, False]
    # tokens are the model's own count on the preprocessed image
    image, _ = SyntheticScenes("agri", 1, size=(80, 96))[0]
    with torch.inference_mode():
        out = tiny.eval()(cc.preprocess(image, 64, tiny.config.mean, tiny.config.std))
    assert result.images[0].tokens == int(out.tokens[0])
    # figures and the report
    assert [Path(f).name for f in result.figures] == ["example_000.png", "example_001.png"]
    paths = ev.write_report(result, tmp_path)
    assert {p.name for p in paths} == {"metrics.json", "metrics.md", "token_histogram.png", "tokens_vs_classes.png"}
    for p in paths + [Path(f) for f in result.figures]:
        assert p.stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == 3  # strict JSON (no NaN)
    text = (tmp_path / "metrics.md").read_text()
    assert "| crop |" in text and "huge" in text and "### By size in patch tokens" in text and "< 1 tokens" in text


def test_evaluate_accepts_tuples_limits_images_and_slides(tiny):
    scenes = SyntheticScenes("agri", 5, size=(64, 160))  # items are (image, labels) tuples, no names
    result = ev.evaluate(tiny, scenes, max_images=2, slide=True, size=64, flops_images=None, progress=False)
    assert result.num_images == 2 and result.images[0].name == "00000"
    assert vars(result.input) == {"mode": "slide", "size": 64, "stride": 42, "scale": None}
    # 64x160 fits (256, 64) as it is: windows at x = 0, 42, 84, 96 -> 4 x 16 unmerged tokens
    assert result.tokens.full_mean == 64 and result.gflops.images == 2
    # resized to 128x128 first: 2 x 2 windows of 16 tokens (rows and columns at 0 and 64)
    scaled = ev.evaluate(tiny, scenes, max_images=1, slide=True, size=64, stride=64, slide_scale=(128, 128),
                         progress=False)
    assert scaled.tokens.full_mean == 64 and scaled.input.describe() == "slide, crop 64x64, stride 64, on 128x128"


def test_evaluate_user_errors(tiny):
    class Broken(TinyDataset):
        def __getitem__(self, i):
            raise OSError("/data/img_000.png: truncated file")

    with pytest.raises(InputError, match="img_000.png"):
        ev.evaluate(tiny, Broken(1), progress=False)
    wrong = TinyDataset(1)
    wrong.num_classes = 5
    with pytest.raises(ConfigError, match="5 classes"):
        ev.evaluate(tiny, wrong, progress=False)

    class BadLabels(TinyDataset):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            s.labels[0, 0] = 7
            return s

    with pytest.raises(InputError, match="scene_0: label values 7 are not class ids"):
        ev.evaluate(tiny, BadLabels(1), progress=False)


def test_cli_end_to_end(tiny, tmp_path, monkeypatch, capsys):
    weights = cc.save_checkpoint(tmp_path / "tiny.safetensors", tiny.state_dict(), tiny.config)
    seen = {}

    def fake_build_dataset(name, split, root=None):
        seen.update(name=name, split=split, root=root)
        return TinyDataset(2)

    monkeypatch.setattr(ev, "build_dataset", fake_build_dataset)
    out = tmp_path / "eval"
    argv = ["cwfid_k3_ip3", "--weights", str(weights), "--out", str(out), "--show", "1", "--quiet",
            "--data-root", "/data/x", "--recall-exclude", "soil", *TINY_SET]
    assert ev.main(argv) == 0
    assert seen == {"name": "cwfid", "split": "test", "root": "/data/x"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["weights"] == str(weights)
    assert metrics["size_recall"]["excluded_classes"] == ["soil"]
    assert (out / "metrics.md").is_file() and (out / "example_000.png").is_file() and (out / "token_histogram.png").is_file()

    # unreadable data: one line naming the file, exit 2
    class Unreadable(TinyDataset):
        def __getitem__(self, i):
            raise InputError("/data/x/images/001_image.png: not a readable image file")

    monkeypatch.setattr(ev, "build_dataset", lambda *a, **k: Unreadable(1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        ev.main(["cwfid_k3_ip3", "--weights", "none", "--out", str(out), "--quiet", *TINY_SET])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"{ev.PROG}: error: /data/x/images/001_image.png: not a readable image file"


def test_cli_missing_weights_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clustvit_core.evaluate", "cwfid_k3_ip3", "--weights",
                           str(tmp_path / "missing.safetensors"), *TINY_SET], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "missing.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        ev.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and "--slide" in text and "--recall-exclude" in text


# --------------------------------------------------------------------------------------- pictures

def test_cluster_overlay_tints_clusters_and_keeps_kept_tokens():
    image = np.full((64, 96, 3), 100, np.uint8)
    ids = np.zeros((4, 6), np.int64)
    ids[0, 0] = 1
    ids[3, 5] = 2
    over = cluster_overlay(image, ids, alpha=0.5)
    assert over.shape == image.shape and over.dtype == np.uint8
    assert np.array_equal(over[16:48, 16:80], image[16:48, 16:80])  # kept tokens untouched
    assert not np.array_equal(over[:16, :16], image[:16, :16]) and not np.array_equal(over[-16:, -16:], image[-16:, -16:])
    assert not np.array_equal(over[0, 0], over[-1, -1])  # one colour per cluster
    big = cluster_overlay(np.zeros((128, 192, 3), np.uint8), torch.from_numpy(ids)[None])  # ids scale to the image
    assert big[:32, :32].any() and not big[32:96, 32:160].any()
    pic = cluster_map(ids, (64, 96), k=3)
    assert (pic[16:48, 16:80] == 0).all() and pic[:16, :16].any()
    assert colorize(np.array([[0, 255]]), [[1, 2, 3]]).tolist() == [[[1, 2, 3], [255, 255, 255]]]


def test_cli_keep_bias_sweep_writes_one_table(tiny, tmp_path, monkeypatch):
    """Several --keep-bias values: one evaluation each in its own folder, one README table; a large bias
    keeps every token (so the row differs from the bias-0 row)."""
    monkeypatch.setattr(ev, "build_dataset", lambda *a, **k: TinyDataset(2))
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- BEGIN benchmark:kb -->\n<!-- END benchmark:kb -->\n")
    out = tmp_path / "sweep"
    argv = ["cwfid_k3_ip3", "--weights", "none", "--out", str(out), "--quiet", "--keep-bias", "0", "50",
            "--update-readme", str(readme), "--readme-section", "kb", *TINY_SET]
    assert ev.main(argv) == 0
    low = json.loads((out / "keep_bias_0" / "metrics.json").read_text())
    high = json.loads((out / "keep_bias_50" / "metrics.json").read_text())
    assert high["keep_bias"] == 50 and high["tokens"]["kept_fraction"] == 1.0
    assert low["tokens"]["mean"] <= high["tokens"]["mean"]
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| 0 |") or line.startswith("| 50 |")]
    assert len(rows) == 2 and "100.0 %" in rows[1]


def test_two_models_in_one_comparison_table(tmp_path, monkeypatch, capsys):
    """A ViT and its ClustViT evaluated alike: one table, one row each, the ClustViT against the ViT."""
    monkeypatch.setattr(ev, "build_dataset", lambda *a, **k: TinyDataset(3))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN benchmark:cmp -->\n<!-- END benchmark:cmp -->\n")
    plain = [s for s in TINY_SET if not s.startswith("ip=")]  # overrides apply to every model
    vit_yaml, clust_yaml = tmp_path / "tiny_vit.yaml", tmp_path / "tiny_k3_ip1.yaml"
    models = Path(__file__).resolve().parents[1] / "config" / "models"
    vit_yaml.write_text(f"base: {models / 'cwfid_vit'}\n")
    clust_yaml.write_text(f"base: {models / 'cwfid_k3_ip3'}\nip: 1\n")
    argv = [str(vit_yaml), str(clust_yaml), "--weights", "none", "none", "--out", str(tmp_path / "eval"), "--quiet",
            "--flops-images", "1", "--update-readme", str(readme), "--readme-section", "cmp", *plain]
    assert ev.main(argv) == 0
    table = readme.read_text()
    assert "| tiny_vit |" in table and "| tiny_k3_ip1 |" in table
    assert "- tiny_k3_ip1 vs tiny_vit: mIoU" in table and "fewer GFLOPs" in table
    assert (tmp_path / "eval" / "tiny_vit_test" / "metrics.json").is_file()
    assert (tmp_path / "eval" / "tiny_k3_ip1_test" / "metrics.json").is_file()
    with pytest.raises(SystemExit):
        ev.main([str(vit_yaml), str(clust_yaml), "--weights", "none", "--quiet", *plain])
    assert "2 model(s) and 1 --weights" in capsys.readouterr().err


def test_cli_size_takes_height_and_width(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ev, "build_dataset", lambda *a, **k: TinyDataset(1))
    out = tmp_path / "eval"
    assert ev.main(["cwfid_k3_ip3", "--weights", "none", "--out", str(out), "--quiet", "--size", "32", "64",
                    *TINY_SET]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["input"]["size"] == [32, 64] and metrics["tokens"]["full_mean"] == 8  # 2 x 4 patches of 16
    for bad, message in ((["--size", "32", "64", "96"], "give one side or H W"),
                         (["--slide-scale", "64", "64"], "only with --slide")):
        with pytest.raises(SystemExit):
            ev.main(["cwfid_k3_ip3", "--weights", "none", "--out", str(out), "--quiet", *bad, *TINY_SET])
        assert message in capsys.readouterr().err


def test_missing_readme_markers_fail_before_the_measurement(tmp_path, monkeypatch, capsys):
    def never(*a, **k):
        raise AssertionError("the dataset was loaded: the markers should have been checked first")

    monkeypatch.setattr(ev, "build_dataset", never)
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit) as exc:
        ev.main(["cwfid_k3_ip3", "--weights", "none", "--quiet", "--update-readme", str(readme),
                 "--readme-section", "cmp", *TINY_SET])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "<!-- BEGIN benchmark:cmp -->" in err[0]
