"""clustvit_core.heads: the Segmenter head learns few, imbalanced classes (issue 9).

A fresh head starts with unit-scale `dec_proj` and `cls_emb` and a `mask_norm` scale that lets the
logits express a confident class; its forward stays mmsegmentation's (test_convert.py checks converted
checkpoints against mmseg's forward). `mask_eps=FEW_CLASS_MASK_EPS` is the few-class variant.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import clustvit_core as cc
from clustvit_core.heads import FEW_CLASS_MASK_EPS, MASK_CONFIDENCE, MMSEG_MASK_EPS, SegmenterHead, mask_norm_scale

D = 32  # token width of the tiny model


def aligned_pixel_probability(num_classes: int, weight: float, eps: float = MMSEG_MASK_EPS) -> float:
    """Probability the mask LayerNorm (weight `weight`, bias 0) gives class 0 for a pixel whose feature
    is class 0's, with the class features spread evenly (cosine scores 1 and -1/(C-1))."""
    scores = torch.full((1, num_classes), -1.0 / (num_classes - 1))
    scores[0, 0] = 1.0
    logits = F.layer_norm(scores, (num_classes,), torch.full((num_classes,), weight), torch.zeros(num_classes), eps)
    return logits.softmax(-1)[0, 0].item()


@pytest.mark.parametrize("eps", [MMSEG_MASK_EPS, FEW_CLASS_MASK_EPS])
@pytest.mark.parametrize("num_classes", [2, 3, 8, 19])
def test_mask_norm_scale_reaches_the_confidence(num_classes, eps):
    w = mask_norm_scale(num_classes, eps)
    assert aligned_pixel_probability(num_classes, w, eps) == pytest.approx(MASK_CONFIDENCE, abs=1e-4)
    assert aligned_pixel_probability(num_classes, 1.0, eps) < MASK_CONFIDENCE  # mmseg's init cannot


def test_mask_norm_scale_is_mmseg_for_many_classes():
    assert aligned_pixel_probability(3, 1.0) == pytest.approx(0.807, abs=1e-3)  # below CWFID's 93 % soil
    assert mask_norm_scale(150) == mask_norm_scale(80) == 1.0 and mask_norm_scale(1) == 1.0
    assert mask_norm_scale(3) == pytest.approx(2.49, abs=0.01)
    assert mask_norm_scale(3, FEW_CLASS_MASK_EPS) == pytest.approx(4.32, abs=0.01)


def test_fresh_head_initialization():
    head = SegmenterHead(D, 3, num_layers=1, num_heads=2)
    assert head.mask_norm.eps == MMSEG_MASK_EPS and head.decoder_norm.eps == 1e-5
    assert torch.all(head.mask_norm.weight == mask_norm_scale(3)) and torch.all(head.mask_norm.bias == 0)
    assert head.cls_emb.std().item() == pytest.approx(0.88, abs=0.25)  # unit normal truncated at +-2
    assert head.dec_proj.weight.std().item() == pytest.approx(D ** -0.5, rel=0.2)
    assert head.patch_proj.weight.std().item() == pytest.approx(0.02, rel=0.2)  # the rest is mmseg's
    variant = SegmenterHead(D, 3, num_layers=1, num_heads=2, mask_eps=FEW_CLASS_MASK_EPS)
    assert variant.mask_norm.eps == FEW_CLASS_MASK_EPS and torch.all(variant.mask_norm.weight == mask_norm_scale(3, 1.0))


def imbalanced_token_maps(seed: int, batch: int = 4, grid: int = 16):
    """Feature maps shaped like a ViT's last block on field images -> (features [B, D, grid, grid], labels [B, grid, grid]).

    Labels: class 0 (soil) ~88 % of the tokens, classes 1 and 2 small discs. Features: one large vector
    shared by every token (as real ViT tokens share one), a weak class signal and noise.
    """
    g = torch.Generator().manual_seed(100 + seed)
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    labels = torch.zeros(batch, grid, grid, dtype=torch.long)
    for b in range(batch):
        for c in (1, 2):
            for _ in range(2):
                cy, cx = torch.randint(0, grid, (2,), generator=g)
                labels[b][(yy - cy) ** 2 + (xx - cx) ** 2 <= 2] = c
    shared = 3.0 * torch.randn(D, generator=g)
    class_dirs = torch.randn(3, D, generator=g)
    noise = 0.5 * torch.randn(batch, D, grid, grid, generator=g)
    features = shared[None, :, None, None] + 0.3 * class_dirs[labels].permute(0, 3, 1, 2) + noise
    return features, labels


