import pickle

import pytest
import timm
import torch
from clustvit_core.model import resample_pos_embed

import clustvit_core as cc
from conftest import TINY, plain_twin, tiny_model


def test_vit_keys_are_clustvit_keys_minus_cluster_and_regenerator():
    clust, vit = tiny_model(), cc.build_model("cwfid_vit", **TINY)
    extra = set(clust.state_dict()) - set(vit.state_dict())
    assert set(vit.state_dict()) <= set(clust.state_dict())
    assert extra and all(k.startswith(("backbone.cluster_mlp.", "backbone.regenerator.")) for k in extra)


def test_safetensors_round_trip_with_config(tmp_path):
    model = tiny_model()
    path = cc.save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), config=model.config)
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed into place
    assert cc.read_checkpoint_config(path).k == 3
    loaded = cc.build_model("cwfid_k3_ip3", weights=path, **{**TINY, "ip": 1})
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_timm_checkpoint_loads_with_pos_embed_interpolation(tmp_path):
    timm_vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=4, num_heads=2, num_classes=10)
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    model = tiny_model().eval()  # 64x64: a 4x4 grid, the checkpoint has 2x2
    cc.load_pretrained_backbone(model, tmp_path / "vit.pth")
    assert model.backbone.pos_embed.shape == (1, 17, 64)

    # timm's own model at 64x64 with the same resampling must give the same features on the kept path
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64, embed_dim=64, depth=4, num_heads=2, num_classes=10).eval()
    sd = dict(timm_vit.state_dict())
    sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], (4, 4), (2, 2))
    ref.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 1:]  # final-normed patch tokens
        out = model.backbone(x, (3,), cluster_ids=torch.zeros(2, 4, 4, dtype=torch.long))
    ours = out.features[0].flatten(2).transpose(1, 2)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_timm_checkpoint_of_wrong_size_is_a_clear_error(tmp_path):
    timm_vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=96, depth=4, num_heads=2)
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(cc.WeightsError, match="matching backbone size"):
        cc.load_pretrained_backbone(tiny_model(), tmp_path / "vit.pth")


def test_missing_and_corrupt_weights_files(tmp_path):
    with pytest.raises(cc.WeightsError, match="not found"):
        cc.build_model("cwfid_k3_ip3", weights=tmp_path / "nope.safetensors", **TINY)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(cc.WeightsError, match="not a readable safetensors file"):
        cc.build_model("cwfid_k3_ip3", weights=bad, **TINY)


def test_pickled_objects_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(cc.WeightsError, match="tensors-only"):
        cc.load_weights(tiny_model(), path)


def test_mismatching_checkpoint_names_the_problem(tmp_path):
    vit = cc.build_model("cwfid_vit", **TINY)
    path = cc.save_checkpoint(tmp_path / "vit.safetensors", vit.state_dict())
    with pytest.raises(cc.WeightsError, match="the file is a plain ViT, the model a ClustViT"):
        cc.load_weights(tiny_model(), path)
    path = cc.save_checkpoint(tmp_path / "c5.safetensors", tiny_model(num_classes=5).state_dict())
    with pytest.raises(cc.WeightsError, match="num_classes"):
        cc.load_weights(tiny_model(), path)


def test_default_weights_are_searched_and_missing_ones_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTVIT_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # not this machine's ~/.cache/clustvit (trained CWFID weights)
    with pytest.raises(cc.WeightsError, match=r"weights cwfid_k3_ip3.safetensors for model 'cwfid_k3_ip3' not found"):
        cc.default_weights("cwfid_k3_ip3")
    model = cc.build_model("cwfid_k3_ip3", **TINY)
    cc.save_checkpoint(tmp_path / "cwfid_k3_ip3.safetensors", model.state_dict())
    assert cc.default_weights("cwfid_k3_ip3") == tmp_path / "cwfid_k3_ip3.safetensors"
    assert cc.build_model("cwfid_k3_ip3", weights="default", **TINY) is not None


def test_trained_start_from_a_vit_keeps_the_merging_modules_fresh_and_refuses_misfits(tmp_path):
    from clustvit_core.weights import load_trained_start

    clust = tiny_model(regenerator="residual")
    vit = plain_twin(tiny_model())
    path = tmp_path / "vit.safetensors"
    cc.save_checkpoint(path, vit.state_dict(), vit.config)
    fresh = {k: v.clone() for k, v in clust.state_dict().items() if k.startswith("backbone.cluster_mlp.")}
    line = load_trained_start(clust, path)
    assert "initialized here: backbone.cluster_mlp, backbone.regenerator" in line
    assert all(torch.equal(v, clust.state_dict()[k]) for k, v in fresh.items())
    assert all(torch.equal(v, clust.state_dict()[k]) for k, v in vit.state_dict().items())
    with pytest.raises(cc.WeightsError, match="does not fit this model.*same backbone, head and classes"):
        load_trained_start(tiny_model(num_classes=5), path)
