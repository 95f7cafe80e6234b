"""Checkpoints of every kind: saving and loading weights, training state, timm ViT backbones.

Two kinds of file, one format (.safetensors, the `ModelConfig` and JSON extras in its metadata):
- weights: the model's state dict under its own keys (trainer's best/final, `export`, `convert`);
- training checkpoints (`checkpoints/iter_*.safetensors`): the model under `model.*`, the optimizer
  state under `optim.{i}.{name}` (i = parameter index over the optimizer's groups), RNG states under
  `rng.torch` / `rng.cuda.{i}`, and the iteration etc. in the extras.
`load_weights` accepts both. Nothing here unpickles arbitrary objects: `.safetensors` files hold
tensors only and any `torch.load` runs with `weights_only=True`.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ModelConfig
from .errors import ConfigError, WeightsError
from .model import resample_pos_embed

CONFIG_KEY = "clustvit_config"
EXTRA_KEY = "clustvit_extra"
MODEL_PREFIX = "model."  # training checkpoints: model tensors under this prefix


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, Tensor], config: ModelConfig | dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write tensors (+ the model config and any JSON-able `extra` as metadata) to a .safetensors file atomically.

    The file is written and flushed to disk next to its destination, then renamed into place, so a
    reader never sees half a file, even if the writer is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {}
    if config is not None:
        config = config.to_dict() if isinstance(config, ModelConfig) else config
        metadata[CONFIG_KEY] = json.dumps(config, sort_keys=True)
    if extra is not None:
        metadata[EXTRA_KEY] = json.dumps(extra, sort_keys=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata or None)
        os.chmod(tmp, 0o666 & ~_umask())  # save_file (like mkstemp) makes 0600: unreadable to a robot's service account
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def read_checkpoint_metadata(path: str | os.PathLike) -> dict:
    """{"config": ..., "extra": ...} stored in a .safetensors checkpoint by `save_checkpoint` (None where absent)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); re-export or re-download it") from None
    return {name: json.loads(meta[key]) if key in meta else None for name, key in (("config", CONFIG_KEY), ("extra", EXTRA_KEY))}


def read_checkpoint_config(path: str | os.PathLike) -> ModelConfig | None:
    """The model config stored in a .safetensors checkpoint by `save_checkpoint`, or None."""
    stored = read_checkpoint_metadata(path)["config"]
    if stored is None:
        return None
    try:
        return ModelConfig.from_dict(stored, where=f"{path} (stored config)")
    except ConfigError as exc:
        raise WeightsError(f"{exc}; pass the model name explicitly") from None


def is_training_checkpoint(state_dict: dict[str, Tensor]) -> bool:
    """True for a trainer's `checkpoints/iter_*.safetensors` (model under `model.*`, optimizer, RNG)."""
    return any(k.startswith(MODEL_PREFIX) for k in state_dict) and any(k.startswith(("optim.", "rng.")) for k in state_dict)


def model_tensors(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's own state dict in a file of either kind (training checkpoints: `model.*` unprefixed)."""
    if is_training_checkpoint(state_dict):
        return {k[len(MODEL_PREFIX):]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}
    return state_dict


def training_state(model: nn.Module, optimizer) -> dict[str, Tensor]:
    """Model, optimizer and RNG state as the tensors of a training checkpoint (layout: module docstring)."""
    tensors = {f"{MODEL_PREFIX}{k}": v for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for name, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                tensors[f"optim.{i}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def restore_training_state(path: str | os.PathLike, model: nn.Module, optimizer) -> dict:
    """Load a training checkpoint into `model` and `optimizer`, restore the RNG states; returns its extras."""
    tensors = read_state_dict(path, what="training checkpoint")
    if not is_training_checkpoint(tensors):
        raise WeightsError(f"{path}: not a training checkpoint (no model.* / optim.* tensors); start without --resume")
    model.load_state_dict(model_tensors(tensors), strict=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            optimizer.state[params[int(i)]][name] = value.to(params[int(i)].device)
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return read_checkpoint_metadata(path)["extra"] or {}


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, Tensor]:
    """Tensors of a checkpoint file: .safetensors, or a PyTorch file loaded with weights_only=True.

    Wrapped dicts ({'state_dict': ...}, {'model': ...}) are unwrapped. `what` names the file in errors.
    """
    return read_torch_checkpoint(path, what)[0]


def read_torch_checkpoint(path: str | os.PathLike, what: str = "weights file") -> tuple[dict[str, Tensor], dict]:
    """(state dict, meta) of a checkpoint file; meta is an mmengine/mmseg checkpoint's `meta` dict
    (e.g. its `cfg` text) where the file has one that loads without unpickling objects, else {}."""
    path = _existing(path, what)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)), {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}); re-export or re-download it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: cannot be read as a tensors-only PyTorch checkpoint ({first}); "
            "convert it to .safetensors in a trusted environment"
        ) from None
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    return obj, meta


