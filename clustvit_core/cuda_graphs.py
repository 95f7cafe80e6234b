"""Inference replayed from CUDA graphs: the kernel launches of a forward pass recorded once and replayed.

On a fast GPU a ViT-S at batch 1 is bound by the host (Python and kernel launches), not by its FLOPs
(README, "On a GPU"), so merging tokens saves kernel time that nobody waits for. A CUDA graph replays
all launches of a forward as one, but only with fixed shapes, and a ClustViT's sequence length differs
per image. `GraphedModel` therefore records a ClustViT as two parts:

    A: patch embedding, blocks before ip, Cluster module -> per-image token counts   (fixed shapes)
    host: L = max tokens, rounded up to a multiple of `bucket` (the one host read per call)
    B[L]: merge padded to L (masked), reduced blocks, regeneration, head              (one graph per L)

A plain ViT or CTS model is one graph. Graphs are recorded on first use of an input shape (and, for
B, of a length), each with its own GPU memory for its intermediate tensors (not measured: a few ViT-S
activations per recorded length); inputs are copied into fixed buffers, outputs are copied out. With `capture=False`
(the default off CUDA) the same parts run eagerly: the tests check that path on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import Tensor

from .devices import autocast_dtype
from .errors import ConfigError
from .merge import token_counts
from .model import ClustViT, ClustViTOutput, PreMerge


def _copy(value):
    """Outputs leave the recorded buffers (the next replay overwrites them)."""
    return value.clone() if isinstance(value, Tensor) else value


class _Part:
    """One recorded part: `fn()` run eagerly, or replayed from a CUDA graph recorded on first call."""

    def __init__(self, fn: Callable, capture: bool, warmup: int = 2):
        self.fn, self.capture, self.warmup = fn, capture, warmup
        self.graph, self.out = None, None

    def __call__(self):
        if not self.capture:
            return self.fn()
        if self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # first runs off the capture stream (cuBLAS / cuDNN set-up)
                for _ in range(self.warmup):
                    self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn()
        self.graph.replay()
        return self.out


class _Shape:
    """Fixed input buffers and recorded parts for one input shape [B, C, H, W]."""

    def __init__(self, shape: torch.Size, device: torch.device):
        self.images = torch.zeros(shape, device=device)
        self.keep_bias = torch.zeros((), device=device)
        self.extra: dict[str, Tensor] = {}  # cluster_ids / share_scores (oracle runs), drop_mask (letterbox)
        self.whole: _Part | None = None  # plain ViT / CTS
        self.prepare: _Part | None = None  # ClustViT part A
        self.finish: dict[int, _Part] = {}  # ClustViT part B per sequence length
        self.state: PreMerge | None = None  # part A's output (under capture: the same recorded tensors every call)


class GraphedModel:
    """A ClustViT (or plain ViT / CTS) `model` for inference, replayed from CUDA graphs (see module docstring).

        graphed = GraphedModel(model, precision="fp16")     # model on a CUDA device, eval mode
        out = graphed(images, keep_bias=0.0)                # ClustViTOutput, like model(images, keep_bias=...)

    bucket: reduced lengths are rounded up to a multiple of it (fewer graphs, a little padding).
    capture: record CUDA graphs (default: when the model is on CUDA); False runs the same parts eagerly.
    Not for training (no gradients), nor for models with empty_clusters "zeros" (their merge reads the host).
    """

    def __init__(self, model: ClustViT, precision: str = "fp32", bucket: int = 32, capture: bool | None = None):
        if model.training:
            raise ConfigError("GraphedModel runs inference only: call model.eval() first")
        if model.clustering and model.config.empty_clusters == "zeros":
            raise ConfigError("GraphedModel: empty_clusters 'zeros' decides on the host whether to merge; use 'drop'")
        if bucket < 1:
            raise ConfigError(f"bucket={bucket}: need a sequence-length step >= 1")
        self.model, self.bucket = model, int(bucket)
        self.device = next(model.parameters()).device
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise ConfigError(f"GraphedModel(capture=True) needs the model on a CUDA device, it is on {self.device}")
        self.dtype = autocast_dtype(precision, self.device, "precision")
        self.shapes: dict[tuple, _Shape] = {}

    @property
    def config(self):
        return self.model.config

    @property
    def clustering(self) -> bool:
        return self.model.clustering

    def graphs(self) -> int:
        """How many parts have been recorded (or prepared, without capture) so far."""
        return sum((s.whole is not None) + (s.prepare is not None) + len(s.finish) for s in self.shapes.values())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None, cache_enabled=False)

    def __call__(self, images: Tensor, keep_bias: float = 0.0, cluster_ids: Tensor | None = None,
                 share_scores: Tensor | None = None, drop_mask: Tensor | None = None) -> ClustViTOutput:
        """As `ClustViT.forward` (images a multiple of the patch size); outputs are copies."""
        model = self.model
        images = model.check_images(images)
        model.check_inputs(cluster_ids, share_scores, drop_mask)
        p = model.backbone.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ConfigError(f"GraphedModel: input {tuple(images.shape[-2:])} is not a multiple of the patch size {p}; "
                              "resize or pad it first (preprocess does)")
        given = (("cluster_ids", cluster_ids), ("share_scores", share_scores), ("drop_mask", drop_mask))
        extra = {name: t for name, t in given if t is not None}
        key = (tuple(images.shape), tuple(sorted((n, tuple(t.shape), t.dtype) for n, t in extra.items())))
        slot = self.shapes.get(key)
        if slot is None:
            slot = self.shapes[key] = _Shape(images.shape, self.device)
            slot.extra = {n: torch.zeros(t.shape, dtype=t.dtype, device=self.device) for n, t in extra.items()}
        slot.images.copy_(images)
        slot.keep_bias.fill_(float(keep_bias))
        for n, t in extra.items():
            slot.extra[n].copy_(t)
        with torch.inference_mode():
            out = self._clustered(slot) if model.clustering else self._whole(slot)
        return ClustViTOutput(**{f.name: _copy(getattr(out, f.name)) for f in dataclasses.fields(out)})

    def _whole(self, slot: _Shape) -> ClustViTOutput:
        if slot.whole is None:
            def run():
                with self._autocast():
                    return self.model(slot.images, **slot.extra)
            slot.whole = _Part(run, self.capture)
        return slot.whole()

    def _clustered(self, slot: _Shape) -> ClustViTOutput:
        model, backbone = self.model, self.model.backbone
        if slot.prepare is None:
            def prepare():
                with self._autocast():
                    state = backbone.prepare_merge(slot.images, model.out_indices, slot.extra.get("cluster_ids"),
                                                   keep_bias=slot.keep_bias, drop_mask=slot.extra.get("drop_mask"))
                return state, token_counts(state.cluster_ids, backbone.k, state.keep_empty)[0]
            slot.prepare = _Part(prepare, self.capture)
        slot.state, tokens = slot.prepare()
        state = slot.state
        longest = int(tokens.max())  # the one host read: which recorded length to replay
        length = min(math.ceil(longest / self.bucket) * self.bucket, state.x_ip.shape[1] + backbone.k)
        if length not in slot.finish:
            def finish(length: int = length):
                with self._autocast():
                    out = backbone.finish_merge(slot.state, model.out_indices, length=length)
                    return model.decode(slot.images, out, tuple(slot.images.shape[-2:]))
            slot.finish[length] = _Part(finish, self.capture)
        return slot.finish[length]()
