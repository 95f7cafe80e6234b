"""The model config: what a model is, typed and frozen, owned by the model (`ClustViT.config`).

`ModelConfig` holds the architecture, the classes and the input contract; `ModelConfig.data` is the
part a caller needs to feed the model (input size, patch size, mean/std), in the spirit of timm's
`pretrained_cfg`. Every driver (trainer, evaluator, benchmark, predictor, ROS node) reads these
values from the model it runs, never from defaults of its own.

    cfg = ModelConfig(num_classes=3, backbone="tiny", k=3, ip=3, patch_size=14, img_size=224)
    cfg.data.grid((224, 224))   # (16, 16)
    cfg.replace(k=None, ip=None)  # the plain-ViT twin
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .palette import default_palette

# name: (embed_dim, depth, num_heads, cluster MLP hidden size, UPerNet feature indices)
BACKBONES = {
    "tiny": (192, 12, 3, 774, (3, 5, 7, 11)),
    "small": (384, 12, 6, 1548, (3, 5, 7, 11)),
    "base": (768, 12, 12, 3072, (3, 5, 7, 11)),
    "large": (1024, 24, 16, 4128, (7, 11, 15, 23)),
}
HEADS = ("segmenter", "uper")
EMPTY_CLUSTERS = ("drop", "zeros")  # see ModelConfig
DECODER_RESTORE = ("scores", "regenerate")  # see ModelConfig
REGENERATORS = ("mlp", "residual")  # see ModelConfig
RESIZE_MODES = ("stretch", "letterbox")  # how an image of another shape meets the input (preprocessing.letterbox)


@dataclass(frozen=True)
class DataConfig:
    """The model's input contract: normalized RGB images, sides ideally multiples of `patch_size`.

    input_size: (h, w) the model was trained at (other sizes work: position embeddings are resampled).
    patch_size: side of one token's square patch in pixels.
    mean, std:  per-channel RGB normalization on the 0-255 scale: x = (pixel - mean) / std.
    """

    input_size: tuple[int, int]
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """Token grid (rows, cols) of an input of `size` = (h, w); partial patches are padded, so they count."""
        return math.ceil(size[0] / self.patch_size), math.ceil(size[1] / self.patch_size)

    def num_tokens(self, size: tuple[int, int]) -> int:
        """Patch tokens of an input of `size` = (h, w) before merging."""
        rows, cols = self.grid(size)
        return rows * cols

    def check_size(self, size: int | tuple[int, int], what: str = "input size") -> tuple[int, int]:
        """(h, w) of `size` (int = square) if both sides are positive multiples of the patch size, else a ConfigError."""
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        p = self.patch_size
        if min(h, w) < p or h % p or w % p:
            shown = f"{what} {size}" if what.startswith("--") else f"{what}={size}"  # CLI flag or parameter
            raise ConfigError(f"{shown}: use a positive multiple of the model's patch size {p}")
        return h, w


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model; registry YAML files and checkpoint metadata hold the same keys.

    Architecture: backbone (tiny/small/base/large presets; embed_dim, depth, num_heads override them),
    patch_size, img_size (training size, int or [h, w]), k (clusters; None = plain ViT), ip (injection
    point: first block on the reduced sequence; None with k None), cluster_hidden (Cluster MLP width),
    empty_clusters ("drop": an empty cluster leaves the sequence, ours; "zeros": every image keeps k
    cluster tokens, an empty one as a zero token others attend to, and a batch whose tokens all carry
    one id is not merged at all: the ClustViT authors' forward, the default of converted checkpoints),
    cts_reduction (CTS, Content-aware Token Sharing, instead of clustering: a policy network picks 2x2
    patch groups that become one token each, so that this fraction of the patch tokens is removed; None
    = no sharing), decoder_merge (ClustViT + Segmenter head: the head's mask transformer also runs on the
    merged sequence), decoder_restore (how decoder_merge restores per-patch masks: "scores", each clustered
    patch takes its cluster token's mask scores; "regenerate", a second Regenerator restores every patch
    token from its own token at the injection point and its cluster's decoded token before the masks),
    regenerator ("mlp": a clustered patch's token is MLP(own token at ip, cluster token), the paper's;
    "residual": cluster token + that MLP, whose last layer starts at zero, so an untrained Regenerator hands
    every member its cluster's token and a ViT's trained weights keep working when merging starts),
    proportional_attention (after merging, each token's attention logit gets + log(patches it stands for),
    as ToMe does: a cluster token weighs in the attention as its members did, in the blocks and the merged
    decoder; measured on CWFID: a trained ViT run with oracle clusters keeps its accuracy, issue 10),
    head (segmenter | uper), head_layers, uper_indices, uper_channels, drop_path_rate,
    refine_channels (0: off; else the width of a DetailRefiner, a small convolution stack on the input pixels
    and the upsampled class scores that sharpens plant edges finer than a patch; heads.DetailRefiner).
    Classes: num_classes, class_names, palette (RGB per class).
    Input: mean, std (RGB, 0-255 scale).
    Provenance and training: name, dataset (data registry name), weights (trained weights file name),
    pretrained (backbone start for training), train (trainer settings), source (YAML file it came from).
    """

    num_classes: int
    name: str | None = None
    dataset: str | None = None
    class_names: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    backbone: str = "small"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int = 16
    img_size: int | tuple[int, int] = 512
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    k: int | None = None
    ip: int | None = None
    cluster_hidden: int | None = None
    empty_clusters: str = "drop"
    cts_reduction: float | None = None
    decoder_merge: bool = False
    decoder_restore: str = "scores"
    regenerator: str = "mlp"
    proportional_attention: bool = False
    head: str = "segmenter"
    head_layers: int = 2
    uper_indices: tuple[int, ...] | None = None
    uper_channels: int = 512
    drop_path_rate: float = 0.0
    refine_channels: int = 0
    weights: str | None = None
    pretrained: str | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        where = self.source or self.name or "model config"
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731 (frozen: fill derived fields once)
        if self.backbone not in BACKBONES:
            raise ConfigError(f"{where}: backbone={self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        dim, depth, heads, hidden, _ = BACKBONES[self.backbone]
        for key, preset in (("embed_dim", dim), ("depth", depth), ("num_heads", heads)):
            value = preset if getattr(self, key) is None else getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{where}: {key}={value!r}; use an integer >= 1")
            set_(key, int(value))
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"{where}: embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.cluster_hidden is None:
            set_("cluster_hidden", hidden if self.embed_dim == dim else 4 * self.embed_dim)
        n = self.num_classes
        if not _is_int(n) or n < 1:
            raise ConfigError(f"{where}: num_classes={n!r}; set it to the number of classes (an integer >= 1)")
        if not _is_int(self.patch_size) or self.patch_size < 1:
            raise ConfigError(f"{where}: patch_size={self.patch_size!r}; use an integer >= 1 (16 for most ViTs, 14 for DINOv2)")
        size = (self.img_size,) * 2 if _is_int(self.img_size) else tuple(self.img_size)
        if len(size) != 2 or not all(_is_int(s) and s >= self.patch_size for s in size):
            raise ConfigError(f"{where}: img_size={self.img_size!r}; use one side or [h, w] in pixels, at least patch_size={self.patch_size}")
        set_("img_size", int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1])))
        names = tuple(f"class_{i}" for i in range(n)) if self.class_names is None else tuple(str(c) for c in self.class_names)
        if len(names) != n:
            raise ConfigError(f"{where}: class_names lists {len(names)} names for num_classes={n}")
        set_("class_names", names)
        palette = default_palette(n) if self.palette is None else self.palette
        if len(palette) != n or any(len(c) != 3 for c in palette):
            raise ConfigError(f"{where}: palette needs {n} RGB triples, one per class")
        set_("palette", tuple(tuple(int(v) for v in c) for c in palette))
        for key in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, key))
            if len(value) != 3 or (key == "std" and min(value) <= 0):
                raise ConfigError(f"{where}: {key} needs 3 values (R, G, B on the 0-255 scale)" + (", all > 0" if key == "std" else ""))
            set_(key, value)
        if (self.k is None) != (self.ip is None):
            raise ConfigError(f"{where}: k={self.k} and ip={self.ip}: give both (ClustViT) or neither (plain ViT)")
        if self.k is not None:
            if not _is_int(self.k) or self.k < 1:
                raise ConfigError(f"{where}: k={self.k!r}; use k >= 1 clusters, or k=None and ip=None for a plain ViT")
            if not _is_int(self.ip) or not 0 <= self.ip < self.depth:
                raise ConfigError(f"{where}: ip={self.ip!r}: the injection point must be a block index in 0..{self.depth - 1} (depth={self.depth})")
        if self.cts_reduction is not None:
            r = self.cts_reduction
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 0.75:
                raise ConfigError(f"{where}: cts_reduction={r!r}; use a fraction of the patch tokens in (0, 0.75) "
                                  "(sharing every 2x2 group removes 3/4 of them), or null")
            if self.k is not None:
                raise ConfigError(f"{where}: cts_reduction and k/ip both set: a model shares tokens (CTS) or clusters "
                                  "them (ClustViT), not both")
            set_("cts_reduction", float(r))
        if self.empty_clusters not in EMPTY_CLUSTERS:
            raise ConfigError(f"{where}: empty_clusters={self.empty_clusters!r}; choose one of {', '.join(EMPTY_CLUSTERS)}")
        if self.head not in HEADS:
            raise ConfigError(f"{where}: head={self.head!r}; choose one of {', '.join(HEADS)}")
        if not isinstance(self.decoder_merge, bool):
            raise ConfigError(f"{where}: decoder_merge={self.decoder_merge!r}; use true or false")
        if self.decoder_merge and (self.k is None or self.head != "segmenter"):
            raise ConfigError(f"{where}: decoder_merge needs a ClustViT (k, ip) with the Segmenter head "
                              f"(got k={self.k}, head={self.head})")
        if self.decoder_restore not in DECODER_RESTORE:
            raise ConfigError(f"{where}: decoder_restore={self.decoder_restore!r}; choose one of {', '.join(DECODER_RESTORE)} "
                              "(used with decoder_merge: true)")
        if self.regenerator not in REGENERATORS:
            raise ConfigError(f"{where}: regenerator={self.regenerator!r}; choose one of {', '.join(REGENERATORS)}")
        if not isinstance(self.proportional_attention, bool):
            raise ConfigError(f"{where}: proportional_attention={self.proportional_attention!r}; use true or false")
        if not _is_int(self.refine_channels) or self.refine_channels < 0:
            raise ConfigError(f"{where}: refine_channels={self.refine_channels!r}; use 0 (no refiner) or a width such as 16")
        set_("refine_channels", int(self.refine_channels))
        if self.uper_indices is not None:
            set_("uper_indices", tuple(int(i) for i in self.uper_indices))
        set_("train", dict(self.train or {}))

    @property
    def data(self) -> DataConfig:
        """The input contract (size, patch, normalization)."""
        size = (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size
        return DataConfig(input_size=size, patch_size=self.patch_size, mean=self.mean, std=self.std)

    @property
    def clustering(self) -> bool:
        """True for a ClustViT, False for the plain ViT (and for CTS)."""
        return self.k is not None

    @property
    def sharing(self) -> bool:
        """True for a CTS model (Content-aware Token Sharing)."""
        return self.cts_reduction is not None

    @property
    def kind(self) -> str:
        """'clustvit', 'cts' or 'vit' (the plain baseline)."""
        return "clustvit" if self.clustering else "cts" if self.sharing else "vit"

    def replace(self, **changes) -> ModelConfig:
        """A copy with `changes` applied (validated again)."""
        bad = sorted(set(changes) - set(field_names()))
        if bad:
            raise ConfigError(f"unknown setting(s) {bad}; valid settings: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists for tuples); `ModelConfig.from_dict` reads it back."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = _jsonable(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model config") -> ModelConfig:
        """A config from a mapping of setting names (e.g. checkpoint metadata); unknown keys are an error."""
        data = {("source" if k == "_source" else k): v for k, v in data.items()}  # checkpoints written before ModelConfig
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; valid settings: {', '.join(field_names())}")
        if data.get("num_classes") is None:
            raise ConfigError(f"{where}: num_classes is not set; set it to the number of classes")
        return cls(**data)


def field_names() -> tuple[str, ...]:
    """The setting names a YAML file, an override or checkpoint metadata may use."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