def _existing(path: str | os.PathLike, what: str = "weights file") -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{what} {path} not found: check the path")
    return path


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """[1, P + h0*w0, D] -> [1, P + h*w, D] (`model.resample_pos_embed`); the stored grid must be square."""
    n_old = pos_embed.shape[1] - num_prefix_tokens
    if n_old == grid[0] * grid[1]:  # the stored grid is the target grid (also when not square)
        return pos_embed
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise WeightsError(f"pos_embed with {n_old} patch positions is not a square grid; cannot resize it to {grid}")
    if (side, side) == tuple(grid):
        return pos_embed
    return resample_pos_embed(pos_embed, grid, (side, side), num_prefix_tokens)


def is_timm_vit(state_dict: dict[str, Tensor]) -> bool:
    return "blocks.0.attn.qkv.weight" in state_dict and "pos_embed" in state_dict


def is_mmseg(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith(("backbone.layers.", "decode_head.")) for k in state_dict)


def timm_to_backbone(state_dict: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """timm VisionTransformer state dict -> our backbone's keys (classifier dropped, pos_embed resized)."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = backbone.state_dict()
    out = {k: v for k, v in sd.items() if k in own or k == "pos_embed"}
    unused = sorted(k for k in sd if k not in out and not k.startswith(("head.", "fc_norm.", "head_drop.")))
    if unused:
        raise WeightsError(f"timm checkpoint has keys this backbone lacks (e.g. {unused[:3]}): is it a plain ViT with a CLS token?")
    out["pos_embed"] = resize_pos_embed(out["pos_embed"], tuple(backbone.grid))
    for key, value in out.items():
        if value.shape != own[key].shape:
            raise WeightsError(f"timm checkpoint {key} has shape {tuple(value.shape)}, backbone expects {tuple(own[key].shape)}: pick the matching backbone size")
    return out


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a full ClustViT/ViT checkpoint (ours, .safetensors: weights or a training checkpoint) into
    `model`, strictly.

    Position embeddings trained at another size are resampled. mmsegmentation checkpoints must be
    converted first (`python -m clustvit_core.convert`).
    """
    sd = model_tensors(read_state_dict(path))
    if is_mmseg(sd):
        raise WeightsError(f"{path}: this is an mmsegmentation checkpoint; convert it with `python -m clustvit_core.convert {path} OUT.safetensors --model NAME`")
    if is_timm_vit(sd):
        raise WeightsError(f"{path}: this is a timm ImageNet backbone, not a segmentation model; use it as `pretrained:` for training")
    key = "backbone.pos_embed"
    if key in sd:
        sd[key] = resize_pos_embed(sd[key], tuple(model.backbone.grid))
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        hint = ""
        if any(k.startswith("backbone.cluster_mlp.") for k in unexpected):
            hint = " (the file is a ClustViT, the model a plain ViT)"
        elif any(k.startswith("backbone.cluster_mlp.") for k in missing):
            hint = " (the file is a plain ViT, the model a ClustViT)"
        raise WeightsError(
            f"{path} does not fit this model{hint}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}; check the model name and overrides"
        )
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise WeightsError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; check num_classes/backbone/k")
    model.load_state_dict(sd, strict=True)


# the modules a trained plain ViT lacks (the merging modules, the pixel refiner): a model that has them can start
# from the ViT's weights (`load_trained_start`), and they keep their initialization
ADDED_MODULES = ("backbone.cluster_mlp.", "backbone.regenerator.", "decoder_regenerator.", "backbone.policy.", "refiner.")


def load_trained_start(model: nn.Module, path: str | os.PathLike) -> str:
    """Start `model` from another trained model of ours (e.g. a ClustViT or CTS from a trained plain ViT with the
    same backbone and head): every tensor loads; the added modules the file lacks (`ADDED_MODULES`: merging modules, the refiner)
    keep their initialization, and added modules the model lacks are left out. Anything else that does not fit
    is a WeightsError. Returns one line saying what was loaded."""
    sd = model_tensors(read_state_dict(path, what="init_from weights"))
    if is_mmseg(sd) or is_timm_vit(sd):
        raise WeightsError(f"init_from={path}: not a model trained here (convert mmsegmentation checkpoints first; "
                           "an ImageNet backbone goes to `pretrained:`)")
    key = "backbone.pos_embed"
    if key in sd:
        sd[key] = resize_pos_embed(sd[key], tuple(model.backbone.grid))
    own = model.state_dict()
    fresh = sorted(k for k in set(own) - set(sd))
    left = sorted(k for k in set(sd) - set(own))
    bad = [k for k in fresh + left if not k.startswith(ADDED_MODULES)]
    bad += [k for k in set(sd) & set(own) if sd[k].shape != own[k].shape]
    if bad:
        raise WeightsError(f"init_from={path} does not fit this model: {sorted(bad)[:3]} (missing, unexpected or of "
                           "another shape); start from a model with the same backbone, head and classes")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    modules = lambda keys: sorted({k.rsplit(".", 2)[0] for k in keys})  # noqa: E731
    return (f"started from {path}: {len(own) - len(fresh)} of {len(own)} tensors"
            + (f"; initialized here: {', '.join(modules(fresh))}" if fresh else "")
            + (f"; left out: {', '.join(modules(left))}" if left else ""))
