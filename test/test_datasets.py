"""Dataset layer: registry, CWFID on the real files, SUIM / RumexWeeds / ADE20K on small fixtures written in
their real folder layouts, the SUIM converter and RumexWeeds prepare CLIs, and the one-line input errors."""
import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from clustvit_core.data import DatasetInfo, Sample, base as base_mod, build_dataset, dataset_info, dataset_names
from clustvit_core.data import cwfid, rumexweeds_prepare, suim, suim_convert
from clustvit_core.data.base import FilePairDataset
from clustvit_core.data.registry import DATASETS, SyntheticDataset, build
from clustvit_core.data.synthetic import make_scene
from clustvit_core.errors import ConfigError, InputError
from clustvit_core.registry import list_models, load_config

REPO = Path(__file__).resolve().parents[1]
CWFID_ROOT = REPO.parent / "shared" / "data" / "cwfid"
ATTRS = ("name", "class_names", "palette", "num_classes", "ignore_index", "split", "root")
NAMES = dataset_names()  # every registered dataset
FILE_DATASETS = [n for n in NAMES if issubclass(DATASETS[n], FilePairDataset)]
SYNTHETIC_DATASETS = [n for n in NAMES if issubclass(DATASETS[n], SyntheticDataset)]


@pytest.fixture(autouse=True)
def _fresh_warn_once(monkeypatch):
    """Each test sees the once-per-process warnings afresh (other test files may have triggered them)."""
    monkeypatch.setattr(base_mod, "_WARNED", set())


def one_line_error(exc_type, fn, *fragments):
    """Call fn, expect exc_type with a one-line message containing every fragment; return the message."""
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert str(fragment) in msg, (fragment, msg)
    return msg


def run_main(main, *args):
    """A CLI's main() in this process (faster than a subprocess): its exit code (errors exit via SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
    return path


def write_gray(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(values, np.uint8))
    return path


def noise_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_sample(ds, sample, shape):
    assert isinstance(sample, Sample)
    assert sample.image.dtype == np.uint8 and sample.image.shape == (*shape, 3)
    assert sample.labels.dtype == np.uint8 and sample.labels.shape == shape
    for attr in ATTRS:
        assert hasattr(ds, attr), attr
    assert ds.ignore_index == 255 and ds.num_classes == len(ds.class_names) == len(ds.palette)
    assert info_of(ds) == dataset_info(ds.name)


def info_of(ds) -> DatasetInfo:
    """What a built dataset says about its classes, as a DatasetInfo."""
    return DatasetInfo(ds.name, ds.num_classes, tuple(ds.class_names), tuple(tuple(c) for c in ds.palette))


# ---------------------------------------------------------------------------------------- registry

def test_registry_names_and_unknowns():
    assert NAMES == sorted(DATASETS) and set(FILE_DATASETS) | set(SYNTHETIC_DATASETS) == set(NAMES)
    assert all(DATASETS[name].name == name for name in NAMES)
    known = ", ".join(NAMES)
    one_line_error(ConfigError, lambda: build("pascal", "train"), "unknown dataset 'pascal'", known)
    one_line_error(ConfigError, lambda: build_dataset("suim", "training"), "unknown split 'training'",
                   "train, val, test")
    one_line_error(ConfigError, lambda: build("cwfid", "all"), "val (= test)")
    one_line_error(ConfigError, lambda: build("synthetic_agri", "val", colour="red"), "colour",
                   "num_images, size")
    for bad in ("nope", None, ["cwfid"]):
        one_line_error(ConfigError, lambda: dataset_info(bad), f"unknown dataset {bad!r}", known)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_registry_root_from_env_or_clear_error(name, monkeypatch, tmp_path):
    env = DATASETS[name].env_var
    assert env.startswith("CLUSTVIT_") and env.endswith("_ROOT")
    monkeypatch.delenv(env, raising=False)
    if DATASETS[name].default_root() is None:
        one_line_error(ConfigError, lambda: build(name, "train"), "--data-root", env)
    monkeypatch.setenv(env, str(tmp_path / "missing"))
    one_line_error(InputError, lambda: build(name, "train"), tmp_path / "missing", "folder not found", env)


@pytest.mark.parametrize("name", NAMES)
def test_dataset_info_is_the_dataset_class(name, monkeypatch, tmp_path):
    """dataset_info reads the class attributes only: it works without the dataset's files."""
    cls = DATASETS[name]
    if getattr(cls, "env_var", ""):
        monkeypatch.setenv(cls.env_var, str(tmp_path / "missing"))
    info = dataset_info(name)
    assert info == DatasetInfo(name, len(cls.class_names), tuple(cls.class_names), tuple(tuple(c) for c in cls.palette))
    assert info.num_classes == len(info.palette) >= 1
    assert all(isinstance(n, str) and n for n in info.class_names) and len(set(info.class_names)) == info.num_classes
    assert all(len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c) for c in info.palette)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 0
    assert hash(info) == hash(dataset_info(name))


