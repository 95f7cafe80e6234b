"""The registry of named models: one YAML file per name under config/models/.

A YAML file may name a `base:` file (files starting with `_` hold shared dataset settings and are
not listed as models); its settings override the base's, its `train:` mapping key by key (a model that
changes the learning rate keeps the rest of the dataset's recipe). The trainer, the evaluator, the
benchmark and the ROS node all build models through `build_model`, so a name means the same network
everywhere.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

from .errors import ConfigError, WeightsError
from .config import ModelConfig, field_names
from .data.registry import dataset_info
from .model import ClustViT
from .weights import load_weights, read_checkpoint_metadata

ENV_CONFIG_DIR = "CLUSTVIT_CONFIG_DIR"
ENV_WEIGHTS_DIRS = "CLUSTVIT_WEIGHTS"

class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `1e-3` is a number (PyYAML 1.1 reads it as a string)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def share_dirs() -> list[Path]:
    """share/clustvit_ros of the installs this package may come from: the prefix this file is installed
    under (a colcon install/ folder, a virtual environment), then sys.prefix."""
    here = Path(__file__).resolve()
    prefixes = [here.parents[4]] if here.parents[1].name in ("site-packages", "dist-packages") else []
    prefixes.append(Path(sys.prefix))
    return [p / "share" / "clustvit_ros" for p in dict.fromkeys(prefixes)]


def config_dirs() -> list[Path]:
    """Where model YAML files are looked for, in order."""
    dirs = []
    if os.environ.get(ENV_CONFIG_DIR):
        dirs.append(Path(os.environ[ENV_CONFIG_DIR]))
    dirs.append(Path(__file__).resolve().parent.parent / "config" / "models")  # source checkout
    dirs += [share / "config" / "models" for share in share_dirs()]  # installed
    return [d for d in dirs if d.is_dir()]


def _find_yaml(name: str) -> Path | None:
    for d in config_dirs():
        path = d / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def list_models() -> list[str]:
    """Registered model names (sorted)."""
    names = {p.stem for d in config_dirs() for p in d.glob("*.yaml") if not p.stem.startswith("_")}
    return sorted(names)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=YamlLoader) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at top level")
    return data


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: `base:` files form a cycle")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / f"{base}.yaml"
    if not base_path.is_file():
        raise ConfigError(f"{path}: base {base!r} not found (expected {base_path})")
    merged = _resolve(base_path, seen + (path,))
    train = data.pop("train", None)
    merged.update(data)
    if isinstance(train, dict) and isinstance(merged.get("train"), dict):
        merged["train"] = {**merged["train"], **train}
    elif train is not None:
        merged["train"] = train
    return merged


def load_config(name_or_path: str | os.PathLike | dict | ModelConfig, **overrides) -> ModelConfig:
    """The validated `ModelConfig` of a registry name, a YAML path, a dict or a config, with overrides applied.

    Overriding `num_classes` drops the class names and palette that came with the file unless they
    are overridden too (they describe other classes).
    """
    if isinstance(name_or_path, ModelConfig):
        raw, source = name_or_path.to_dict(), name_or_path.source or "<config>"
    elif isinstance(name_or_path, dict):
        raw, source = dict(name_or_path), "<dict>"
    else:
        text = str(name_or_path)
        path = Path(text) if text.endswith((".yaml", ".yml")) else _find_yaml(text)
        if path is None or not path.is_file():
            known = ", ".join(list_models()) or "(none found)"
            raise ConfigError(f"unknown model {text!r}; known models: {known} (or pass a path to a .yaml file)")
        raw, source = _resolve(path), str(path)
        raw.setdefault("name", path.stem)
        raw["source"] = source
    raw = {("source" if k == "_source" else k): v for k, v in raw.items()}
    valid = field_names()
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; valid settings: {', '.join(valid)}")
    bad = sorted(set(overrides) - set(valid))
    if bad:
        raise ConfigError(f"unknown override(s) {bad}; valid names: {', '.join(valid)}")
    if "num_classes" in overrides:  # the file's class names/colours no longer apply unless given too
        for key in ("class_names", "palette"):
            if key not in overrides and raw.get(key) is not None and len(raw[key]) != overrides["num_classes"]:
                raw[key] = None
    merged = {**raw, **overrides}
    if merged.get("dataset"):  # the dataset is the source of classes, names and colours; the YAML overrides them
        info = dataset_info(merged["dataset"])
        if merged.get("num_classes") is None:
            merged["num_classes"] = info.num_classes
        if merged["num_classes"] == info.num_classes:
            for key in ("class_names", "palette"):
                if merged.get(key) is None:
                    merged[key] = getattr(info, key)
    return ModelConfig.from_dict(merged, where=source)


def split_key_values(items: list[str]) -> tuple[list[str], list[str]]:
    """(plain items, KEY=VALUE items) of a list-valued command-line option.

    The CLIs take model overrides as positional KEY=VALUE arguments; argparse hands those that follow
    a list-valued option (`--models a b k=3`) to that option. Names and class names never hold '='.
    """
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def parse_overrides(items: list[str]) -> dict:
    """["num_classes=3", "backbone=tiny"] -> {"num_classes": 3, "backbone": "tiny"} (values parsed as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value, e.g. num_classes=3")
        try:
            overrides[key.strip()] = yaml.load(value, Loader=YamlLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return overrides


def build_model(name_or_config: str | os.PathLike | dict | ModelConfig, weights: str | os.PathLike | None = None, **overrides) -> ClustViT:
    """Build a registered model (see `list_models`), optionally loading weights.

    Args:
        name_or_config: registry name, path to a YAML file, a config dict or a `ModelConfig`.
        weights: None (random initialization), a path to a .safetensors checkpoint, or "default"
            for the file the registry entry names (see `default_weights`). The file's stored
            `empty_clusters` mode applies unless overridden (converted authors' checkpoints: "zeros").
        overrides: config keys, e.g. backbone="tiny", img_size=256, num_classes=3, k=2, ip=4, head="uper".
    Returns:
        the model in eval mode; `model.config` is its `ModelConfig`.
    """
    cfg = load_config(name_or_config, **overrides)
    path = None
    if weights is not None:
        path = default_weights(cfg) if str(weights) == "default" else Path(weights)
        stored = stored_empty_clusters(path)
        if stored and "empty_clusters" not in overrides and stored != cfg.empty_clusters:
            cfg = cfg.replace(empty_clusters=stored)  # how the weights were made to run (converted authors' files: zeros)
    model = ClustViT(cfg)
    if path is not None:
        load_weights(model, path)
    return model.eval()


def stored_empty_clusters(path: Path) -> str | None:
    """The `empty_clusters` mode stored with a .safetensors checkpoint (None for other files or none stored)."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    stored = read_checkpoint_metadata(path)["config"] or {}
    return stored.get("empty_clusters")


def weights_search_path() -> list[Path]:
    """Folders searched for a registry entry's weights file, in order."""
    dirs = [Path(p) for p in os.environ.get(ENV_WEIGHTS_DIRS, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "weights")
    dirs += [share / "weights" for share in share_dirs()]
    dirs.append(Path.home() / ".cache" / "clustvit")
    return dirs


def default_weights(cfg: ModelConfig | str) -> Path:
    """The weights file a registry entry names, found on `weights_search_path()`."""
    if not isinstance(cfg, ModelConfig):
        cfg = load_config(cfg)
    name = cfg.weights
    if not name:
        raise WeightsError(f"model {cfg.name!r} names no weights file; pass a path explicitly")
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise WeightsError(f"weights file {candidate} for model {cfg.name!r} not found")
    for d in weights_search_path():
        if (d / candidate).is_file():
            return d / candidate
    where = ", ".join(str(d) for d in weights_search_path())
    raise WeightsError(
        f"weights {name} for model {cfg.name!r} not found in {where}; train it (python -m clustvit_core.train "
        f"{cfg.name}), convert it (python -m clustvit_core.convert), or set {ENV_WEIGHTS_DIRS}=DIR"
    )
