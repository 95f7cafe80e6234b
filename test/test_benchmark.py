import json
import subprocess
import sys

import pytest

from clustvit_core import benchmark

TINY_SET = ["embed_dim=64", "depth=4", "num_heads=2", "patch_size=16", "cluster_hidden=32"]


def test_benchmark_on_cwfid_with_oracle_clusters(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN benchmark:t -->\nold\n<!-- END benchmark:t -->\noutro\n")
    out_json = tmp_path / "b.json"
    argv = ["--models", "cwfid_vit", "cwfid_k3_ip3", "--images", "cwfid:test", "--num-images", "2", "--size", "128",
            "--oracle-clusters", "--rounds", "1", "--warmup", "0", "--quiet", "--json", str(out_json),
            "--update-readme", str(readme), "--readme-section", "t", *TINY_SET]
    assert benchmark.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| cwfid_vit |" in printed and "| cwfid_k3_ip3 |" in printed
    rows = {r["model"]: r for r in json.loads(out_json.read_text())["rows"]}
    vit, clust = rows["cwfid_vit"], rows["cwfid_k3_ip3"]
    assert vit["tokens_mean"] == 64 and clust["tokens_mean"] < 64  # field images: most patches are pure soil
    assert clust["flop_ratio_backbone"] > 1.0
    assert vit["flop_ratio_backbone"] == 1.0 and vit["speedup_total"] == 1.0
    assert clust["flop_ratio_backbone"] == pytest.approx(vit["gflops_backbone_mean"] / clust["gflops_backbone_mean"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "| cwfid_k3_ip3 |" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_both_backends_in_one_table(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out_json = tmp_path / "b.json"
    argv = ["--models", "cwfid_vit", "cwfid_k3_ip3", "--backends", "torch", "onnxruntime", "onnxruntime-mha",
            "--images", "cwfid:test",
            "--num-images", "2", "--size", "128", "--oracle-clusters", "--rounds", "1", "--warmup", "0", "--quiet",
            "--json", str(out_json), *TINY_SET]
    assert benchmark.main(argv) == 0
    rows = {r["model"]: r for r in json.loads(out_json.read_text())["rows"]}
    assert set(rows) == {f"{m}{b}" for m in ("cwfid_vit", "cwfid_k3_ip3")
                         for b in ("", " [onnxruntime]", " [onnxruntime-mha]")}
    # the exported graphs run the same oracle clusters: the same tokens per image; ratios within each backend
    for backend in ("onnxruntime", "onnxruntime-mha"):
        assert rows[f"cwfid_k3_ip3 [{backend}]"]["tokens_mean"] == rows["cwfid_k3_ip3"]["tokens_mean"] < 64
        assert rows[f"cwfid_vit [{backend}]"]["speedup_total"] == 1.0 and rows["cwfid_vit"]["speedup_total"] == 1.0
    assert "| cwfid_k3_ip3 [onnxruntime] |" in capsys.readouterr().out


def test_onnx_rows_per_provider_and_one_export_per_model(tmp_path, monkeypatch):
    """--providers gives one ONNX row set per provider (labels 'onnxruntime cuda', 'onnxruntime tensorrt fp16');
    torch precisions do not multiply the ONNX rows. The sessions are stubbed: this machine has no GPU provider."""
    calls = []

    def fake_twin(model, size, oracle, threads, attention="onnx", provider="cpu", fp16=False):
        calls.append((model.config.kind, provider, fp16))
        return model  # the torch model stands in for the session

    monkeypatch.setattr(benchmark, "_onnx_twin", fake_twin)
    out_json = tmp_path / "b.json"
    argv = ["--models", "cwfid_vit", "cwfid_k3_ip3", "--backends", "torch", "onnxruntime", "--providers", "cpu", "cuda",
            "tensorrt", "--precisions", "fp32", "bf16", "--images", "cwfid:test", "--num-images", "1", "--size", "128",
            "--oracle-clusters", "--rounds", "1", "--warmup", "0", "--quiet", "--json", str(out_json), *TINY_SET]
    assert benchmark.main(argv) == 0
    rows = {r["model"]: r for r in json.loads(out_json.read_text())["rows"]}
    onnx_labels = ["onnxruntime", "onnxruntime cuda", "onnxruntime tensorrt"]  # bf16 is no TensorRT precision
    assert set(rows) == {f"{m}{p}" for m in ("cwfid_vit", "cwfid_k3_ip3") for p in ("", " [bf16]")} | {
        f"{m} [{label}]" for m in ("cwfid_vit", "cwfid_k3_ip3") for label in onnx_labels}
    assert sorted(calls) == sorted((kind, p, False) for kind in ("vit", "clustvit") for p in ("cpu", "cuda", "tensorrt"))
    for label in onnx_labels:  # ratios within each provider's rows
        assert rows[f"cwfid_vit [{label}]"]["backend"] == label and rows[f"cwfid_vit [{label}]"]["speedup_total"] == 1.0
    assert benchmark.onnx_backend_label("onnxruntime", "tensorrt", "fp16") == "onnxruntime tensorrt fp16"


def test_precisions_are_rows_with_ratios_within_each(tmp_path):
    """--precisions: one torch row per model and precision (autocast), ratios against the ViT of the same
    precision; what a GPU run adds with --device cuda --precisions fp32 fp16."""
    out_json = tmp_path / "b.json"
    argv = ["--models", "cwfid_vit", "cwfid_k3_ip3", "--precisions", "fp32", "bf16", "--images", "cwfid:test",
            "--num-images", "1", "--size", "128", "--oracle-clusters", "--rounds", "1", "--warmup", "0", "--quiet",
            "--json", str(out_json), *TINY_SET]
    assert benchmark.main(argv) == 0
    data = json.loads(out_json.read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"cwfid_vit", "cwfid_k3_ip3", "cwfid_vit [bf16]", "cwfid_k3_ip3 [bf16]"}
    assert rows["cwfid_vit [bf16]"]["backend"] == "torch bf16" and rows["cwfid_vit [bf16]"]["speedup_total"] == 1.0
    assert rows["cwfid_k3_ip3 [bf16]"]["tokens_mean"] == rows["cwfid_k3_ip3"]["tokens_mean"]
    assert data["setup"]["device"] == "cpu"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "nope_vit"], "unknown model 'nope_vit'"),
        (["--models", "cwfid_vit", "--size", "100"], "--size 100"),
        (["--models", "cwfid_vit", "--images", "/does/not/exist"], "not a folder"),
        (["--models", "cwfid_vit", "=small"], "must look like key=value"),
        (["--models", "cwfid_vit", "--backends", "tensorflow"], "--backends tensorflow: choose from torch, onnxruntime, onnxruntime-mha"),
        (["--models", "cwfid_vit", "--precisions", "fp16"], "--precisions=fp16 needs a CUDA device: use fp32 or bf16 on the CPU"),
        (["--models", "cwfid_vit", "--device", "tpu"], "--device='tpu': use auto (cuda if available, else cpu), cpu"),
        (["--models", "cwfid_vit", "--backends", "onnxruntime-mha", "--providers", "tensorrt"],
         "--backends onnxruntime-mha with --providers tensorrt: TensorRT cannot build"),
        (["--models", "cwfid_vit", "--providers", "cuda"], "--providers cuda: providers apply to ONNX Runtime rows; add --backends onnxruntime"),
    ],
)
def test_benchmark_user_errors_are_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "clustvit_core.benchmark", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