@pytest.mark.parametrize("model", list_models())
def test_model_dataset_is_registered(model):
    """Each model YAML names a registered dataset, whose classes and colours the model takes."""
    cfg = load_config(model)
    assert cfg.dataset in NAMES, f"{model}: dataset {cfg.dataset!r} is not registered"
    info = dataset_info(cfg.dataset)
    assert (cfg.num_classes, cfg.class_names, cfg.palette) == (info.num_classes, info.class_names, info.palette)


@pytest.mark.parametrize("name", SYNTHETIC_DATASETS)
def test_synthetic_datasets(name):
    kind = DATASETS[name].kind
    assert [len(build(name, s)) for s in ("train", "val", "test")] == [200, 50, 50]  # lazy: nothing generated
    ds = build(name, "val", num_images=2, size=32)
    assert ds.root is None and ds.split == "val"
    sample = ds[1]
    check_sample(ds, sample, (32, 32))
    image, labels = make_scene(kind, 1_000_000 + 1, 32)  # val = seed 1
    assert np.array_equal(sample.image, image) and np.array_equal(sample.labels, labels)
    assert not np.array_equal(build(name, "train", num_images=1, size=32)[0].image, ds[0].image)
    assert sample.name == f"{name}_val_00001" and ds[-1].name == sample.name
    with pytest.raises(IndexError):
        ds[2]


# ------------------------------------------------------------------------------------ CWFID (real)

