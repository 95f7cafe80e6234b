"""The model owns its config and input contract (ModelConfig / DataConfig): a patch size other than 16
works end to end, configs survive checkpoints, and every file the trainer writes loads everywhere."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import clustvit_core as cc
from clustvit_core.pseudo import oracle_ids
from clustvit_core.config import DataConfig, ModelConfig
from clustvit_core.errors import ConfigError
from clustvit_core.evaluate import evaluate
from clustvit_core.flops import count_flops
from clustvit_core.predictor import Segmenter, predict_batch
from clustvit_core.weights import training_state

P14 = dict(embed_dim=48, depth=3, num_heads=2, cluster_hidden=24, ip=1, patch_size=14, img_size=56)


class Scenes:
    """Three 70x84 images (5x6 patches of 14) with a square of class 1 and 2 on class 0."""

    num_classes, class_names, palette = 3, ["soil", "crop", "weed"], [[0, 0, 0], [0, 255, 0], [255, 0, 0]]

    def __len__(self):
        return 3

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        labels = np.zeros((70, 84), np.uint8)
        labels[7:35, 14:42] = 1
        labels[42:63, 50 - 7 * i : 78 - 7 * i] = 2
        image = (rng.integers(0, 30, (70, 84, 3)) + 80 * labels[..., None]).astype(np.uint8)
        return image, labels, f"scene{i}"


@pytest.fixture(scope="module")
def model14():
    torch.manual_seed(0)
    return cc.build_model("cwfid_k3_ip3", **P14)


def test_config_is_typed_frozen_and_owned_by_the_model(model14):
    cfg = model14.config
    assert isinstance(cfg, ModelConfig) and cfg.name == "cwfid_k3_ip3" and cfg.patch_size == 14
    assert cfg.data == DataConfig(input_size=(56, 56), patch_size=14, mean=cfg.mean, std=cfg.std)
    with pytest.raises(Exception):
        cfg.k = 5  # frozen
    assert cfg.replace(k=None, ip=None).clustering is False
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert model14.backbone.grid == (4, 4) and model14.backbone.patch_embed.proj.kernel_size == (14, 14)


def test_patch_14_forward_pads_and_counts_tokens(model14):
    out = model14(torch.randn(2, 3, 70, 84))  # 5 x 6 patches of 14: no padding needed
    assert out.logits.shape == (2, 3, 70, 84) and out.cluster_ids.shape == (2, 5, 6)
    assert int(out.tokens.max()) <= 30
    out = model14(torch.randn(1, 3, 60, 60))  # 60 = 4*14 + 4: padded to a 5 x 5 grid
    assert out.logits.shape == (1, 3, 60, 60) and out.cluster_ids.shape == (1, 5, 5)
    assert model14.config.data.num_tokens((60, 60)) == 25


def test_patch_14_oracle_clusters_flops_and_benchmark_ids(model14):
    image, labels, _ = Scenes()[0]
    ids = oracle_ids(labels, 56, 3, model14.config.patch_size)
    assert ids.shape == (1, 4, 4)
    x = cc.preprocess(image, 56, model14.config.mean, model14.config.std)
    out = model14(x, cluster_ids=ids)
    assert torch.equal(out.cluster_ids, ids)
    clustered = count_flops(model14, x, cluster_ids=ids)
    kept = count_flops(model14, x, cluster_ids=torch.zeros_like(ids))
    assert 0 < clustered <= kept


def test_patch_14_predictor_and_evaluate(model14, tmp_path):
    preds = predict_batch(model14, [Scenes()[i][0] for i in range(3)])
    assert [p.patch_tokens for p in preds] == [16, 16, 16] and preds[0].cluster_ids.shape == (4, 4)
    result = evaluate(model14, Scenes(), size=70, flops_images=1, show=1, out_dir=tmp_path, progress=False)
    assert result.tokens.full_mean == 25 and result.input.size == 70 and result.gflops.images == 1
    slid = evaluate(model14, Scenes(), size=56, slide=True, progress=False)
    assert slid.input.stride == 37 and slid.tokens.full_mean % 16 == 0
    with pytest.raises(ConfigError, match="size=64: use a positive multiple of the model's patch size 14"):
        evaluate(model14, Scenes(), size=64, progress=False)

    weights = cc.save_checkpoint(tmp_path / "p14.safetensors", model14.state_dict(), model14.config)
    seg = Segmenter(model14.config, weights, device="cpu", input_size=70)
    r = seg(Scenes()[1][0])
    assert r.network_size == (70, 70) and r.patch_tokens == 25 and r.cluster_ids.shape == (5, 5)
    with pytest.raises(ConfigError, match="input_size=64"):
        Segmenter(model14.config, weights, device="cpu", input_size=64)


def test_every_trainer_file_loads_everywhere(model14, tmp_path):
    """A training checkpoint (model.*, optim.*, rng.*) is accepted by build_model, the Segmenter,
    export and evaluate's CLI, not misdiagnosed as a plain ViT."""
    optimizer = torch.optim.SGD(model14.parameters(), lr=0.1, momentum=0.9)
    model14(torch.randn(1, 3, 56, 56)).logits.sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    ckpt = cc.save_checkpoint(tmp_path / "checkpoints" / "iter_0000010.safetensors", training_state(model14, optimizer),
                              model14.config, {"iteration": 10})
    loaded = cc.build_model(model14.config, weights=ckpt)
    for key, value in model14.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert Segmenter(model14.config, str(ckpt), device="cpu")(Scenes()[0][0]).patch_tokens == 16
    exported = tmp_path / "exported.safetensors"
    proc = subprocess.run([sys.executable, "-m", "clustvit_core.export", str(ckpt), str(exported), "--fp16"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert cc.read_checkpoint_config(exported) == model14.config


def test_config_errors_are_one_line():
    for settings, message in [
        (dict(num_classes=3, patch_size=0), "patch_size=0"),
        (dict(num_classes=3, patch_size=16, img_size=8), "img_size=8"),
        (dict(num_classes=3, embed_dim=50, num_heads=3), "not divisible"),
        (dict(num_classes=3, k=2), "give both"),
        (dict(num_classes=3, k=2, ip=12), "ip=12"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(num_classes=2, std=[1, 0, 1]), "std needs 3 values"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**settings)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['kk'\]"):
        ModelConfig(num_classes=3).replace(kk=1)
