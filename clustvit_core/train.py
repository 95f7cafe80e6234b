"""Train a registry model: `python -m clustvit_core.train MODEL_OR_YAML [options] [key=value ...]`.

Loss = CE(segmentation logits, labels; 255 ignored) + aux_weight * CE(Cluster-module logits,
pseudo-clusters of the labels). SGD with poly decay. Checkpoints are .safetensors files written
atomically; `--resume` continues bit for bit where the last checkpoint left off (model, optimizer,
iteration, RNG): the data order and every augmentation are pure functions of (seed, position in
the sample stream), so nothing else needs saving. Works under `torchrun --nproc_per_node N`
(DistributedDataParallel; rank 0 logs, validates and writes checkpoints).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .config import ModelConfig, field_names
from .data import IGNORE_INDEX, build_dataset
from .data.transforms import TrainTransform
from .devices import resolve_device
from .errors import ConfigError, cli_errors
from .evaluate import evaluate
from .pseudo import block_purity, pseudo_clusters
from .registry import build_model, load_config, parse_overrides
from .pretrained import load_pretrained_backbone
from .weights import load_trained_start, restore_training_state, save_checkpoint, training_state

OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHT_MODES = ("auto", "sqrt")


@dataclass(frozen=True)
class TrainSettings:
    """Trainer settings: defaults here, overridable in a model YAML's `train:` mapping and on the command line."""

    iters: int = 80000
    batch_size: int = 8  # per process
    optimizer: str = "sgd"  # sgd (the paper's) | adamw (the usual ViT fine-tuning recipe)
    lr: float = 1e-3
    min_lr: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0  # linear warm-up from lr * 1e-3 over this many iterations, then poly decay
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    weight_decay: float = 0.0  # not applied to biases, norms, position embeddings and the CLS token
    layer_decay: float = 1.0  # layer-wise lr decay: block i gets lr * layer_decay ** (depth - i); head and Cluster module full lr
    class_weights: Any = None  # None | "auto" (median-frequency balancing over the training labels) | "sqrt" (its
    # square root: a gentler balance) | [w_0, ..., w_C-1]
    grad_clip: float | None = None  # clip the gradients' global L2 norm to this (null: no clipping)
    ohem_thresh: float | None = None  # online hard example mining: keep pixels whose true-class probability < this
    ohem_min_kept: int = 100000  # ... but at least this many pixels per batch (mmseg's OHEMPixelSampler)
    aux_weight: float = 0.1
    crop_size: int | None = None  # training crop side; default: img_size (its short side if [h, w]). Images are first
    # resized towards the img_size short side (times a ratio in `scale`), so crop_size < img_size trains on crops of
    # images at the resolution the model is evaluated at.
    scale: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    seed: int = 0
    num_workers: int = 2
    amp: bool = False
    log_interval: int = 10
    val_interval: int = 1000
    val_images: int = 100  # at most this many validation images per validation
    ckpt_interval: int = 1000
    keep_last: int = 3
    init_from: str | None = None  # a trained model's weights (ours) to start from instead of `pretrained:`, e.g. a
    # ClustViT from a trained ViT: its Cluster module and Regenerator start fresh (weights.load_trained_start)
    train_only: tuple[str, ...] | None = None  # parameter-name prefixes that train, the rest frozen, e.g.
    # [backbone.cluster_mlp]: only the Cluster module learns (its loss), on a ViT started with init_from
    teacher_iters: int = 0  # ClustViT: for the first N iterations the merge uses the pseudo-clusters (the Cluster
    # module's targets) instead of the module's own choice, so that the blocks after ip do not start on a fresh
    # module's merges (nearly every token into a cluster); the module learns from its loss all along

    def __post_init__(self) -> None:
        for key in ("iters", "batch_size", "log_interval", "val_interval", "ckpt_interval", "keep_last", "val_images"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}={value!r}: must be an integer >= 1")
        for key in ("lr", "min_lr", "power", "momentum", "weight_decay", "layer_decay", "aux_weight", "cat_max_ratio"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{key}={value!r}: must be a number")
        if self.crop_size is not None and (not isinstance(self.crop_size, int) or self.crop_size < 1):
            raise ConfigError(f"crop_size={self.crop_size!r}: must be a positive integer (pixels) or null")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers!r}: must be an integer >= 0")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        if len(tuple(self.scale)) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"scale={list(self.scale)}: need [low, high] with 0 < low <= high")
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not isinstance(self.warmup_iters, int) or not 0 <= self.warmup_iters < self.iters:
            raise ConfigError(f"warmup_iters={self.warmup_iters!r}: must be an integer in 0..iters-1")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay={self.layer_decay}: must lie in (0, 1] (1 = no decay)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay}: must be >= 0")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas={list(self.betas)}: need [beta1, beta2] in [0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        cw = self.class_weights
        if cw is not None and cw not in CLASS_WEIGHT_MODES and (not isinstance(cw, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in cw)):
            raise ConfigError(f"class_weights={cw!r}: use auto, sqrt or a list of one weight >= 0 per class")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float))
                                           or not self.grad_clip > 0):
            raise ConfigError(f"grad_clip={self.grad_clip!r}: must be a number > 0 (or null: no clipping)")
        if self.ohem_thresh is not None and not 0 < self.ohem_thresh <= 1:
            raise ConfigError(f"ohem_thresh={self.ohem_thresh}: must lie in (0, 1] (or null: plain cross-entropy)")
        if self.init_from is not None and not isinstance(self.init_from, (str, os.PathLike)):
            raise ConfigError(f"init_from={self.init_from!r}: give the path of a trained model's .safetensors (or null)")
        if self.train_only is not None:
            only = [self.train_only] if isinstance(self.train_only, str) else self.train_only
            if not only or not all(isinstance(p, str) and p for p in only):
                raise ConfigError(f"train_only={self.train_only!r}: give parameter-name prefixes, e.g. [backbone.cluster_mlp]")
            object.__setattr__(self, "train_only", tuple(only))
        if not isinstance(self.teacher_iters, int) or isinstance(self.teacher_iters, bool) or self.teacher_iters < 0:
            raise ConfigError(f"teacher_iters={self.teacher_iters!r}: must be an integer >= 0 (0: the module merges from the start)")
        if not isinstance(self.ohem_min_kept, int) or self.ohem_min_kept < 0:
            raise ConfigError(f"ohem_min_kept={self.ohem_min_kept!r}: must be an integer >= 0")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(cls, cfg: ModelConfig, overrides: dict | None = None) -> TrainSettings:
        """Defaults <- the model config's `train:` mapping <- `overrides`; unknown names are an error."""
        merged = {**cfg.train, **(overrides or {})}
        unknown = sorted(set(merged) - set(cls.names()))
        if unknown:
            raise ConfigError(f"{cfg.source or cfg.name}: unknown train setting(s) {unknown}; valid: {', '.join(cls.names())}")
        return cls(**merged)

    def to_dict(self) -> dict:
        d = {**asdict(self), "scale": list(self.scale), "betas": list(self.betas)}
        if self.train_only is not None:
            d["train_only"] = list(self.train_only)
        if isinstance(self.class_weights, tuple):
            d["class_weights"] = list(self.class_weights)
        return d


