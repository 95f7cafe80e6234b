"""The registry of named models: one YAML file per name under config/models/.

A YAML file may name a `base:` file (files starting with `_` hold shared dataset settings and are
not listed as models). The trainer, the evaluator, the benchmark and the ROS node all build models
through `build_model`, so a name means the same network everywhere.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, WeightsError
from .model import BACKBONES, ClustViT
from .palette import default_palette

ENV_CONFIG_DIR = "CLUSTVIT_CONFIG_DIR"
ENV_WEIGHTS_DIRS = "CLUSTVIT_WEIGHTS"

# Keys a model config may hold, with defaults. Overrides of build_model use the same names.
DEFAULTS: dict[str, Any] = {
    "name": None,
    "dataset": None,
    "backbone": "small",
    "embed_dim": None,  # None: from `backbone`
    "depth": None,
    "num_heads": None,
    "cluster_hidden": None,
    "head": "segmenter",
    "head_layers": 2,
    "uper_indices": None,
    "uper_channels": 512,
    "k": None,
    "ip": None,
    "img_size": 512,
    "num_classes": None,
    "class_names": None,
    "palette": None,
    "mean": [127.5, 127.5, 127.5],
    "std": [127.5, 127.5, 127.5],
    "drop_path_rate": 0.0,
    "weights": None,  # file name or path of trained weights (searched, see weights_search_path)
    "pretrained": None,  # timm ImageNet checkpoint used to start training
    "train": {},  # trainer settings (clustvit_core.train)
}


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
        data = yaml.safe_load(path.read_text()) or {}
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
    merged.update(data)
    return merged


def load_config(name_or_path: str | os.PathLike | dict, **overrides) -> dict:
    """The full, validated config of a registry name, a YAML path or a dict, with overrides applied."""
    if isinstance(name_or_path, dict):
        raw, source = dict(name_or_path), "<dict>"
    else:
        text = str(name_or_path)
        path = Path(text) if text.endswith((".yaml", ".yml")) else _find_yaml(text)
        if path is None or not path.is_file():
            known = ", ".join(list_models()) or "(none found)"
            raise ConfigError(f"unknown model {text!r}; known models: {known} (or pass a path to a .yaml file)")
        raw, source = _resolve(path), str(path)
        raw.setdefault("name", path.stem)
        raw["_source"] = source
    unknown = sorted(set(raw) - set(DEFAULTS) - {"_source"})
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; valid settings: {', '.join(DEFAULTS)}")
    bad = sorted(set(overrides) - set(DEFAULTS))
    if bad:
        raise ConfigError(f"unknown override(s) {bad}; valid names: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **raw, **overrides}
    if "num_classes" in overrides:  # dataset class names/colours no longer apply unless given too
        for key in ("class_names", "palette"):
            if key not in overrides and cfg[key] is not None and len(cfg[key]) != cfg["num_classes"]:
                cfg[key] = None
    return _validate(cfg, source)


def _validate(cfg: dict, source: str) -> dict:
    if cfg["backbone"] not in BACKBONES:
        raise ConfigError(f"{source}: backbone={cfg['backbone']!r}; choose one of {', '.join(BACKBONES)}")
    dim, depth, heads, hidden, _ = BACKBONES[cfg["backbone"]]
    for key, value in (("embed_dim", dim), ("depth", depth), ("num_heads", heads)):
        if cfg[key] is None:
            cfg[key] = value
    if cfg["cluster_hidden"] is None:
        cfg["cluster_hidden"] = hidden if cfg["embed_dim"] == dim else 4 * cfg["embed_dim"]
    n = cfg["num_classes"]
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"{source}: num_classes={n!r}; set it to the number of classes (an integer >= 1)")
    if cfg["class_names"] is None:
        cfg["class_names"] = [f"class_{i}" for i in range(n)]
    if len(cfg["class_names"]) != n:
        raise ConfigError(f"{source}: class_names lists {len(cfg['class_names'])} names for num_classes={n}")
    if cfg["palette"] is None:
        cfg["palette"] = default_palette(n)
    if len(cfg["palette"]) != n or any(len(c) != 3 for c in cfg["palette"]):
        raise ConfigError(f"{source}: palette needs {n} RGB triples, one per class")
    for key in ("mean", "std"):
        if len(cfg[key]) != 3:
            raise ConfigError(f"{source}: {key} needs 3 values (R, G, B on the 0-255 scale)")
    if cfg["k"] == 0:
        raise ConfigError(f"{source}: k=0; use k >= 1 clusters, or k=None and ip=None for a plain ViT")
    return cfg


def parse_overrides(items: list[str]) -> dict:
    """["num_classes=3", "backbone=tiny"] -> {"num_classes": 3, "backbone": "tiny"} (values parsed as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value, e.g. num_classes=3")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return overrides


def model_kwargs(cfg: dict) -> dict:
    """ClustViT constructor arguments of a validated config."""
    keys = ("num_classes", "img_size", "embed_dim", "depth", "num_heads", "k", "ip", "cluster_hidden",
            "head", "head_layers", "uper_indices", "uper_channels", "drop_path_rate")
    kwargs = {key: cfg[key] for key in keys}
    if kwargs["uper_indices"] is not None:
        kwargs["uper_indices"] = tuple(kwargs["uper_indices"])
    return kwargs


def build_model(name_or_config: str | os.PathLike | dict, weights: str | os.PathLike | None = None, **overrides) -> ClustViT:
    """Build a registered model (see `list_models`), optionally loading weights.

    Args:
        name_or_config: registry name, path to a YAML file, or a config dict.
        weights: None (random initialization), a path to a .safetensors checkpoint, or "default"
            for the file the registry entry names (see `default_weights`).
        overrides: config keys, e.g. backbone="tiny", img_size=256, num_classes=3, k=2, ip=4, head="uper".
    Returns:
        the model in eval mode, with its validated config as `model.config`.
    """
    from .weights import load_weights

    cfg = load_config(name_or_config, **overrides)
    model = ClustViT(**model_kwargs(cfg))
    model.config = cfg
    if weights is not None:
        path = default_weights(cfg) if str(weights) == "default" else Path(weights)
        load_weights(model, path)
    return model.eval()


def weights_search_path() -> list[Path]:
    """Folders searched for a registry entry's weights file, in order."""
    dirs = [Path(p) for p in os.environ.get(ENV_WEIGHTS_DIRS, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "weights")
    dirs += [share / "weights" for share in share_dirs()]
    dirs.append(Path.home() / ".cache" / "clustvit")
    return dirs


def default_weights(cfg: dict | str) -> Path:
    """The weights file a registry entry names, found on `weights_search_path()`."""
    if not isinstance(cfg, dict):
        cfg = load_config(cfg)
    name = cfg.get("weights")
    if not name:
        raise WeightsError(f"model {cfg['name']!r} names no weights file; pass a path explicitly")
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise WeightsError(f"weights file {candidate} for model {cfg['name']!r} not found")
    for d in weights_search_path():
        if (d / candidate).is_file():
            return d / candidate
    where = ", ".join(str(d) for d in weights_search_path())
    raise WeightsError(
        f"weights {name} for model {cfg['name']!r} not found in {where}; train it (python -m clustvit_core.train "
        f"{cfg['name']}), convert it (python -m clustvit_core.convert), or set {ENV_WEIGHTS_DIRS}=DIR"
    )
