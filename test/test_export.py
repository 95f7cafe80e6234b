import pytest
import torch

import clustvit_core as cc
from clustvit_core import export
from conftest import tiny_model


def test_export_fp16_halves_and_still_loads(tmp_path):
    model = tiny_model().eval()
    src = cc.save_checkpoint(tmp_path / "best.safetensors", model.state_dict(), model.config)
    out = export.export(src, tmp_path / "demo.safetensors", fp16=True)
    assert out.stat().st_size < 0.6 * src.stat().st_size
    loaded = cc.build_model(cc.read_checkpoint_config(out), weights=out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x, keep_bias=9.0).logits, model(x, keep_bias=9.0).logits, atol=5e-2)


def test_export_from_training_checkpoint_and_errors(tmp_path):
    model = tiny_model()
    ckpt = cc.save_checkpoint(tmp_path / "iter.safetensors", {f"model.{k}": v for k, v in model.state_dict().items()} | {"optim.0.momentum_buffer": torch.zeros(3)}, model.config)
    out = export.export(ckpt, tmp_path / "w.safetensors")
    assert not any(k.startswith(("model.", "optim.")) for k in cc.weights.read_state_dict(out))
    bare = cc.save_checkpoint(tmp_path / "bare.safetensors", model.state_dict())
    with pytest.raises(cc.WeightsError, match="holds no model config; pass --model"):
        export.export(bare, tmp_path / "x.safetensors")