CKPT_DIR = "checkpoints"
CKPT_NAME = re.compile(r"iter_(\d{7})\.safetensors$")


# ----------------------------------------------------------------------------- data stream


class SampleStream(torch.utils.data.Dataset):
    """Position p of an endless stream of augmented training samples.

    Epoch e = p // n visits the dataset in a permutation seeded by (seed, e); the augmentation of
    position p is seeded by (seed, p). So the stream is a pure function of the seed: a resumed run,
    any number of loader workers and any number of processes see exactly the same samples.
    """

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    @functools.lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __len__(self) -> int:  # positions are unbounded; the batch sampler decides which to read
        return sys.maxsize

    def __getitem__(self, position: int):
        n = len(self.dataset)
        sample = self.dataset[int(self._permutation(position // n)[position % n])]
        aug_seed = int(np.random.default_rng([self.seed, 1, position]).integers(2**31))
        return self.transform(sample.image, sample.labels, seed=aug_seed)


class StreamBatches(torch.utils.data.Sampler):
    """Batches of stream positions for iterations start..stop-1; process `rank` of `world` takes its share
    of each global batch (the role DistributedSampler plays for epoch-based loaders)."""

    def __init__(self, batch_size: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.batch_size, self.start, self.stop, self.rank, self.world = batch_size, start, stop, rank, world

    def __iter__(self):
        for it in range(self.start, self.stop):
            first = (it * self.world + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return self.stop - self.start


# ----------------------------------------------------------------------------- pieces


def poly_lr(it: int, iters: int, lr: float, min_lr: float, power: float, warmup_iters: int = 0) -> float:
    """Polynomial decay from lr to min_lr over `iters` iterations, after a linear warm-up from lr * 1e-3."""
    decayed = (lr - min_lr) * (1 - it / iters) ** power + min_lr
    if it < warmup_iters:
        return decayed * (1e-3 + (1 - 1e-3) * it / warmup_iters)
    return decayed


def layer_index(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for the patch/position/CLS embeddings, i + 1 for
    `backbone.blocks.i`, depth + 1 for everything learned from scratch on top (final norm, Cluster MLP,
    Regenerator, head, refiner)."""
    if name.startswith(("backbone.patch_embed.", "backbone.pos_embed", "backbone.cls_token")):
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def param_groups(model, weight_decay: float, layer_decay: float) -> list[dict]:
    """Optimizer parameter groups with an `lr_scale` each (layer_decay ** (depth + 1 - layer_index));
    biases, norm weights, the position embedding and the CLS token get no weight decay."""
    depth = model.config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_index(name, depth)
        no_decay = p.ndim == 1 or name.endswith(("pos_embed", "cls_token"))
        group = groups.setdefault((layer, no_decay), {
            "params": [], "lr_scale": layer_decay ** (depth + 1 - layer), "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def freeze_except(model, prefixes: tuple[str, ...]) -> str:
    """Freeze every parameter whose name starts with none of `prefixes`; one line saying what trains."""
    trained = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        trained += p.numel() if p.requires_grad else 0
    if not trained:
        tops = sorted({n.rsplit(".", 2)[0] for n, _ in model.named_parameters()})
        raise ConfigError(f"train_only={list(prefixes)}: no parameter of this model starts with it; e.g. {', '.join(tops[-6:])}")
    total = sum(p.numel() for p in model.parameters())
    return f"train_only: {trained:,} of {total:,} parameters train ({', '.join(prefixes)}), the rest is frozen"


def build_optimizer(model, s: TrainSettings) -> torch.optim.Optimizer:
    groups = param_groups(model, s.weight_decay, s.layer_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas)
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum)


def class_frequencies(dataset, num_classes: int, max_images: int = 200) -> np.ndarray:
    """Share of labelled pixels per class over (at most `max_images` evenly spaced) training images."""
    n = len(dataset)
    counts = np.zeros(num_classes, np.float64)
    for i in np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int)):
        labels = dataset[int(i)].labels
        counts += np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1.0)


def median_frequency_weights(freq: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c over present classes; absent classes 0."""
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                      ohem_thresh: float | None = None, ohem_min_kept: int = 100000) -> torch.Tensor:
    """Cross-entropy of logits [B, C, H, W] against labels [B, H, W] (255 ignored), optionally class-weighted
    (weighted mean) and with online hard example mining as mmseg's OHEMPixelSampler: only pixels whose
    true-class probability is below max(ohem_thresh, the ohem_min_kept-th smallest probability) count."""
    if ohem_thresh is None:
        return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        valid = labels != IGNORE_INDEX
        prob = logits.softmax(1).gather(1, labels.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
        values = prob[valid].sort().values
        thresh = ohem_thresh
        if values.numel():
            thresh = max(thresh, float(values[min(ohem_min_kept, values.numel() - 1)]))
        hard = valid & (prob < thresh)
    per_pixel = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
    if not hard.any():
        return per_pixel.sum() * 0.0
    if weight is None:
        return per_pixel[hard].mean()
    return per_pixel[hard].sum() / weight[labels[hard]].sum()


def patch_size(model) -> int:
    """The patch size of a model, also through a DistributedDataParallel wrapper."""
    return getattr(model, "module", model).config.patch_size


def compute_loss(model, images, labels, aux_weight: float, class_weight: torch.Tensor | None = None,
                 ohem_thresh: float | None = None, ohem_min_kept: int = 100000,
                 teacher: bool = False) -> tuple[torch.Tensor, dict]:
    """(total loss, {"seg": ..., "cluster" (ClustViT) / "policy" (CTS): ..., "tokens": ...}) for a batch.
    `teacher`: a ClustViT merges with the pseudo-clusters of `labels` instead of its Cluster module's choice."""
    config = getattr(model, "module", model).config
    # the pseudo-clusters: the Cluster module's targets, and with `teacher` also the merge
    clusters = pseudo_clusters(labels, config.k, patch=config.patch_size) if config.clustering else None
    out = model(images, cluster_ids=clusters) if teacher and clusters is not None else model(images)
    seg = segmentation_loss(out.logits.float(), labels, class_weight, ohem_thresh, ohem_min_kept)
    parts = {"seg": seg.detach(), "tokens": out.tokens.float().mean()}
    loss = seg
    if out.cluster_logits is not None:
        target = clusters.flatten(1)
        cluster = F.cross_entropy(out.cluster_logits.float().flatten(0, 1), target.flatten())
        parts["cluster"] = cluster.detach()
        loss = seg + aux_weight * cluster
    if out.policy_logits is not None:  # CTS: the policy learns block purity jointly, weighted like the cluster loss
        logits = out.policy_logits.float()
        target = block_purity(labels, 2 * patch_size(model), tuple(logits.shape[-2:]))
        policy = F.binary_cross_entropy_with_logits(logits, target)
        parts["policy"] = policy.detach()
        loss = loss + aux_weight * policy
    return loss, parts


def split_overrides(items: list[str]) -> tuple[dict, dict]:
    """key=value items -> (model config overrides, trainer overrides); `train.KEY=...` forces the trainer."""
    model_over, train_over = {}, {}
    for key, value in parse_overrides(items).items():
        name = key.removeprefix("train.")
        if key.startswith("train.") or (name in TrainSettings.names() and name not in field_names()):
            if name not in TrainSettings.names():
                raise ConfigError(f"unknown train setting {name!r}; valid: {', '.join(TrainSettings.names())}")
            train_over[name] = value
        else:
            model_over[key] = value
    return model_over, train_over


def latest_checkpoint(work_dir: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in (work_dir / CKPT_DIR).glob("iter_*.safetensors") if (m := CKPT_NAME.search(p.name)))
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Trains one model config with one set of settings; `run()` returns the final weights file.

    Args:
        cfg: the model to train (its `pretrained`, `dataset` and `train` fields are used).
        settings: trainer settings (`TrainSettings.from_config(cfg, overrides)`).
        work_dir: output folder (default work_dirs/NAME).
        data_root: dataset folder (default: the dataset's own location).
        device: auto | cpu | cuda | cuda:N (under torchrun, "cuda" means this process's local GPU).
        resume: continue from the newest checkpoint in `work_dir`.
        quiet: plain log lines instead of a progress bar.
    """

    def __init__(self, cfg: ModelConfig, settings: TrainSettings, *, work_dir: str | Path | None = None,
                 data_root: str | Path | None = None, device: str = "auto", resume: bool = False, quiet: bool = False):
        self.cfg, self.settings = cfg, settings
        self.work_dir = Path(work_dir or Path("work_dirs") / (cfg.name or "model"))
        self.data_root, self.resume, self.quiet = data_root, resume, quiet
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed:
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = self._device(device)
        self.is_main = self.rank == 0

    def _device(self, name: str) -> torch.device:
        if self.distributed and name in ("cuda", "auto") and torch.cuda.is_available():
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        device = resolve_device(name, what="--device")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def run(self) -> Path:
        s, cfg = self.settings, self.cfg
        torch.manual_seed(s.seed)
        model = build_model(cfg)
        if s.init_from:
            self.log(load_trained_start(model, s.init_from))
        elif cfg.pretrained:
            self.log(load_pretrained_backbone(model, cfg.pretrained))
        elif self.is_main:
            self.log("no `pretrained:` checkpoint in the config: training from random initialization")
        if s.train_only:
            self.log(freeze_except(model, s.train_only))
        model.to(self.device).train()
        optimizer = build_optimizer(model, s)
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        scaler = torch.amp.GradScaler(self.device.type) if s.amp and amp_dtype == torch.float16 else None

        start, extra = 0, {}
        ckpt = latest_checkpoint(self.work_dir) if self.resume else None
        if self.resume and ckpt is None:
            self.log(f"--resume: no checkpoint in {self.work_dir / CKPT_DIR}; starting from iteration 0")
        if ckpt is not None:
            extra = restore_training_state(ckpt, model, optimizer)
            if scaler is not None and extra.get("scaler"):
                scaler.load_state_dict(extra["scaler"])
            start = int(extra["iteration"])
            self.log(f"resumed from {ckpt} (iteration {start})")
        best = extra.get("best_miou")

        train_set = build_dataset(cfg.dataset, "train", root=self.data_root)
        if len(train_set) == 0:
            raise ConfigError(f"dataset {cfg.dataset!r} has no training images")
        val_set = build_dataset(cfg.dataset, "val", root=self.data_root) if self.is_main else None
        class_weight = self._class_weight(train_set)
        base = min(cfg.data.input_size)
        transform = TrainTransform(s.crop_size or base, cfg.mean, cfg.std, scale=s.scale, cat_max_ratio=s.cat_max_ratio,
                                   base_size=base)
        stream = SampleStream(train_set, transform, s.seed)
        loader = torch.utils.data.DataLoader(
            stream, batch_sampler=StreamBatches(s.batch_size, start, s.iters, self.rank, self.world),
            num_workers=s.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(s.seed),  # keeps the loader off the global RNG (bit-exact resume)
        )
        net = model
        if self.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None, find_unused_parameters=model.clustering
            )

        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "train": s.to_dict(), "world_size": self.world}, indent=2, default=str))
        csv_log = self.work_dir / "metrics.csv" if self.is_main else None
        board = self._tensorboard() if self.is_main else None
        bar = tqdm(total=s.iters, initial=start, desc=cfg.name, disable=not self.is_main or self.quiet, dynamic_ncols=True)
        seen, t0 = 0, time.perf_counter()
        it = start
        try:
            for images, labels in loader:
                lr = poly_lr(it, s.iters, s.lr, s.min_lr, s.power, s.warmup_iters)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=s.amp):
                    loss, parts = compute_loss(net, images, labels, s.aux_weight, class_weight, s.ohem_thresh, s.ohem_min_kept,
                                               teacher=it < s.teacher_iters)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if s.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(net.parameters(), s.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if s.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), s.grad_clip)
                    optimizer.step()
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"loss became {loss.item()} at iteration {it + 1}; lower lr (now {lr:.2e}) or disable --amp")
                it += 1
                seen += images.shape[0] * self.world
                bar.update(1)
                if it % s.log_interval == 0 or it == s.iters:
                    rate = seen / (time.perf_counter() - t0)
                    row = {"iter": it, "loss": loss.item(), "seg_loss": parts["seg"].item(), "lr": lr, "img_s": rate,
                           "train_tokens": parts["tokens"].item()}
                    for part in ("cluster", "policy"):  # a plain ViT has neither: nothing is logged for it
                        if part in parts:
                            row[f"{part}_loss"] = parts[part].item()
                    shown = {"loss": row["loss"], "seg": row["seg_loss"], "cluster": row.get("cluster_loss"),
                             "policy": row.get("policy_loss")}
                    shown = {k: f"{v:.4f}" for k, v in shown.items() if v is not None}
                    bar.set_postfix(**shown, lr=f"{lr:.1e}", img_s=f"{rate:.1f}")
                    self._record(csv_log, board, row)
                    if self.quiet and self.is_main:
                        print(f"iter {it}/{s.iters} " + " ".join(f"{k} {v}" for k, v in shown.items()) + f" lr {lr:.3e}", flush=True)
                if self.is_main and (it % s.val_interval == 0 or it == s.iters):
                    metrics = self._validate(model, val_set)
                    self._record(csv_log, board, {"iter": it, **{f"val_{k}": v for k, v in metrics.items()}})
                    self.log(f"iteration {it}: val mIoU {metrics['miou']:.4f}, tokens {metrics['tokens_mean']:.1f}")
                    if best is None or metrics["miou"] > best or (math.isnan(best) and not math.isnan(metrics["miou"])):
                        best = metrics["miou"]
                        save_checkpoint(self.work_dir / "best.safetensors", model.state_dict(), cfg, {"iteration": it, "miou": best})
                if self.is_main and (it % s.ckpt_interval == 0 or it == s.iters):
                    self._save(model, optimizer, scaler, it, best)
        except KeyboardInterrupt:
            if self.is_main and it > start:
                path = self._save(model, optimizer, scaler, it, best)
                self.log(f"interrupted: state saved to {path}; continue with --resume")
            raise
        finally:
            bar.close()
            if board is not None:
                board.close()
            if self.distributed:
                dist.destroy_process_group()
        final = self.work_dir / "final.safetensors"
        if self.is_main:
            save_checkpoint(final, model.state_dict(), cfg, {"iteration": it, "best_miou": best})
            self.log(f"done: {final}" + (f" (best val mIoU {best:.4f}: {self.work_dir / 'best.safetensors'})" if best is not None else ""))
        return final

    def _class_weight(self, train_set) -> torch.Tensor | None:
        """The cross-entropy class weights the settings ask for (None: unweighted)."""
        cw, n = self.settings.class_weights, self.cfg.num_classes
        if cw is None:
            return None
        if cw in CLASS_WEIGHT_MODES:
            freq = class_frequencies(train_set, n)
            weights = median_frequency_weights(freq)
            if cw == "sqrt":
                weights = np.sqrt(weights)
            self.log(f"class weights ({'square root of ' if cw == 'sqrt' else ''}median-frequency balancing): "
                     + ", ".join(f"{c} {w:.2f} ({100 * f:.1f} % of pixels)" for c, w, f in zip(self.cfg.class_names, weights, freq)))
        else:
            if len(cw) != n:
                raise ConfigError(f"class_weights lists {len(cw)} weights for {n} classes ({', '.join(self.cfg.class_names)})")
            weights = np.asarray(cw, np.float64)
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _save(self, model, optimizer, scaler, it: int, best) -> Path:
        extra = {"iteration": it, "best_miou": best, "settings": self.settings.to_dict()}
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        path = save_checkpoint(self.work_dir / CKPT_DIR / f"iter_{it:07d}.safetensors", training_state(model, optimizer), self.cfg, extra)
        old = sorted(p for p in (self.work_dir / CKPT_DIR).glob("iter_*.safetensors") if CKPT_NAME.search(p.name))
        for stale in old[: -self.settings.keep_last]:
            stale.unlink()
        return path

    def _validate(self, model, val_set) -> dict:
        was_training = model.training
        model.eval()
        rng_state = torch.get_rng_state()  # validation must not shift the training RNG stream
        try:
            result = evaluate(model, val_set, max_images=self.settings.val_images, device=self.device, progress=False)
        finally:
            torch.set_rng_state(rng_state)
            model.train(was_training)
        miou = result.miou  # None when the validation images hold no labelled pixel
        return {"miou": float("nan") if miou is None else float(miou), "tokens_mean": float(result.tokens.mean)}

    def _record(self, csv_path, board, row: dict) -> None:
        if csv_path is None:
            return
        new = not csv_path.exists()
        with csv_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["iter", "name", "value"])
            for key, value in row.items():
                if key != "iter":
                    writer.writerow([row["iter"], key, value])
        if board is not None:
            for key, value in row.items():
                if key != "iter":
                    board.add_scalar(key, value, row["iter"])

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.work_dir / "tensorboard"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clustvit_core.train",
        description="Train a ClustViT (or plain ViT) segmentation model from the registry or a YAML file. "
        "Writes work_dirs/NAME/{checkpoints/iter_*.safetensors, best.safetensors, final.safetensors, metrics.csv, config.json}.",
        epilog="Examples:\n"
        "  python -m clustvit_core.train cwfid_k3_ip3 --data-root ../shared/data/cwfid --iters 20000\n"
        "  python -m clustvit_core.train synthetic_agri_k3_ip3_base --iters 2000 --batch-size 8 lr=0.01 img_size=256\n"
        "  python -m clustvit_core.train cwfid_k3_ip3 --resume            # continue after a crash or Ctrl-C\n"
        "  torchrun --nproc_per_node 2 -m clustvit_core.train cwfid_k3_ip3  # one process per GPU\n"
        "key=value overrides set model settings (backbone, k, ip, img_size, pretrained, ...) or trainer\n"
        f"settings ({', '.join(TrainSettings.names())}); prefix train. to force the latter.\n"
        "--batch-size is per process. `pretrained: PATH` in the model YAML (or pretrained=PATH) starts the\n"
        "backbone from a local timm ImageNet ViT checkpoint; without it training starts from random weights.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="registry name (see config/models/) or path to a model .yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="model or trainer settings, e.g. lr=0.01 k=2")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's environment variable / default location)")
    parser.add_argument("--work-dir", default=None, help="output folder (default work_dirs/MODEL)")
    parser.add_argument("--iters", type=int, default=None, help=f"training iterations (default {TrainSettings.iters})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per iteration and process (default {TrainSettings.batch_size})")
    parser.add_argument("--seed", type=int, default=None, help="seed of initialization, data order and augmentation (default 0)")
    parser.add_argument("--num-workers", type=int, default=None, help="data loader worker processes (default 2)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 on GPU, bf16 on CPU)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    with cli_errors("clustvit_core.train"):
        model_over, train_over = split_overrides(args.overrides)
        for key in ("iters", "batch_size", "seed", "num_workers"):
            if getattr(args, key) is not None:
                train_over[key] = getattr(args, key)
        if args.amp:
            train_over["amp"] = True
        cfg = load_config(args.model, **model_over)
        settings = TrainSettings.from_config(cfg, train_over)
        trainer = Trainer(cfg, settings, work_dir=args.work_dir, data_root=args.data_root, device=args.device,
                          resume=args.resume, quiet=args.quiet)
        try:
            trainer.run()
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
