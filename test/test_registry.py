import pytest
import torch

import clustvit_core as cc

TINY_NET = dict(embed_dim=32, depth=4, num_heads=2, patch_size=16, img_size=32, cluster_hidden=16, uper_channels=16)


def test_registry_lists_dataset_models_and_baselines():
    names = cc.list_models()
    for name in ("cwfid_k3_ip3", "cwfid_vit", "rumexweeds_k3_ip4", "suim_k4_ip3", "ade20k_k3_ip3"):
        assert name in names
    assert not any(n.startswith("_") for n in names)


@pytest.mark.parametrize("name", cc.list_models())
def test_every_registered_model_builds_and_runs_tiny(name):
    cfg = cc.load_config(name)
    assert cfg.num_classes == len(cfg.class_names) == len(cfg.palette)
    overrides = dict(TINY_NET)
    if cfg.ip is not None:
        overrides["ip"] = min(cfg.ip, 3)
    model = cc.build_model(name, **overrides).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, cfg.num_classes, 32, 32)
    assert torch.isfinite(out.logits).all()
    assert (out.cluster_ids is None) == (cfg.k is None)
    if cfg.k is not None:
        assert out.cluster_logits.shape == (2, 4, cfg.k + 1)


def test_name_follows_k_and_ip():
    for name in cc.list_models():
        cfg = cc.load_config(name)
        if cfg.k is not None:
            assert f"_k{cfg.k}_ip{cfg.ip}" in name
        elif cfg.sharing:
            assert name.endswith("_cts")
        else:  # {dataset}_vit, or a variant of it: {dataset}_vit_{variant}
            assert name.endswith("_vit") or "_vit_" in name, name


def test_yaml_path_and_unknown_setting(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("num_classes: 2\nbackbone: tiny\nk: 2\nip: 1\n")
    assert cc.load_config(good).name == "mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_classes: 2\nbackbone: tiny\nlearning_rate: 3\n")
    with pytest.raises(cc.ConfigError, match=r"unknown setting\(s\) \['learning_rate'\]"):
        cc.load_config(bad)


def test_train_settings_inherit_key_by_key(tmp_path):
    """A model's `train:` overrides its base's recipe key by key: the rest of the recipe stays."""
    (tmp_path / "_data.yaml").write_text("num_classes: 2\nbackbone: tiny\ntrain:\n  optimizer: adamw\n  lr: 1.0e-4\n  crop_size: 64\n")
    (tmp_path / "mine.yaml").write_text("base: _data\nk: 2\nip: 1\ntrain:\n  lr: 1.0e-3\n")
    assert dict(cc.load_config(tmp_path / "mine.yaml").train) == {"optimizer": "adamw", "lr": 1e-3, "crop_size": 64}
    from clustvit_core.train import TrainSettings

    made = TrainSettings.from_config(cc.load_config("cwfid_k3_ip3_from_vit"))  # _cwfid's recipe, its own lr and iterations
    assert (made.optimizer, made.crop_size, made.lr, made.iters, made.train_only) == ("adamw", 392, 1e-3, 300, ("backbone.cluster_mlp",))
