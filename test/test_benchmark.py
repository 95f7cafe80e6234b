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
    ],
)
def test_benchmark_user_errors_are_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "clustvit_core.benchmark", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