def fit(head: SegmenterHead, features, labels, steps: int):
    """AdamW (lr 1e-3) on cross-entropy, full batch -> (per-class IoU list, mean probability of the true class)."""
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(head([features]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = head([features])
    pred = logits.argmax(1)
    ious = [((pred == c) & (labels == c)).sum().item() / ((pred == c) | (labels == c)).sum().item() for c in range(3)]
    return ious, logits.softmax(1).gather(1, labels[:, None]).mean().item()


def test_three_class_model_head_fits_imbalanced_maps():
    """The head of a 3-class model fits 4 imbalanced token maps. With mmseg's initialization it predicts
    the majority class everywhere here (IoUs 0.88/0/0, p_true 0.77); over 8 seeds its worst class IoU
    stays below 0.6 on 7 and the true class never gets more than p = 0.89 on average."""
    model = cc.build_model("cwfid_vit", embed_dim=D, depth=1, num_heads=2, patch_size=16, img_size=64)
    assert isinstance(model.head, SegmenterHead) and model.num_classes == 3
    features, labels = imbalanced_token_maps(seed=0)
    assert (labels == 0).float().mean() > 0.85
    ious, p_true = fit(model.head.train(), features, labels, steps=300)
    assert min(ious) > 0.7 and p_true > 0.93, (ious, p_true)


def test_few_class_variant_fits_in_half_the_steps():
    head = SegmenterHead(D, 3, num_layers=2, num_heads=2, mask_eps=FEW_CLASS_MASK_EPS)
    ious, p_true = fit(head.train(), *imbalanced_token_maps(seed=1), steps=150)
    assert min(ious) > 0.7 and p_true > 0.93, (ious, p_true)


def test_loaded_weights_give_the_mmseg_forward():
    """The initialization is only a start: weights drawn as mmseg draws them, loaded into a fresh head,
    give mmseg's forward, whose logits stay within sqrt(C - 1) = sqrt(2) of the bias for 3 classes."""
    fresh = SegmenterHead(D, 3, num_layers=1, num_heads=2).eval()
    mmseg = SegmenterHead(D, 3, num_layers=1, num_heads=2).eval()
    with torch.no_grad():
        torch.nn.init.trunc_normal_(mmseg.cls_emb, std=0.02)
        torch.nn.init.trunc_normal_(mmseg.dec_proj.weight, std=0.02)
        mmseg.mask_norm.weight.fill_(1.0)
    fresh.load_state_dict(mmseg.state_dict(), strict=True)
    x = [torch.randn(2, D, 4, 5)]
    with torch.no_grad():
        out = fresh(x)
        assert torch.equal(out, mmseg(x))
        assert out.abs().max() <= math.sqrt(2) + 1e-4


# ------------------------------------------------------------------------------------ DetailRefiner

def test_fresh_refiner_returns_the_logits():
    from clustvit_core.heads import DetailRefiner

    torch.manual_seed(0)
    images, logits = torch.randn(2, 3, 20, 24), torch.randn(2, 4, 20, 24)
    assert torch.equal(DetailRefiner(4, channels=8)(images, logits), logits)


def test_refiner_recovers_structure_finer_than_a_patch():
    """Thin one-pixel lines of their own colour: patch-level scores (8x8 patches, upsampled) call every pixel
    background; the refiner, reading the pixels, learns the lines in a few hundred steps."""
    from clustvit_core.heads import DetailRefiner

    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=g) * 0.2
    labels = torch.zeros(8, 32, 32, dtype=torch.long)
    for i in range(8):
        rows = torch.randperm(32, generator=g)[:3]
        labels[i, rows] = 1
        images[i, 1, rows] += 1.5  # a line is greener than the background
    patch_share = F.avg_pool2d(F.one_hot(labels, 2).permute(0, 3, 1, 2).float(), 8)
    coarse = F.interpolate(4 * (patch_share - 0.5), size=(32, 32), mode="bilinear", align_corners=False)

    def line_iou(logits):
        pred = logits.argmax(1) == 1
        return ((pred & (labels == 1)).sum() / (pred | (labels == 1)).sum()).item()

    assert line_iou(coarse) == 0.0
    torch.manual_seed(0)
    refiner = DetailRefiner(2, channels=8)
    opt = torch.optim.Adam(refiner.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(refiner(images, coarse), labels).backward()
        opt.step()
    with torch.no_grad():
        assert line_iou(refiner(images, coarse)) > 0.9


def test_model_with_a_fresh_refiner_equals_the_model_without():
    from clustvit_core.flops import flop_breakdown
    from conftest import tiny_model

    torch.manual_seed(0)
    plain = tiny_model()
    refined = tiny_model(refine_channels=8)
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert sorted({k.split(".")[0] for k in missing}) == ["refiner"] and not unexpected
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(refined(x).logits, plain(x).logits, atol=0, rtol=0)
    flops = flop_breakdown(refined, x[:1])
    assert flops["refiner"] > 0 and flop_breakdown(plain, x[:1])["refiner"] == 0


def test_init_from_a_model_without_refiner(tmp_path):
    """A trained model (here the ViT) starts a model with a refiner: everything loads, the refiner starts fresh."""
    from clustvit_core.weights import load_trained_start, save_checkpoint
    from conftest import tiny_model

    vit = tiny_model(k=None, ip=None)
    save_checkpoint(tmp_path / "vit.safetensors", vit.state_dict(), vit.config)
    refined = tiny_model(k=None, ip=None, refine_channels=8)
    line = load_trained_start(refined, tmp_path / "vit.safetensors")
    assert "initialized here: refiner.convs" in line
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(refined(x).logits, vit(x).logits, atol=0, rtol=0)
