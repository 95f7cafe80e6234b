"""Saving and loading weights: safetensors for our checkpoints, timm ViT checkpoints for the backbone.

Nothing here unpickles arbitrary objects: `.safetensors` files hold tensors only and any
`torch.load` runs with `weights_only=True`.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from .errors import WeightsError

CONFIG_KEY = "clustvit_config"
EXTRA_KEY = "clustvit_extra"


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, Tensor], config: dict | None = None,
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
        metadata[CONFIG_KEY] = json.dumps(config, sort_keys=True)
    if extra is not None:
        metadata[EXTRA_KEY] = json.dumps(extra, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata or None)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


def read_checkpoint_config(path: str | os.PathLike) -> dict | None:
    """The model config stored in a .safetensors checkpoint by `save_checkpoint`, or None."""
    return read_checkpoint_metadata(path)["config"]


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, Tensor]:
    """Tensors of a checkpoint file: .safetensors, or a PyTorch file loaded with weights_only=True.

    Wrapped dicts ({'state_dict': ...}, {'model': ...}) are unwrapped. `what` names the file in errors.
    """
    path = _existing(path, what)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
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
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    return obj


def _existing(path: str | os.PathLike, what: str = "weights file") -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{what} {path} not found: check the path")
    return path


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """[1, P + h0*w0, D] -> [1, P + h*w, D] by bicubic resampling; the old grid must be square."""
    n_old = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise WeightsError(f"pos_embed with {n_old} patch positions is not a square grid; cannot resize it to {grid}")
    if (side, side) == tuple(grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, list(grid), [side, side], num_prefix_tokens=num_prefix_tokens)


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
        raise WeightsError(f"timm checkpoint has keys this backbone lacks (e.g. {unused[:3]}): is it a ViT with patch 16 and a CLS token?")
    out["pos_embed"] = resize_pos_embed(out["pos_embed"], tuple(backbone.grid))
    for key, value in out.items():
        if value.shape != own[key].shape:
            raise WeightsError(f"timm checkpoint {key} has shape {tuple(value.shape)}, backbone expects {tuple(own[key].shape)}: pick the matching backbone size")
    return out


def load_timm_backbone(model: nn.Module, path: str | os.PathLike) -> None:
    """Initialize `model.backbone` from a local timm ViT checkpoint (e.g. vit_small_patch16_384).

    The Cluster module, the Regenerator and the head keep their initialization.
    """
    sd = read_state_dict(path, what="pretrained (timm) checkpoint")
    if not is_timm_vit(sd):
        raise WeightsError(f"{path}: not a timm VisionTransformer checkpoint (no blocks.0.attn.qkv.weight / pos_embed)")
    missing, _ = model.backbone.load_state_dict(timm_to_backbone(sd, model.backbone), strict=False)
    bad = [k for k in missing if not k.startswith(("cluster_mlp.", "regenerator."))]
    if bad:
        raise WeightsError(f"{path}: timm checkpoint lacks backbone weights {bad[:3]}")


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a full ClustViT/ViT checkpoint (ours, .safetensors) into `model`, strictly.

    Position embeddings trained at another size are resampled. mmsegmentation checkpoints must be
    converted first (`python -m clustvit_core.convert`).
    """
    sd = read_state_dict(path)
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
