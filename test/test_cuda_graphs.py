"""GraphedModel: the two-part (prepare / finish per padded length) inference that CUDA graphs record.
On the CPU the same parts run eagerly (capture=False); the capture itself is tested where CUDA is."""
import pytest
import torch

import clustvit_core as cc
from clustvit_core.cuda_graphs import GraphedModel
from conftest import TINY, tiny_model

VARIANTS = [
    {},
    {"k": None, "ip": None},
    {"head": "uper", "uper_channels": 16},
    {"decoder_merge": True},
    {"decoder_merge": True, "decoder_restore": "regenerate"},
    {"proportional_attention": True, "regenerator": "residual"},
    {"refine_channels": 8},
]


def _images():
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    x[0] *= 0.01  # a flat image: few tokens, so the images' lengths differ
    return x


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_graphed_parts_equal_the_model(overrides):
    torch.manual_seed(0)
    model = tiny_model(**overrides).eval()
    graphed = GraphedModel(model, bucket=4, capture=False)
    x = _images()
    for keep_bias in (0.0, 3.0, -1.0):
        with torch.no_grad():
            ref = model(x, keep_bias=keep_bias)
        out = graphed(x, keep_bias=keep_bias)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-4)
        assert torch.equal(out.tokens, ref.tokens)
        if model.clustering:
            assert torch.equal(out.cluster_ids, ref.cluster_ids)


def test_lengths_are_rounded_to_the_bucket_and_parts_reused():
    model = tiny_model().eval()
    graphed = GraphedModel(model, bucket=8, capture=False)
    x = _images()
    graphed(x, keep_bias=0.0)
    first = graphed.graphs()  # part A + one part B
    graphed(x, keep_bias=0.0)
    assert first == 2 and graphed.graphs() == 2  # same shape, same padded length: nothing new
    lengths = set(graphed.shapes[next(iter(graphed.shapes))].finish)
    assert all(n % 8 == 0 or n == 16 + 3 for n in lengths)  # multiples of the bucket, capped at N + k
    graphed(x[:1], keep_bias=0.0)  # a new batch size: its own parts
    assert graphed.graphs() == 4


def test_oracle_inputs_pass_through():
    model = tiny_model().eval()
    ids = torch.randint(0, 4, (3, 4, 4))
    graphed = GraphedModel(model, capture=False)
    x = _images()
    with torch.no_grad():
        ref = model(x, cluster_ids=ids)
    out = graphed(x, cluster_ids=ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.tokens, ref.tokens)
    cts = cc.build_model("cwfid_cts", **TINY, cts_reduction=0.3).eval()
    scores = torch.rand(3, 2, 2)
    with torch.no_grad():
        ref = cts(x, share_scores=scores)
    torch.testing.assert_close(GraphedModel(cts, capture=False)(x, share_scores=scores).logits, ref.logits)


def test_outputs_are_copies_not_the_recorded_buffers():
    model = tiny_model().eval()
    graphed = GraphedModel(model, capture=False)
    x = _images()
    a = graphed(x)
    b = graphed(x * 2)
    assert a.logits.data_ptr() != b.logits.data_ptr()


def test_clear_errors():
    model = tiny_model()
    with pytest.raises(cc.ConfigError, match="model.eval"):
        GraphedModel(model.train())
    with pytest.raises(cc.ConfigError, match="empty_clusters 'zeros'"):
        GraphedModel(tiny_model(empty_clusters="zeros").eval())
    with pytest.raises(cc.ConfigError, match="needs the model on a CUDA device"):
        GraphedModel(model.eval(), capture=True)
    with pytest.raises(cc.ConfigError, match="multiple of the patch size"):
        GraphedModel(model.eval(), capture=False)(torch.randn(1, 3, 60, 64))
    with pytest.raises(cc.ConfigError, match="fp16 needs a CUDA device"):
        GraphedModel(model.eval(), precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_replay_equals_eager_on_cuda():
    torch.manual_seed(0)
    for overrides in ({}, {"k": None, "ip": None}, {"decoder_merge": True}):
        model = tiny_model(**overrides).eval().cuda()
        graphed = GraphedModel(model, bucket=4)
        x = _images().cuda()
        for keep_bias in (0.0, 3.0, 0.0):
            with torch.no_grad():
                ref = model(x, keep_bias=keep_bias)
            out = graphed(x, keep_bias=keep_bias)
            torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-3)
            assert torch.equal(out.tokens, ref.tokens)


def test_letterbox_drop_mask_passes_through():
    model = tiny_model().eval()
    x = _images()
    drop = torch.zeros(3, 4, 4, dtype=torch.bool)
    drop[:, 3:, :] = True
    with torch.no_grad():
        ref = model(x, drop_mask=drop)
    out = GraphedModel(model, capture=False)(x, drop_mask=drop)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.tokens, ref.tokens) and (out.cluster_ids[:, 3] == -1).all()


def test_segmenter_cuda_graphs_needs_torch_on_cuda(tmp_path):
    from clustvit_core.predictor import Segmenter

    model = tiny_model()
    weights = cc.save_checkpoint(tmp_path / "w.safetensors", model.state_dict(), model.config)
    with pytest.raises(cc.ConfigError, match="cuda_graphs=true needs backend torch on a CUDA device"):
        Segmenter(model.config.to_dict(), str(weights), device="cpu", cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_segmenter_with_cuda_graphs_equals_eager_on_cuda(tmp_path):
    import numpy as np

    from clustvit_core.predictor import Segmenter

    model = tiny_model()
    weights = cc.save_checkpoint(tmp_path / "w.safetensors", model.state_dict(), model.config)
    eager = Segmenter(model.config.to_dict(), str(weights), device="cuda")
    graphed = Segmenter(model.config.to_dict(), str(weights), device="cuda", cuda_graphs=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
        a, b = eager(image), graphed(image)
        assert (a.labels == b.labels).mean() > 0.999 and a.tokens == b.tokens


def test_profile_torch_script_runs_on_the_cpu(capsys):
    """scripts/profile_torch.py (the README's GPU profile; on the CPU it lists op types): one small run."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "profile_torch.py"
    spec = importlib.util.spec_from_file_location("profile_torch", script)
    profile_torch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_torch)
    assert profile_torch.main(["--models", "cwfid_vit", "cwfid_k3_ip3", "--images", "synthetic:agri", "--num-images", "1",
                               "--size", "56", "--rounds", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "cwfid_vit: " in out and "cwfid_k3_ip3: " in out and "ms/img wall" in out and "aten::" in out


def test_inputs_a_model_does_not_take_are_refused_as_by_the_model():
    x = _images()
    with pytest.raises(cc.InputError, match="share_scores given to a model without token sharing"):
        GraphedModel(tiny_model().eval(), capture=False)(x, share_scores=torch.rand(3, 2, 2))
    with pytest.raises(cc.InputError, match="drop_mask given to a model without a Cluster module"):
        GraphedModel(tiny_model(k=None, ip=None).eval(), capture=False)(x, drop_mask=torch.zeros(3, 4, 4, dtype=torch.bool))
