"""ONNX export and the onnxruntime backend on tiny models: the exported graph keeps each image's token
count and the keep_bias knob, equals PyTorch, equals the exported plain ViT when nothing is clustered,
and bad files / providers / sizes give one clear line."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed (requirements.txt)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (requirements.txt)")

import clustvit_core as cc  # noqa: E402
from clustvit_core import export  # noqa: E402
from clustvit_core.data.synthetic import make_scene  # noqa: E402
from clustvit_core.errors import ConfigError, InputError, WeightsError  # noqa: E402
from clustvit_core.onnx_graph import ExportGraph, FixedAdaptiveAvgPool2d  # noqa: E402
from clustvit_core.onnx_runtime import OnnxModel, check_onnx, export_onnx, read_onnx_config  # noqa: E402
from clustvit_core.predictor import Segmenter  # noqa: E402
from conftest import plain_twin, tiny_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

VARIANTS = {
    "drop": {},
    "zeros": {"empty_clusters": "zeros"},
    "plain_vit": {"k": None, "ip": None},
    "uper": {"head": "uper", "uper_channels": 16},
    "patch14": {"patch_size": 14, "img_size": 56},
    "decoder_merge": {"decoder_merge": True},
    "decoder_regenerate": {"decoder_merge": True, "decoder_restore": "regenerate"},
    "residual_proportional": {"regenerator": "residual", "proportional_attention": True},
    "zeros_proportional": {"empty_clusters": "zeros", "proportional_attention": True},
    "decoder_proportional": {"decoder_merge": True, "proportional_attention": True},
    "decoder_regenerate_residual_proportional": {"decoder_merge": True, "decoder_restore": "regenerate",
                                                 "regenerator": "residual", "proportional_attention": True},
    "refiner": {"refine_channels": 8},
    "plain_vit_refiner": {"k": None, "ip": None, "refine_channels": 8},
}
BIASES = (0.0, 1.0, -1.0, 50.0, -50.0)  # 50: nothing merged; -50: everything merged


def images(n: int, size: int, seed: int = 0):
    """Normalized random images [1, 3, size, size] with some structure (a bright square), so clusters vary."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(1, 3, size, size, generator=g) * 0.3
        x[..., : size // 2, : size // 2] += 1.5 * (i % 2)
        out.append(x)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{variant: (eager model, OnnxModel)}."""
    tmp = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        model = tiny_model(**overrides).eval()
        for module in model.modules():  # a trained residual Regenerator's last layer is not zero
            if getattr(module, "residual", False):
                torch.nn.init.normal_(module.fc2.weight, std=0.1)
        if model.refiner is not None:  # nor is a trained refiner's
            torch.nn.init.normal_(model.refiner.convs[-1].weight, std=0.1)
        path = export_onnx(model, tmp / f"{name}.onnx")
        out[name] = (model, OnnxModel(path))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_and_onnxruntime_equal_pytorch_token_for_token(exported, variant):
    model, onnx_model = exported[variant]
    size = model.config.data.input_size[0]
    graph = ExportGraph(model, (size, size))
    token_counts = set()
    for x in images(3, size):
        for bias in BIASES:
            with torch.inference_mode():
                ref = model(x, keep_bias=bias)
                g_logits, g_ids, g_tokens = graph(x, torch.tensor(bias))
            out = onnx_model(x, keep_bias=bias)
            assert int(g_tokens[0]) == int(out.tokens[0]) == int(ref.tokens[0]), (variant, bias)
            torch.testing.assert_close(g_logits, ref.logits, atol=1e-5, rtol=0)
            assert float((out.logits - ref.logits).abs().max()) < 1e-4
            if model.clustering:
                assert torch.equal(out.cluster_ids, ref.cluster_ids) and torch.equal(g_ids, ref.cluster_ids)
            else:
                assert out.cluster_ids is None
            token_counts.add(int(out.tokens[0]))
    if model.clustering:  # keep_bias, an input of the exported graph, changes how many tokens it runs
        assert len(token_counts) >= 3, token_counts
        assert max(token_counts) == model.config.data.num_tokens((size, size))


def test_nothing_clustered_equals_the_exported_plain_vit(tmp_path):
    model = tiny_model().eval()
    vit = plain_twin(model)
    clust_onnx = OnnxModel(export_onnx(model, tmp_path / "clust.onnx"))
    vit_onnx = OnnxModel(export_onnx(vit, tmp_path / "vit.onnx"))
    for x in images(2, 64):
        a, b = clust_onnx(x, keep_bias=50.0), vit_onnx(x)
        assert int(a.tokens[0]) == int(b.tokens[0]) == 16
        # two graphs with different ops (the kept tokens pass a gather): fp32 rounding differs, measured up to 1.04e-5
        assert float((a.logits - b.logits).abs().max()) < 1e-4


@pytest.mark.parametrize("overrides", [{}, {"k": None, "ip": None}, {"head": "uper", "uper_channels": 16},
                                       {"proportional_attention": True}])
def test_fused_attention_export_equals_pytorch(tmp_path, overrides):
    """attention="ort": every attention (backbone and Segmenter head blocks) becomes one
    com.microsoft.MultiHeadAttention node; tokens and logits as with the standard graph. With proportional
    attention the blocks after merging (short sequences, a key bias) keep standard ops."""
    import onnx

    model = tiny_model(**overrides).eval()
    path = export_onnx(model, tmp_path / "fused.onnx", attention="ort")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    head_layers = model.config.head_layers if model.config.head == "segmenter" else 0
    fused_blocks = model.config.ip if model.config.proportional_attention else model.config.depth
    assert ops.count("MultiHeadAttention") == fused_blocks + head_layers
    assert ("Softmax" in ops) == model.config.proportional_attention
    fused = OnnxModel(path)
    assert fused.attention == "ort"
    for x in images(2, 64):
        for bias in (0.0, -1.0, 50.0):
            with torch.inference_mode():
                ref = model(x, keep_bias=bias)
            out = fused(x, keep_bias=bias)
            assert int(out.tokens[0]) == int(ref.tokens[0])
            assert float((out.logits - ref.logits).abs().max()) < 1e-4
    with pytest.raises(ConfigError, match="exported with --attention ort.*--attention onnx"):
        OnnxModel(path, providers=["tensorrt"])


def test_fixed_adaptive_pool_equals_adaptive_avg_pool():
    x = torch.randn(2, 5, 42, 56)
    for out in (1, 2, 3, 6, (4, 5)):
        torch.testing.assert_close(FixedAdaptiveAvgPool2d((42, 56), out)(x), torch.nn.AdaptiveAvgPool2d(out)(x))


def test_export_cli_checks_and_stores_the_config(tmp_path, capsys):
    model = tiny_model().eval()
    src = cc.save_checkpoint(tmp_path / "final.safetensors", model.state_dict(), model.config)
    assert export.main([str(src), str(tmp_path / "m.onnx"), "--check-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "tokens equal" in out and "synthetic:agri" in out and "wrote" in out
    cfg = read_onnx_config(tmp_path / "m.onnx")
    assert cfg.name == model.config.name and cfg.k == 3 and cfg.class_names == model.config.class_names
    # another size: the config says so, and the model refuses other sizes with one line
    assert export.main([str(src), str(tmp_path / "wide.onnx"), "--onnx", "--size", "48", "80", "--check-images", "1"]) == 0
    wide = OnnxModel(tmp_path / "wide.onnx")
    assert wide.size == (48, 80) and wide.config.data.input_size == (48, 80)
    with pytest.raises(InputError, match="exported for 80x48 images, got 64x64"):
        wide(torch.zeros(1, 3, 64, 64))


def test_check_fails_when_the_graph_disagrees(exported):
    model, onnx_model = exported["drop"]
    other = tiny_model().eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    scenes = [make_scene("agri", i, (64, 64))[0] for i in range(2)]
    assert check_onnx(onnx_model, model, scenes)["ok"]
    assert not check_onnx(onnx_model, other, scenes)["ok"]


def test_segmenter_onnxruntime_backend_equals_torch(tmp_path):
    model = tiny_model().eval()
    weights = cc.save_checkpoint(tmp_path / "w.safetensors", model.state_dict(), model.config)
    onnx_path = export_onnx(model, tmp_path / "w.onnx")
    ort_seg = Segmenter(str(onnx_path), providers=["cpu"])
    torch_seg = Segmenter(model.config.to_dict(), str(weights), device="cpu")
    assert ort_seg.backend == "onnxruntime" and torch_seg.backend == "torch"
    image = make_scene("agri", 1, (90, 120))[0]
    for bias in (0.0, -1.0):
        a, b = ort_seg(image, keep_bias=bias, confidence=True), torch_seg(image, keep_bias=bias, confidence=True)
        assert (a.tokens, a.kept_tokens, a.clusters_used) == (b.tokens, b.kept_tokens, b.clusters_used)
        assert (a.labels == b.labels).mean() >= 0.999
        assert np.abs(a.confidence.astype(int) - b.confidence).max() <= 1
        np.testing.assert_array_equal(a.cluster_ids, b.cluster_ids)


def test_evaluate_with_the_onnxruntime_backend(tmp_path, capsys):
    from clustvit_core import evaluate as ev

    model = tiny_model().eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    argv = ["cwfid_k3_ip3", "--backend", "onnxruntime", "--weights", str(onnx_path), "--num-images", "2", "--quiet",
            "--out", str(tmp_path / "eval")]
    assert ev.main(argv) == 0
    assert "onnxruntime (CPUExecutionProvider)" in (tmp_path / "eval" / "metrics.md").read_text()
    with pytest.raises(SystemExit):
        ev.main(["ade20k_vit", *argv[1:]])
    assert "holds model 'cwfid_k3_ip3', not 'ade20k_vit'" in capsys.readouterr().err


def test_bad_files_providers_and_options_are_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx file at all")
    with pytest.raises(WeightsError, match="not a readable ONNX file"):
        OnnxModel(corrupt)
    with pytest.raises(WeightsError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")
    import onnx
    from onnx import TensorProto, helper

    bare = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(WeightsError, match="without ClustViT metadata"):
        OnnxModel(tmp_path / "bare.onnx")
    good = export_onnx(tiny_model().eval(), tmp_path / "good.onnx")
    with pytest.raises(ConfigError, match="provider tensorrt is not available.*pip install onnxruntime-gpu"):
        OnnxModel(good, providers=["tensorrt"])
    with pytest.raises(ConfigError, match="provider 'npu'"):
        OnnxModel(good, providers=["npu"])
    with pytest.raises(ConfigError, match="runs with backend onnxruntime"):
        Segmenter(str(good), backend="torch")
    with pytest.raises(ConfigError, match="backend onnxruntime runs an .onnx file"):
        Segmenter("synthetic_agri_k3_ip3", backend="onnxruntime")
    src = cc.save_checkpoint(tmp_path / "w.safetensors", tiny_model().state_dict(), tiny_model().config)
    with pytest.raises(SystemExit):
        export.main([str(src), str(tmp_path / "x.onnx"), "--fp16"])
    err = capsys.readouterr().err
    assert "--fp16 with --onnx" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        export.main([str(src), str(tmp_path / "x.safetensors"), "--attention", "ort"])
    assert "--attention is an ONNX export setting" in capsys.readouterr().err


def test_profile_script_reports_kernel_time_and_matmul_throughput(capsys):
    """scripts/profile_onnx.py (the README's evidence that the exported merge costs under 1 %): one small run, and
    its MAC count from a node's shapes (B may be missing from the profile: the output shape carries N)."""
    import importlib.util

    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "profile_onnx.py"
    spec = importlib.util.spec_from_file_location("profile_onnx", script)
    profile_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_onnx)
    assert profile_onnx.macs([1, 6, 100, 64], [1, 6, 100, 100]) == 6 * 100 * 100 * 64
    assert profile_onnx.macs([200, 384], [200, 1152]) == 200 * 1152 * 384
    assert profile_onnx.main(["--models", "cwfid_k3_ip3", "--num-images", "1", "--size", "112", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "== cwfid_k3_ip3" in out and "merge steps (" in out and "NonZero" in out
    gmac = float(out.split("matrix products ")[1].split(" GMAC/s")[0])
    assert gmac > 0