def test_cwfid_real_splits_warn_once(monkeypatch):
    monkeypatch.delenv(cwfid.ENV_ROOT, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build("cwfid", "train")
        test = build_dataset("cwfid", "test")
        val = build("cwfid", "val")
        build("cwfid", "train")
        cwfid.files(split="train")  # the benchmark's path to the same split
    overlap = [w for w in caught if "listed in train and test" in str(w.message)]
    assert len(overlap) == 1 and "[28]" in str(overlap[0].message)
    assert (len(train), len(test), len(val)) == (39, 21, 21)
    assert val.pairs == test.pairs and val.split == "val" and test.split == "test"
    train_names = {img.name for img, _ in train.pairs}
    assert "028_image.png" not in train_names and "028_image.png" in {img.name for img, _ in test.pairs}
    assert train.root.resolve() == CWFID_ROOT.resolve()
    assert info_of(train) == info_of(test) == dataset_info("cwfid")


@pytest.mark.filterwarnings("ignore:.*listed in train and test")
def test_cwfid_real_items():
    seen = set()
    for split in ("train", "test"):
        ds = build("cwfid", split)
        for i in (0, len(ds) // 2, -1):
            sample = ds[i]
            check_sample(ds, sample, (966, 1296))
            assert sample.name.endswith("_image")
            seen |= set(np.unique(sample.labels).tolist())
    assert seen == {0, 1, 2}


def make_cwfid(root: Path, numbers=(1, 2, 3), size=(12, 16)):
    for n in numbers:
        write_rgb(root / "images" / f"{n:03d}_image.png", noise_image(*size, n))
        ann = np.zeros((*size, 3), np.uint8)
        ann[2:5, 2:6] = (0, 255, 0)
        ann[6:9, 8:12] = (255, 0, 0)
        ann[0, 0] = (10, 20, 30)  # not in the palette -> ignore
        write_rgb(root / "annotations" / f"{n:03d}_annotation.png", ann)
    (root / "train_test_split.yaml").write_text("train: [1, 2]\ntest: [3]\n")
    return root


def test_cwfid_fixture_labels_and_errors(tmp_path):
    root = make_cwfid(tmp_path / "cwfid")
    sample = build("cwfid", "train", root)[0]
    expected = np.zeros((12, 16), np.uint8)
    expected[2:5, 2:6], expected[6:9, 8:12], expected[0, 0] = 1, 2, 255
    assert np.array_equal(sample.labels, expected) and sample.name == "001_image"

    (root / "annotations" / "002_annotation.png").unlink()
    one_line_error(InputError, lambda: build("cwfid", "train", root), root / "images" / "002_image.png",
                   "002_annotation.png")
    write_rgb(root / "annotations" / "002_annotation.png", np.zeros((10, 16, 3), np.uint8))
    ds = build("cwfid", "train", root)
    one_line_error(InputError, lambda: ds[1], root / "annotations" / "002_annotation.png", "16x10",
                   root / "images" / "002_image.png", "16x12")
    for sub in ("annotations", "images"):
        (root / sub).rename(root / f"{sub}_moved")
        one_line_error(InputError, lambda: build("cwfid", "test", root), root / sub, "folder not found", "--data-root")
        (root / f"{sub}_moved").rename(root / sub)


# -------------------------------------------------------------------------------------------- SUIM

SUIM_SIZE = (20, 24)


def suim_truth(seed):
    """A label map using all 8 classes, and its RGB mask with off-palette pixels of the same classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, SUIM_SIZE).astype(np.uint8)
    rgb = np.array(suim.PALETTE, np.uint8)[labels]
    noisy = rng.random(SUIM_SIZE) < 0.3  # off-palette: each channel moved towards 128 but not across
    jitter = rng.integers(0, 128, (*SUIM_SIZE, 3)).astype(np.int32)
    moved = np.where(rgb >= 128, rgb.astype(np.int32) - jitter, rgb.astype(np.int32) + jitter)
    rgb[noisy] = np.clip(moved, 0, 255).astype(np.uint8)[noisy]
    return labels, rgb


def make_suim(root: Path, n_train_val=7, n_test=2, test_dir="test"):
    truth = {}
    for folder, n in (("train_val", n_train_val), (test_dir, n_test)):
        for i in range(n):
            stem = f"{'tv' if folder == 'train_val' else 'te'}_{i:04d}"
            labels, rgb = suim_truth(len(truth))
            write_rgb(root / folder / "images" / f"{stem}.jpg", noise_image(*SUIM_SIZE, i))
            write_rgb(root / folder / "masks" / f"{stem}.bmp", rgb)
            truth[stem] = labels
    return truth


def test_suim_rgb_to_labels_thresholds_each_channel():
    colours = np.array([c for c in suim.PALETTE] + [[250, 3, 130], [127, 128, 0], [128, 127, 255], [200, 200, 100]],
                       np.uint8)[None]
    assert suim.rgb_to_labels(colours)[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 5, 2, 5, 6]
    assert [suim.CODES[i] for i in (5, 4)] == ["RI", "RO"]


def test_suim_make_split_is_seeded_and_complete():
    stems = [f"img{i:03d}" for i in range(40)]
    split = suim.make_split(stems)
    assert split == suim.make_split(list(reversed(stems)), seed=0)
    assert len(split["val"]) == 6 and sorted(split["train"] + split["val"]) == stems
    assert split != suim.make_split(stems, seed=1)
    assert suim.make_split(["a", "b"])["val"] and suim.make_split(["a"]) == {"train": ["a"], "val": []}


def test_suim_on_the_fly_then_converted(tmp_path, capsys):
    root = tmp_path / "SUIM"
    truth = make_suim(root)
    train, val, test = (build("suim", s, root) for s in ("train", "val", "test"))
    names = lambda ds: [img.stem for img, _ in ds.pairs]  # noqa: E731
    assert (len(train), len(val), len(test)) == (6, 1, 2)
    assert sorted(names(train) + names(val)) == sorted(s for s in truth if s.startswith("tv_"))
    assert names(val) == suim.make_split(names(train) + names(val))["val"]
    sample = val[0]
    check_sample(val, sample, SUIM_SIZE)
    assert np.array_equal(sample.labels, truth[sample.name])
    assert not (root / "train_val" / "split.yaml").exists()  # computed in memory, nothing written

    assert run_main(suim_convert.main, str(root), "--quiet") == 0
    printed = capsys.readouterr().out
    assert "masks_label: 7 label images" in printed and "6 train / 1 val" in printed
    split_file = root / "train_val" / "split.yaml"
    first = split_file.read_bytes()
    data = yaml.safe_load(first)
    assert data["seed"] == 0 and data["val"] == names(val) and data["train"] == names(train)
    for stem, labels in truth.items():
        folder = "train_val" if stem.startswith("tv_") else "test"
        written = cv2.imread(str(root / folder / "masks_label" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert written.ndim == 2 and np.array_equal(written, labels)
    converted = build("suim", "val", root)
    assert converted.pairs[0][1].parent.name == "masks_label"
    assert np.array_equal(converted[0].labels, sample.labels)
    assert run_main(suim_convert.main, str(root), "--quiet") == 0 and split_file.read_bytes() == first  # deterministic


def test_suim_split_file_overlap_and_stale(tmp_path):
    root = tmp_path / "SUIM"
    make_suim(root, n_train_val=4, n_test=1, test_dir="TEST")  # the download's upper-case test folder
    assert len(build("suim", "test", root)) == 1
    split_file = root / "train_val" / "split.yaml"
    split_file.write_text(yaml.safe_dump({"train": ["tv_0000", "tv_0001", "tv_0002"], "val": ["tv_0002", "tv_0003"]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build("suim", "train", root)
        build("suim", "train", root)
    assert [img.stem for img, _ in train.pairs] == ["tv_0000", "tv_0001"]
    assert len([w for w in caught if "listed in train and val" in str(w.message)]) == 1

    split_file.write_text(yaml.safe_dump({"train": ["tv_0000", "tv_0001", "tv_0002", "gone"], "val": ["tv_0003"]}))
    one_line_error(InputError, lambda: build("suim", "train", root), split_file, "'gone'", "suim_convert")
    split_file.write_text(yaml.safe_dump({"train": ["tv_0000"], "val": ["tv_0003"]}))
    one_line_error(InputError, lambda: build("suim", "val", root), split_file, "tv_0001", "neither train nor val")
    split_file.write_text("train: [a\n")
    one_line_error(InputError, lambda: build("suim", "val", root), split_file, "not a readable split file")


def test_suim_input_errors(tmp_path, capsys):
    root = tmp_path / "SUIM"
    make_suim(root, n_train_val=3, n_test=1)
    mask = root / "test" / "masks" / "te_0000.bmp"
    mask.unlink()
    one_line_error(InputError, lambda: build("suim", "test", root), root / "test" / "images" / "te_0000.jpg",
                   "no mask")
    assert run_main(suim_convert.main, str(root), "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "suim_convert: error:" in err and "te_0000.jpg" in err

    write_rgb(mask, np.zeros((SUIM_SIZE[0] + 2, SUIM_SIZE[1], 3), np.uint8))
    ds = build("suim", "test", root)
    one_line_error(InputError, lambda: ds[0], mask, "24x22", root / "test" / "images" / "te_0000.jpg", "24x20")
    assert run_main(suim_convert.main, str(root), "--quiet") == 2 and "24x22" in capsys.readouterr().err
    assert run_main(suim_convert.main, str(root), "--quiet", "--resize-mismatched") == 0
    assert "resized 24x22 -> 24x20" in capsys.readouterr().out
    write_gray(root / "test" / "masks_label" / "te_0000.png", np.full(SUIM_SIZE, 9, np.uint8))
    one_line_error(InputError, lambda: build("suim", "test", root)[0], "masks_label/te_0000.png", "values 9")

    (root / "train_val" / "images").rename(root / "train_val" / "imgs")
    one_line_error(InputError, lambda: build("suim", "train", root), root / "train_val" / "images",
                   "folder not found")
    assert run_main(suim_convert.main, str(tmp_path / "none"), "--quiet") == 2
    assert "none: SUIM folder not found" in capsys.readouterr().err


def test_suim_convert_help(capsys):
    assert run_main(suim_convert.main, "--help") == 0
    out = capsys.readouterr().out
    assert "example:" in out and "python -m clustvit_core.data.suim_convert /data/SUIM" in out


# -------------------------------------------------------------------------------------- RumexWeeds

RUMEX_SIZE = (40, 60)  # (height, width)


def cvat(images: dict) -> str:
    """A CVAT-for-images 1.1 file: {name: [(label, points, z_order), ...] or None for an empty entry}."""
    out = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>"]
    for i, (name, shapes) in enumerate(images.items()):
        out.append(f'  <image id="{i}" name="{name}" width="{RUMEX_SIZE[1]}" height="{RUMEX_SIZE[0]}">')
        out.append('    <box label="rumex_obtusifolius" occluded="0" xtl="0" ytl="0" xbr="50" ybr="30" z_order="0"/>')
        for label, points, z in shapes or []:
            pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in points)
            out.append(f'    <polygon label="{label}" occluded="0" source="manual" points="{pts}" z_order="{z}"/>')
        out.append("  </image>")
    return "\n".join(out + ["</annotations>", ""])


RECT = [(10, 20), (29, 20), (29, 39), (10, 39)]  # fillPoly includes the boundary: rows 20..39, columns 10..29
OVERLAP = [(20, 5), (44, 5), (44, 25), (20, 25)]  # rows 5..25, columns 20..44


def rumex_expected(kind):
    mask = np.zeros(RUMEX_SIZE, np.uint8)
    if kind == "rect":
        mask[20:40, 10:30] = 1
    elif kind == "z":  # crispus (z_order 2, listed first) on top of obtusifolius (z_order 1)
        mask[20:40, 10:30] = 1
        mask[5:26, 20:45] = 2
    return mask


def make_rumex(root: Path):
    """Two collections/sequences in the real layout; returns {relative image path: expected mask}."""
    seqs = {
        "20210806_hegnstrup/seq0": {
            "h_0.png": ("rect", [("rumex_obtusifolius", RECT, 0), ("grass", OVERLAP, 5)]),
            "h_1.png": ("z", [("rumex_crispus", OVERLAP, 2), ("Rumex_Obtusifolius", RECT, 1)]),
            "h_2.png": ("empty", None),
        },
        "20210806_stengard/seq3": {
            "s_0.png": ("rect", [("rumex_obtusifolius", RECT, 0)]),
            "s_1.png": ("empty", []),
            "s_2.png": ("z", [("rumex_obtusifolius", RECT, 1), ("rumex_crispus", OVERLAP, 2)]),
        },
    }
    expected = {}
    for seq, images in seqs.items():
        for i, (name, (kind, _)) in enumerate(images.items()):
            write_rgb(root / seq / "imgs" / name, noise_image(*RUMEX_SIZE, i))
            expected[f"{seq}/imgs/{name}"] = rumex_expected(kind)
        (root / seq / "annotations_seg.xml").write_text(cvat({name: shapes for name, (_, shapes) in images.items()}))
    splits = root / "dataset_splits"
    splits.mkdir()
    rel = list(expected)
    (splits / "random_train.txt").write_text("\n".join([rel[0], rel[1], rel[3], rel[5]]) + "\n")
    (splits / "random_val.txt").write_text(rel[2] + "\n\n")
    (splits / "random_test.txt").write_text(f"{rel[4]}\n./{rel[5]}\n")  # rel[5] also in train: test wins
    return expected


def test_rumexweeds_prepare_cli_and_dataset(tmp_path):
    root = tmp_path / "RumexWeeds"
    expected = make_rumex(root)
    result = subprocess.run([sys.executable, "-m", "clustvit_core.data.rumexweeds_prepare", str(root), "--quiet"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "listed for train and test; kept in test only" in result.stderr and "'grass'" in result.stderr
    processed = root / "processed"
    layout = {s: sorted(p.name for p in (processed / s / "images").iterdir()) for s in ("train", "val", "test")}
    assert layout == {"train": ["h_0.png", "h_1.png", "s_0.png"], "val": ["h_2.png"], "test": ["s_1.png", "s_2.png"]}
    for rel, mask in expected.items():
        split = next(s for s, names in layout.items() if Path(rel).name in names)
        written = cv2.imread(str(processed / split / "masks" / Path(rel).name), cv2.IMREAD_UNCHANGED)
        assert written.ndim == 2 and np.array_equal(written, mask), rel
        assert (processed / split / "images" / Path(rel).name).read_bytes() == (root / rel).read_bytes()

    ds = build("rumexweeds", "train", root)
    assert len(ds) == 3 and len(build("rumexweeds", "test", processed)) == 2  # ROOT or ROOT/processed
    sample = ds[1]
    check_sample(ds, sample, RUMEX_SIZE)
    assert sample.name == "h_1" and np.array_equal(sample.labels, rumex_expected("z"))


def test_rumexweeds_prepare_options_and_errors(tmp_path, capsys):
    root = tmp_path / "RumexWeeds"
    expected = make_rumex(root)
    rel = list(expected)
    splits = root / "dataset_splits"
    one_line_error(InputError, lambda: build("rumexweeds", "train", root), root / "processed",
                   "rumexweeds_prepare")

    # split files by plain names in ROOT, images hard-linked
    for s in ("train", "val", "test"):
        (splits / f"random_{s}.txt").rename(root / f"{s}.txt")
    assert run_main(rumexweeds_prepare.main, str(root), "--quiet", "--images", "hardlink") == 0
    assert len(build("rumexweeds", "val", root)) == 1
    assert run_main(rumexweeds_prepare.main, str(root), "--quiet") == 2
    assert "already holds prepared files; pass --overwrite" in capsys.readouterr().err
    (root / "val.txt").write_text(rel[2] + "\n" + rel[3] + "\n")
    assert run_main(rumexweeds_prepare.main, str(root), "--quiet", "--overwrite") == 0
    assert len(build("rumexweeds", "val", root)) == 2 and len(build("rumexweeds", "train", root)) == 2
    capsys.readouterr()

    def fails(*fragments, argv=()):
        assert run_main(rumexweeds_prepare.main, str(root), "--quiet", "--overwrite", *argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("python -m clustvit_core.data.rumexweeds_prepare: error:")
        for fragment in fragments:
            assert str(fragment) in err, (fragment, err)

    fails("no train split file", splits / "random_train.txt", "--train FILE", argv=["--split-dir", str(splits)])
    (root / "train.txt").write_text(rel[0] + "\nnot/there.png\n")
    fails(root / "not/there.png", "image not found", root / "train.txt")
    (root / "train.txt").write_text(rel[0] + "\n")
    xml = root / "20210806_stengard/seq3/annotations_seg.xml"
    text = xml.read_text()
    xml.write_text(text.replace('name="s_1.png"', 'name="other.png"'))
    fails(root / rel[4], 'no <image name="s_1.png">', xml, "--missing-as-background")
    assert run_main(rumexweeds_prepare.main, str(root), "--quiet", "--overwrite", "--missing-as-background") == 0
    capsys.readouterr()
    xml.write_text(text.replace('points="10.00,20.00', 'points="10.00;20.00', 1))
    fails(xml, "malformed points")
    xml.write_text(text.replace(f'width="{RUMEX_SIZE[1]}"', 'width="61"', 1))
    fails(xml, "61x40", root / rel[3], "60x40")
    xml.unlink()
    fails(root / rel[3], "no annotations_seg.xml")
    assert run_main(rumexweeds_prepare.main, str(tmp_path / "none"), "--quiet") == 2
    assert "none: RumexWeeds folder not found" in capsys.readouterr().err

    # bad processed files: mask size and class ids
    masks = root / "processed" / "train" / "masks"
    write_gray(masks / "h_0.png", np.zeros((RUMEX_SIZE[0], RUMEX_SIZE[1] + 1), np.uint8))
    ds = build("rumexweeds", "train", root)
    one_line_error(InputError, lambda: ds[0], masks / "h_0.png", "61x40", "images/h_0.png", "60x40")
    write_gray(masks / "h_0.png", np.full(RUMEX_SIZE, 3, np.uint8))
    one_line_error(InputError, lambda: ds[0], masks / "h_0.png", "label values 3", "0..2")
    (masks / "h_0.png").unlink()
    one_line_error(InputError, lambda: build("rumexweeds", "train", root), "images/h_0.png", "no mask")


def test_rumexweeds_prepare_help(capsys):
    assert run_main(rumexweeds_prepare.main, "--help") == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--train FILE" in out and "annotations_seg.xml" in out


# ------------------------------------------------------------------------------------------ ADE20K

def make_ade(root: Path):
    base = root / "ADEChallengeData2016"
    for folder, prefix, n in (("training", "ADE_train", 2), ("validation", "ADE_val", 1)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            write_rgb(base / "images" / folder / f"{stem}.jpg", noise_image(8, 10, i))
            raw = np.zeros((8, 10), np.uint8)
            raw[:, 3:] = 1
            raw[:, 6:] = 150
            raw[0, 9] = i
            write_gray(base / "annotations" / folder / f"{stem}.png", raw)
    return base


def test_ade20k(tmp_path):
    base = make_ade(tmp_path / "ade")
    train, val, test = (build("ade20k", s, tmp_path / "ade") for s in ("train", "val", "test"))
    assert (len(train), len(val)) == (2, 1) and test.pairs == val.pairs and test.split == "test"
    sample = train[1]
    check_sample(train, sample, (8, 10))
    assert sample.name == "ADE_train_00000002" and train.num_classes == 150
    assert sample.labels[0, :3].tolist() == [255] * 3 and sample.labels[1, 3:6].tolist() == [0] * 3
    assert sample.labels[1, 6:].tolist() == [149] * 4 and sample.labels[0, 9] == 1
    assert len(build("ade20k", "val", base)) == 1  # ROOT may be ADEChallengeData2016 itself

    bad = base / "annotations" / "training" / "ADE_train_00000001.png"
    write_gray(bad, np.full((8, 10), 151, np.uint8))
    one_line_error(InputError, lambda: train[0], bad, "values 151")
    bad.unlink()
    one_line_error(InputError, lambda: build("ade20k", "train", tmp_path / "ade"),
                   base / "images" / "training" / "ADE_train_00000001.jpg", "no mask")
    one_line_error(InputError, lambda: build("ade20k", "train", tmp_path),
                   tmp_path / "ADEChallengeData2016", "folder not found")
