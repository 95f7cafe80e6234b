"""The trainer on a tiny model and synthetic field scenes: learning, kill/resume equality, torchrun."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clustvit_core import train
from conftest import SCRATCH

TINY = ["embed_dim=32", "depth=3", "num_heads=2", "cluster_hidden=16", "ip=1", "img_size=64", *SCRATCH,
        "val_images=2", "num_workers=0", "log_interval=1"]
ROOT = Path(__file__).resolve().parents[1]


def losses(work_dir: Path) -> list[float]:
    with (work_dir / "metrics.csv").open() as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "loss"]


def run_cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "clustvit_core.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_tiny_training_run_lowers_the_loss(tmp_path):
    assert train.main(["synthetic_agri_k3_ip3_base", "--work-dir", str(tmp_path), "--iters", "40", "--batch-size", "4",
                       "--quiet", "lr=0.05", "min_lr=0.001", "val_interval=40", *TINY]) == 0
    values = losses(tmp_path)
    assert len(values) == 40
    assert sum(values[-5:]) / 5 < 0.8 * sum(values[:5]) / 5
    for name in ("final.safetensors", "best.safetensors", "config.json", "checkpoints/iter_0000040.safetensors"):
        assert (tmp_path / name).is_file(), name
    with (tmp_path / "metrics.csv").open() as f:
        names = {r["name"] for r in csv.DictReader(f)}
    assert {"seg_loss", "cluster_loss", "lr", "val_miou", "val_tokens_mean"} <= names


def test_plain_vit_logs_no_cluster_loss(tmp_path, capsys):
    """A plain ViT has no Cluster module: nothing about a cluster loss is logged (no `cluster nan`)."""
    assert train.main(["synthetic_agri_vit", "--work-dir", str(tmp_path), "--iters", "2", "--batch-size", "2",
                       "--quiet", "val_interval=100", *[t for t in TINY if not t.startswith(("ip=", "cluster_hidden="))]]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter ")]
    assert len(lines) == 2 and all("cluster" not in line and "nan" not in line for line in lines), lines
    with (tmp_path / "metrics.csv").open() as f:
        assert "cluster_loss" not in {r["name"] for r in csv.DictReader(f)}


def test_killed_run_resumes_to_identical_weights(tmp_path):
    common = ["synthetic_agri_k3_ip3_base", "--iters", "24", "--batch-size", "2", "--quiet", "ckpt_interval=4", "val_interval=100",
              "drop_path_rate=0.1", "lr=0.02", *TINY]
    reference = run_cli(*common, "--work-dir", str(tmp_path / "a"))
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err

    victim = run_cli(*common, "--work-dir", str(tmp_path / "b"))
    for line in victim.stdout:  # plain log lines, one per iteration
        if line.startswith("iter 10/"):
            victim.send_signal(signal.SIGKILL)  # between the checkpoints of iterations 8 and 12
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "final.safetensors").exists()
    resumed = run_cli(*common, "--work-dir", str(tmp_path / "b"), "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from" in out + err

    a, b = load_file(tmp_path / "a" / "final.safetensors"), load_file(tmp_path / "b" / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_torchrun_two_processes_gloo(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "clustvit_core.train", "synthetic_agri_k3_ip3_base", "--work-dir", str(tmp_path), "--iters", "4",
         "--batch-size", "2", "--quiet", "--device", "cpu", "val_interval=4", *TINY],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "final.safetensors").is_file()
    assert '"world_size": 2' in (tmp_path / "config.json").read_text()
    assert len(losses(tmp_path)) == 4  # rank 0 logs alone


def test_stream_is_a_pure_function_of_seed_and_position():
    class Tiny:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            from clustvit_core.data import Sample
            import numpy as np
            return Sample(np.full((4, 4, 3), i, np.uint8), np.zeros((4, 4), np.uint8), str(i))

    def transform(image, labels, seed):
        return int(image[0, 0, 0]), seed

    a = train.SampleStream(Tiny(), transform, seed=3)
    b = train.SampleStream(Tiny(), transform, seed=3)
    first_epoch = [a[p][0] for p in range(5)]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]  # an epoch visits every image once
    assert [a[p] for p in range(12)] == [b[p] for p in reversed(range(12))][::-1]
    assert [a[p][1] for p in range(5)] != [train.SampleStream(Tiny(), transform, seed=4)[p][1] for p in range(5)]
    # two processes split every global batch
    r0, r1 = train.StreamBatches(2, 0, 2, rank=0, world=2), train.StreamBatches(2, 0, 2, rank=1, world=2)
    assert list(r0) == [[0, 1], [4, 5]] and list(r1) == [[2, 3], [6, 7]]


def test_clustvit_from_a_trained_vit_training_only_its_cluster_module(tmp_path):
    """init_from a trained ViT + train_only the Cluster module: the ViT's weights come over unchanged and stay
    so (everything but the Cluster module is frozen); the Cluster module learns its loss."""
    vit_args = [t for t in TINY if not t.startswith(("ip=", "cluster_hidden="))]
    assert train.main(["synthetic_agri_vit", "--work-dir", str(tmp_path / "vit"), "--iters", "2", "--batch-size", "2",
                       "--quiet", "val_interval=100", *vit_args]) == 0
    vit = load_file(tmp_path / "vit" / "final.safetensors")
    assert train.main(["synthetic_agri_k3_ip3_base", "--work-dir", str(tmp_path / "clust"), "--iters", "30", "--batch-size", "4",
                       "--quiet", "val_interval=100", "lr=0.01", f"init_from={tmp_path / 'vit' / 'final.safetensors'}",
                       "train_only=[backbone.cluster_mlp]", "regenerator=residual", "proportional_attention=true", *TINY]) == 0
    clust = load_file(tmp_path / "clust" / "final.safetensors")
    assert set(vit) < set(clust)
    assert all(torch.equal(vit[k], clust[k]) for k in vit)
    assert any(k.startswith("backbone.cluster_mlp.") for k in set(clust) - set(vit))
    with (tmp_path / "clust" / "metrics.csv").open() as f:
        cluster = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "cluster_loss"]
    assert sum(cluster[-5:]) / 5 < 0.8 * sum(cluster[:5]) / 5


def test_teacher_iterations_merge_with_the_pseudo_clusters():
    """teacher=True: the batch is merged as the pseudo-clusters of its labels say, not as a fresh Cluster module
    (here biased to put every patch into cluster 1) would; the module's loss is the same either way."""
    from clustvit_core.pseudo import pseudo_clusters
    from conftest import tiny_model

    torch.manual_seed(0)
    model = tiny_model()
    model.backbone.cluster_mlp.fc2.bias.data[:] = torch.tensor([0.0, 50.0, 0.0, 0.0])
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 40:] = 1
    labels[1, :8, :8] = 2
    images = torch.randn(2, 3, 64, 64)
    _, own = train.compute_loss(model, images, labels, aux_weight=0.1)
    _, taught = train.compute_loss(model, images, labels, aux_weight=0.1, teacher=True)
    with torch.no_grad():
        expected = model(images, cluster_ids=pseudo_clusters(labels, 3, patch=16)).tokens.float().mean()
    assert own["tokens"] == 1  # everything in one cluster
    assert taught["tokens"] == expected > 1
    torch.testing.assert_close(own["cluster"], taught["cluster"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["synthetic_agri_k3_ip3_base", "pretrained=/no/such/vit.pth"], "/no/such/vit.pth not found"),
        (["synthetic_agri_k3_ip3_base", "train.learning_rate=3"], "unknown train setting 'learning_rate'"),
        (["synthetic_agri_k3_ip3_base", "--iters", "0"], "iters=0"),
        (["nope_k3_ip3"], "unknown model 'nope_k3_ip3'"),
        (["synthetic_agri_k3_ip3_base", "train_only=[decoder.nothing]"], "train_only=['decoder.nothing']: no parameter"),
        (["synthetic_agri_k3_ip3_base", "init_from=/no/such/vit.safetensors"], "/no/such/vit.safetensors"),
        (["synthetic_agri_k3_ip3_base", "teacher_iters=-5"], "teacher_iters=-5: must be an integer >= 0"),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path):
    proc = run_cli(*args, "--work-dir", str(tmp_path))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert message in err and "Traceback" not in err
