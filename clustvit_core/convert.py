"""Convert the ClustViT authors' mmsegmentation checkpoints into this package's state dict.

The authors trained ClustViT (and the plain ViT baselines) with mmsegmentation 1.x. Their
checkpoints hold `state_dict` with keys `backbone.*` (mmseg `VisionTransformer` / their `ClustViT`),
`decode_head.*` (`SegmenterMaskTransformerHead` or `UPerHead`) and sometimes `auxiliary_head.*`.
This module renames them to our keys (timm naming in the backbone and in the Segmenter layers,
mmseg naming kept in UPerNet), resizes the position embedding to the model's grid and writes a
.safetensors file that `build_model(..., weights=...)` loads strictly.

    python -m clustvit_core.convert iter_80000.pth weights/rumexweeds_k3_ip4.safetensors --model rumexweeds_k3_ip4

Key mapping (mmseg -> ours), `L` = one transformer layer, in the backbone (`backbone.layers.N` ->
`backbone.blocks.N`) and in the Segmenter head (`decode_head.layers.N` -> `head.layers.N`):

    L.ln1.*                       -> norm1.*
    L.attn.attn.in_proj_weight    -> attn.qkv.weight      ([3D, D], q/k/v stacked in the same order)
    L.attn.attn.in_proj_bias      -> attn.qkv.bias
    L.attn.attn.out_proj.*        -> attn.proj.*
    L.ln2.*                       -> norm2.*
    L.ffn.layers.0.0.*            -> mlp.fc1.*
    L.ffn.layers.1.*              -> mlp.fc2.*
    backbone.cls_token, pos_embed -> backbone.cls_token, pos_embed (resized to the model grid)
    backbone.patch_embed.projection.* -> backbone.patch_embed.proj.* (bias zero-filled when absent)
    backbone.ln1.* (final norm)   -> backbone.norm.*
    backbone.clusterer.net.0/2.*  -> backbone.cluster_mlp.fc1/fc2.*
    backbone.expand_mlp.0/2.*     -> backbone.regenerator.fc1/fc2.*
    decode_head.{dec_proj, cls_emb, patch_proj, classes_proj, decoder_norm, mask_norm}
                                  -> head.<same>            (Segmenter)
    decode_head.{psp_modules.N.1, bottleneck, lateral_convs.N, fpn_convs.N, fpn_bottleneck}.{conv,bn}.*,
    decode_head.conv_seg.*        -> head.<same>            (UPerNet)

Dropped: `auxiliary_head.*` (the authors' AuxPassthrough holds only a loss), `data_preprocessor.*`,
anything under a `loss_decode` module, and `decode_head.conv_seg.*` of a Segmenter head (older
mmseg versions keep that unused 1x1 conv; newer ones delete it).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

from .errors import WeightsError, cli_errors
from .heads import SegmenterHead, UPerHead
from .model import ClustViT
from .registry import build_model, parse_overrides
from .weights import is_timm_vit, read_torch_checkpoint, resize_pos_embed, save_checkpoint

PROG = "clustvit_core.convert"

# One transformer layer (mmseg TransformerEncoderLayer -> timm Block), relative to the layer prefix.
_LAYER = [
    (r"ln1\.(weight|bias)", r"norm1.\1"),
    (r"attn\.attn\.in_proj_weight", r"attn.qkv.weight"),
    (r"attn\.attn\.in_proj_bias", r"attn.qkv.bias"),
    (r"attn\.attn\.out_proj\.(weight|bias)", r"attn.proj.\1"),
    (r"ln2\.(weight|bias)", r"norm2.\1"),
    (r"ffn\.layers\.0\.0\.(weight|bias)", r"mlp.fc1.\1"),
    (r"ffn\.layers\.1\.(weight|bias)", r"mlp.fc2.\1"),
]

# Backbone keys without the `backbone.` prefix (layers handled separately).
_BACKBONE = [
    (r"cls_token", r"cls_token"),
    (r"pos_embed", r"pos_embed"),
    (r"patch_embed\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"ln1\.(weight|bias)", r"norm.\1"),
    (r"clusterer\.net\.0\.(weight|bias)", r"cluster_mlp.fc1.\1"),
    (r"clusterer\.net\.2\.(weight|bias)", r"cluster_mlp.fc2.\1"),
    (r"expand_mlp\.0\.(weight|bias)", r"regenerator.fc1.\1"),
    (r"expand_mlp\.2\.(weight|bias)", r"regenerator.fc2.\1"),
]

_SEGMENTER = [
    (r"dec_proj\.(weight|bias)", r"dec_proj.\1"),
    (r"cls_emb", r"cls_emb"),
    (r"patch_proj\.weight", r"patch_proj.weight"),
    (r"classes_proj\.weight", r"classes_proj.weight"),
    (r"decoder_norm\.(weight|bias)", r"decoder_norm.\1"),
    (r"mask_norm\.(weight|bias)", r"mask_norm.\1"),
]

_CONV_BN = r"(conv\.weight|bn\.(?:weight|bias|running_mean|running_var|num_batches_tracked))"
_UPER = [
    (rf"(psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)\.{_CONV_BN}", r"\1.\2"),
    (r"conv_seg\.(weight|bias)", r"conv_seg.\1"),
]

# Keys that hold no weights of the segmentation network.
_DROPPED_PREFIXES = ("auxiliary_head.", "data_preprocessor.")

# Extra explanations for mmseg keys that have no counterpart in our model.
_UNSUPPORTED = [
    ("backbone.ln_pre.", "the checkpoint's ViT uses pre_norm=True (backbone.ln_pre), which this model does not implement"),
    ("backbone.patch_embed.norm.", "the checkpoint's ViT uses patch_norm=True, which this model does not implement"),
    (".gamma", "the checkpoint uses layer scale, which this model does not implement"),
]


def _brief(keys, n: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _rename(rest: str, rules) -> str | None:
    for pattern, repl in rules:
        m = re.fullmatch(pattern, rest)
        if m:
            return m.expand(repl)
    return None


def _map_key(key: str, segmenter: bool) -> str | None:
    """mmseg key -> our key, or None when no rule applies."""
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
        if m:
            inner = _rename(m.group(2), _LAYER)
            return None if inner is None else f"backbone.blocks.{m.group(1)}.{inner}"
        out = _rename(rest, _BACKBONE)
        return None if out is None else f"backbone.{out}"
    if key.startswith("decode_head."):
        rest = key[len("decode_head."):]
        if segmenter:
            m = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
            if m:
                inner = _rename(m.group(2), _LAYER)
                return None if inner is None else f"head.layers.{m.group(1)}.{inner}"
            out = _rename(rest, _SEGMENTER)
        else:
            out = _rename(rest, _UPER)
        return None if out is None else f"head.{out}"
    return None


def _is_dropped(key: str, segmenter: bool) -> bool:
    if key.startswith(_DROPPED_PREFIXES) or ".loss_decode." in key or key.startswith("loss_decode."):
        return True
    return segmenter and key.startswith("decode_head.conv_seg.")


def _head_kind(keys) -> str | None:
    if any(k.startswith(("decode_head.cls_emb", "decode_head.dec_proj.")) for k in keys):
        return "segmenter"
    if any(k.startswith("decode_head.psp_modules.") for k in keys):
        return "uper"
    return None


def _layer_count(keys, prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _structure_hint(sd_keys, model: ClustViT) -> str:
    """Why the checkpoint and the model differ in structure, or '' when no simple reason is found."""
    segmenter = isinstance(model.head, SegmenterHead)
    kind = _head_kind(sd_keys)
    if kind is not None and kind != ("segmenter" if segmenter else "uper"):
        names = {"segmenter": "Segmenter", "uper": "UPerNet"}
        return (f"the checkpoint has a {names[kind]} head, the model a {names['segmenter' if segmenter else 'uper']} head "
                f"(pick another --model or override head={kind})")
    has_cluster = any(k.startswith("backbone.clusterer.") for k in sd_keys)
    if has_cluster and not model.clustering:
        return "the checkpoint is a ClustViT (backbone.clusterer.*), the model a plain ViT (pick a ClustViT --model or set k and ip)"
    if model.clustering and not has_cluster:
        return "the checkpoint is a plain ViT, the model a ClustViT (pick a *_vit --model or override k=null ip=null)"
    depth = _layer_count(sd_keys, "backbone.layers.")
    if depth and depth != model.backbone.depth:
        return f"the checkpoint's backbone has {depth} layers, the model {model.backbone.depth} (check --model / backbone / depth)"
    if segmenter:
        n = _layer_count(sd_keys, "decode_head.layers.")
        if n and n != len(model.head.layers):
            return f"the checkpoint's Segmenter head has {n} layers, the model {len(model.head.layers)} (override head_layers={n})"
    else:
        n = _layer_count(sd_keys, "decode_head.lateral_convs.") + 1
        if n > 1 and n != len(model.out_indices):
            return f"the checkpoint's UPerNet reads {n} feature maps, the model {len(model.out_indices)} (override uper_indices)"
    if "backbone.ln1.weight" not in sd_keys and any(k.startswith("backbone.layers.") for k in sd_keys):
        return "the checkpoint's ViT has no final norm (final_norm=False), this model always applies one"
    return ""


def _shape_hint(ours: str) -> str:
    if ours.startswith(("head.cls_emb", "head.mask_norm.", "head.conv_seg.")):
        return "num_classes"
    if ours.startswith("backbone.cluster_mlp.fc2."):
        return "k (number of clusters)"
    if ours.startswith("backbone.cluster_mlp.fc1."):
        return "cluster_hidden (the authors' cluster_mlp_size)"
    if ours.startswith(("head.psp_modules.", "head.bottleneck.", "head.lateral_convs.", "head.fpn_")):
        return "uper_channels (the authors' decode_head channels)"
    if ".mlp.fc" in ours:
        return "mlp_ratio / backbone"
    return "backbone / embed_dim"


def _convert(state_dict: dict[str, Tensor], model: ClustViT) -> tuple[dict[str, Tensor], dict]:
    """The conversion, plus a report: format, dropped keys, pos_embed resize, zero-filled keys."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise WeightsError("the checkpoint holds no state dict (expected a dict of tensors)")
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"the checkpoint's state dict holds non-tensor entries ({_brief(bad)})")
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}

    if any(k.startswith(("backbone.blocks.", "head.")) for k in sd) and not any(k.startswith("decode_head.") for k in sd):
        raise WeightsError("the checkpoint already uses clustvit_core key names; load it directly with build_model(..., weights=PATH)")
    if is_timm_vit(sd):
        raise WeightsError("the checkpoint is a timm ImageNet ViT, not an mmsegmentation model; use it as `pretrained:` for training")
    if not any(k.startswith(("backbone.layers.", "decode_head.")) for k in sd):
        raise WeightsError(f"not an mmsegmentation ViT/ClustViT checkpoint: no backbone.layers.* or decode_head.* keys (found e.g. {_brief(sorted(sd))})")

    segmenter = isinstance(model.head, SegmenterHead)
    if not segmenter and not isinstance(model.head, UPerHead):
        raise WeightsError(f"model head {type(model.head).__name__} cannot be converted into")
    own = model.state_dict()

    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    dropped, unmapped = [], []
    for key, value in sd.items():
        if _is_dropped(key, segmenter):
            dropped.append(key)
            continue
        ours = _map_key(key, segmenter)
        if ours is None:
            unmapped.append(key)
            continue
        out[ours] = value
        source[ours] = key

    hint = _structure_hint(set(sd), model)
    if unmapped:
        why = next((text for part, text in _UNSUPPORTED if any(part in k for k in unmapped)), hint)
        raise WeightsError(
            f"{len(unmapped)} checkpoint key(s) have no counterpart in this model: {_brief(unmapped)}"
            + (f"; {why}" if why else "; is it an mmseg VisionTransformer/ClustViT with a Segmenter or UPerNet head?")
        )

    zero_filled = []
    bias = "backbone.patch_embed.proj.bias"
    weight = "backbone.patch_embed.proj.weight"
    if bias not in out and bias in own and weight in out:
        # mmseg's VisionTransformer and the authors' ClustViT default to patch_bias=False.
        out[bias] = torch.zeros(out[weight].shape[0], dtype=out[weight].dtype)
        source[bias] = "(zeros: the checkpoint's patch embedding has no bias)"
        zero_filled.append(bias)

    unexpected = sorted(set(out) - set(own))
    missing = sorted(set(own) - set(out))
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model key(s) missing from the checkpoint ({_brief(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint key(s) the model lacks ({_brief(source[k] for k in unexpected)})")
        raise WeightsError(f"checkpoint does not fit the model: {'; '.join(parts)}; {hint or 'check --model and the overrides'}")

    resized = None
    pos = "backbone.pos_embed"
    grid = tuple(model.backbone.grid)
    if out[pos].dim() == 3:
        n_old = out[pos].shape[1] - 1
        side = math.isqrt(n_old)
        square = side * side == n_old
        if (square and (side, side) != grid) or (not square and n_old != grid[0] * grid[1]):
            out[pos] = resize_pos_embed(out[pos], grid)  # the authors train on square crops
            resized = f"{side}x{side} -> {grid[0]}x{grid[1]}"

    mismatched = [k for k in sorted(out) if tuple(out[k].shape) != tuple(own[k].shape)]
    if mismatched:
        k = mismatched[0]
        more = f" (and {len(mismatched) - 1} more mismatched)" if len(mismatched) > 1 else ""
        raise WeightsError(
            f"shape mismatch: checkpoint {source[k]} has shape {tuple(out[k].shape)}, the model's {k} expects "
            f"{tuple(own[k].shape)}{more}; check --model / {_shape_hint(k)}"
        )

    out = {k: v.detach().contiguous() for k, v in out.items()}
    report = {
        "format": f"mmseg {'ClustViT' if model.clustering else 'ViT'} + {'Segmenter' if segmenter else 'UPerNet'}",
        "converted": len(out),
        "dropped": dropped,
        "zero_filled": zero_filled,
        "pos_embed_resized": resized,
    }
    return out, report


CLUSTER_OUT = "backbone.clusterer.net.2.weight"  # the authors' Cluster MLP output layer: [k + 1, hidden]


def check_structure(state_dict: dict[str, Tensor], meta: dict, model: ClustViT) -> None:
    """Refuse, in one line, a model whose k or head count disagrees with what the checkpoint says.

    k is read from the Cluster MLP's output width (k + 1). The number of attention heads leaves no
    trace in the tensor shapes; it is compared where the mmengine `meta` carries the training config
    text (`num_heads=N` of the backbone), and cannot be checked otherwise.
    """
    cfg = model.config
    out = state_dict.get(CLUSTER_OUT, state_dict.get(f"module.{CLUSTER_OUT}"))
    if out is not None and cfg.k is not None and out.shape[0] - 1 != cfg.k:
        raise WeightsError(f"the checkpoint clusters into k={out.shape[0] - 1} (its cluster MLP has {out.shape[0]} outputs) "
                           f"but model {cfg.name!r} has k={cfg.k}: pick the matching --model or pass k={out.shape[0] - 1}")
    text = meta.get("cfg") if isinstance(meta, dict) else None
    found = re.search(r"backbone\s*=\s*dict\((?:[^()]|\([^()]*\))*?num_heads\s*=\s*(\d+)", text, re.S) if isinstance(text, str) else None
    if found and int(found.group(1)) != cfg.num_heads:
        raise WeightsError(f"the checkpoint's training config has num_heads={found.group(1)} but model {cfg.name!r} has "
                           f"num_heads={cfg.num_heads}: pass num_heads={found.group(1)}")


def convert_mmseg_state_dict(state_dict: dict[str, Tensor], model: ClustViT) -> dict[str, Tensor]:
    """mmsegmentation ViT/ClustViT state dict (prefixes `backbone.`, `decode_head.`) -> `model`'s keys.

    Args:
        state_dict: the checkpoint's `state_dict` (not modified).
        model: the target model (not modified); its structure decides the head mapping and the
            position-embedding grid.
    Returns:
        a state dict that `model.load_state_dict(..., strict=True)` accepts.
    Raises:
        WeightsError: the checkpoint is not an mmseg ViT/ClustViT, has keys without counterpart, or
            does not fit the model (one line naming the keys, shapes and what to check).
    """
    return _convert(state_dict, model)[0]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(text: str) -> str:
    return " ".join(_ANSI.sub("", text).split())


def _read_input(path: Path) -> tuple[dict[str, Tensor], dict]:
    """`read_torch_checkpoint`, with a clearer one-line message for mmseg files that weights_only loading refuses."""
    if not path.is_file():
        raise WeightsError(f"input checkpoint {path} not found: check the path")
    try:
        return read_torch_checkpoint(path)
    except WeightsError as exc:
        cause = exc.__context__  # the torch.load error that read_state_dict condensed
        if cause is None or "weights only load failed" not in str(cause).lower():
            raise WeightsError(_one_line(str(exc))) from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(cause))
        what = f" (it pickles {found.group(1)})" if found else ""
        raise WeightsError(
            f"{path}: holds Python objects besides tensors{what}, so it is not loaded with weights_only=True; "
            "mmseg/mmengine checkpoints keep such objects in 'meta' or 'message_hub'. If you trust the file, "
            f"extract the weights once: python -c \"import torch; torch.save(torch.load({str(path)!r}, map_location='cpu', "
            "weights_only=False)['state_dict'], 'weights.pth')\" and convert weights.pth"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description=(
            "Convert a checkpoint of the ClustViT authors' mmsegmentation code (ClustViT or plain ViT backbone, "
            "Segmenter or UPerNet head) into a .safetensors file for a registered clustvit_core model. Keys are "
            "renamed, the position embedding is resized to the model's grid, auxiliary heads are dropped, and the "
            "result is checked to load strictly into the model before it is written."
        ),
        epilog=(
            "example:\n"
            "  python -m clustvit_core.convert iter_80000.pth weights/rumexweeds_k3_ip4.safetensors \\\n"
            "      --model rumexweeds_k3_ip4\n"
            "  python -m clustvit_core.convert upernet.pth out.safetensors --model rumexweeds_k3_ip3_uper\n"
            "  python -m clustvit_core.convert mine.pth out.safetensors --model suim_k3_ip3 empty_clusters=drop\n\n"
            "Registry entries carry the authors' settings (k, ip, cluster MLP 3096 for ViT-B, UPerNet 768), so their\n"
            "released checkpoints need no overrides. k is read from the checkpoint and a mismatch refused; num_heads\n"
            "only where the file's mmengine meta holds the training config. Converted files run the authors'\n"
            "merge (empty_clusters=zeros: k cluster tokens always, empty ones as zeros) unless told otherwise.\n"
            "Overrides use the registry's setting names (see config/models/*.yaml); values are YAML\n"
            "(num_classes=3, backbone=tiny, k=null). A shape mismatch names the key and the setting to check."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="mmsegmentation checkpoint (.pth with 'state_dict', or a plain state dict)")
    parser.add_argument("output", type=Path, help="where to write the converted .safetensors file")
    parser.add_argument("--model", required=True, help="registered model name (or a .yaml path) the weights are for")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. num_classes=3 backbone=tiny")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    with cli_errors(PROG):
        overrides = parse_overrides(args.overrides)
        overrides.pop("weights", None)
        overrides.setdefault("empty_clusters", "zeros")  # reproduce the authors' forward unless told otherwise
        model = build_model(args.model, **overrides)
        state_dict, meta = _read_input(args.input)
        check_structure(state_dict, meta, model)
        converted, report = _convert(state_dict, model)
        try:
            model.load_state_dict(converted, strict=True)
        except RuntimeError as exc:  # not expected after _convert's checks; keep it one line anyway
            raise WeightsError(f"converted weights do not load strictly: {' '.join(str(exc).split())[:300]}") from None
        try:
            out = save_checkpoint(args.output, converted, config=model.config)
        except OSError as exc:
            raise WeightsError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        extras = []
        if report["dropped"]:
            extras.append(f"dropped {len(report['dropped'])} ({_brief(report['dropped'], 2)})")
        if report["zero_filled"]:
            extras.append("zero patch-embed bias")
        if report["pos_embed_resized"]:
            extras.append(f"pos_embed {report['pos_embed_resized']}")
        note = f"; {', '.join(extras)}" if extras else ""
        print(f"converted {report['converted']} tensors ({report['format']}) for model {model.config.name} -> {out}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
