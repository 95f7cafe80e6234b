"""ClustViT through ONNX Runtime: export (`export_onnx`), checking against PyTorch (`check_onnx`), and
`OnnxModel`, an ONNX session that the predictor, the evaluator, the benchmark and the ROS node call
like the PyTorch model.

The exported graph (`onnx_graph.ExportGraph`) takes one image of the exported size and `keep_bias`,
and returns logits, cluster ids and the token count: each image keeps its own number of tokens, and
`keep_bias` stays a live knob. The model config travels in the ONNX metadata (`clustvit_config`), so
an .onnx file is all a deployment needs.

Providers: `cpu`, `cuda` (pip install onnxruntime-gpu), `tensorrt` (onnxruntime-gpu + TensorRT; fp16
and an engine cache folder, so a robot builds its engine once).
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import ConfigError, InputError, WeightsError

METADATA_KEY = "clustvit_config"
ATTENTION_KEY = "clustvit_attention"  # "onnx" (standard ops) | "ort" (com.microsoft.MultiHeadAttention)
INPUTS = ("image", "keep_bias")
OUTPUTS = ("logits", "cluster_ids", "tokens")
ORACLE_INPUT = "oracle_ids"  # graphs exported with oracle=True: cluster ids [1, h, w] given, not chosen
DEFAULT_OPSET = 17
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_INSTALL = {
    "cuda": "pip install onnxruntime-gpu (instead of onnxruntime) on a machine with CUDA",
    "tensorrt": "pip install onnxruntime-gpu and TensorRT (the tensorrt wheels) on a machine with CUDA",
}
# what export checks (and the README states): per image, ONNX Runtime vs PyTorch (fp32)
TOKENS_EQUAL = True
MIN_LABEL_AGREEMENT = 0.999
MAX_LOGIT_DIFF = 1e-3


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install -r requirements.txt") from None
    return onnx


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnxruntime backend needs onnxruntime: pip install -r requirements.txt "
                          "(onnxruntime-gpu for cuda / tensorrt)") from None
    return onnxruntime


# ----------------------------------------------------------------------------- export


def export_onnx(model, dst: str | Path, size: tuple[int, int] | None = None, opset: int = DEFAULT_OPSET,
                provenance: dict | None = None, oracle: bool = False, attention: str = "onnx") -> Path:
    """Write `model` (a ClustViT, eval, fp32) as an ONNX graph for images of `size` (default: the model's
    input size); its config and `provenance` go into the metadata. Returns the written path (atomic).
    `oracle`: a third input `oracle_ids` [1, h, w] replaces the Cluster module's choice (benchmarks).
    `attention`: "onnx" (MatMul / Softmax, runs anywhere, TensorRT included) or "ort" (ONNX Runtime's
    fused com.microsoft.MultiHeadAttention: CPU and CUDA providers only)."""
    import torch

    from .onnx_graph import ExportGraph

    onnx = _onnx()
    cfg: ModelConfig = model.config
    h, w = cfg.data.check_size(size or cfg.data.input_size, "--size")
    graph = ExportGraph(model.float().cpu().eval(), (h, w), oracle=oracle, attention=attention)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        example = (torch.zeros(1, 3, h, w), torch.tensor(0.0))
        inputs = list(INPUTS)
        if graph.oracle:
            p = cfg.patch_size
            example += (torch.zeros(1, h // p, w // p, dtype=torch.long),)
            inputs.append(ORACLE_INPUT)
        with torch.no_grad(), _quiet_exporter():
            # The TorchScript exporter records NonZero / CumSum with data-dependent shapes as they are; see
            # the README (Deployment) for why not the dynamo exporter.
            torch.onnx.export(graph, example, str(tmp), dynamo=False, input_names=inputs,
                              output_names=list(OUTPUTS), opset_version=int(opset), do_constant_folding=True,
                              custom_opsets={"com.microsoft": 1} if attention == "ort" else None)
        proto = onnx.load(str(tmp))
        meta = {METADATA_KEY: json.dumps({**cfg.to_dict(), "img_size": [h, w]}),
                "clustvit_input_size": f"{h},{w}", ATTENTION_KEY: attention,
                **{k: str(v) for k, v in (provenance or {}).items()}}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "clustvit_core"
        onnx.save(proto, str(tmp))
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


class _quiet_exporter:
    """The TorchScript exporter's deprecation and tracer warnings are about our deliberate choices."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def check_onnx(onnx_model: OnnxModel, model, images: Sequence[np.ndarray], keep_bias: float = 0.0) -> dict:
    """Compare ONNX Runtime with PyTorch (fp32, CPU) on RGB uint8 `images` at the exported size.

    Returns {images, tokens_equal, label_agreement (worst image), max_logit_diff, ok}; ok means every
    image has the same token count, >= MIN_LABEL_AGREEMENT equal labels and logits within MAX_LOGIT_DIFF.
    """
    import torch

    from .preprocessing import preprocess

    data = model.config.data
    worst_agreement, max_diff, tokens_equal = 1.0, 0.0, True
    model = model.float().cpu().eval()
    for image in images:
        x = preprocess(image, onnx_model.size, data.mean, data.std)
        with torch.inference_mode():
            ref = model(x, keep_bias=keep_bias)
        out = onnx_model(x, keep_bias=keep_bias)
        tokens_equal &= int(out.tokens[0]) == int(ref.tokens[0])
        worst_agreement = min(worst_agreement, float((out.logits.argmax(1) == ref.logits.argmax(1)).float().mean()))
        max_diff = max(max_diff, float((out.logits - ref.logits).abs().max()))
    ok = tokens_equal and worst_agreement >= MIN_LABEL_AGREEMENT and max_diff <= MAX_LOGIT_DIFF
    return {"images": len(images), "tokens_equal": tokens_equal, "label_agreement": worst_agreement,
            "max_logit_diff": max_diff, "ok": ok}


# ----------------------------------------------------------------------------- runtime


def read_onnx_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in an exported .onnx file (one-line WeightsError if it is not one of ours)."""
    return ModelConfig.from_dict(json.loads(read_onnx_metadata(path)[METADATA_KEY]))


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported .onnx file (config, input size, attention kind, provenance); one-line
    WeightsError if it is not one of ours."""
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} not found: give an .onnx file written by python -m clustvit_core.export --onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise WeightsError(f"{path}: not a readable ONNX file ({type(exc).__name__}); export it again") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise WeightsError(f"{path}: an ONNX file without ClustViT metadata; export it with python -m clustvit_core.export --onnx")
    return meta


def session_providers(providers: Sequence[str], *, fp16: bool = False, cache_dir: str | Path | None = None) -> list:
    """ONNX Runtime provider list for our names (cpu, cuda, tensorrt); one-line ConfigError naming what to
    install when this onnxruntime lacks one. TensorRT gets fp16 and an engine cache; CPU is always last."""
    ort = _ort()
    available = set(ort.get_available_providers())
    out: list = []
    for name in providers:
        if name not in PROVIDERS:
            raise ConfigError(f"provider {name!r}: use {', '.join(PROVIDERS)}")
        full = PROVIDERS[name]
        if full not in available:
            raise ConfigError(f"provider {name} is not available in this onnxruntime (it has "
                              f"{', '.join(sorted(available))}): {PROVIDER_INSTALL.get(name, 'reinstall onnxruntime')}")
        if name == "tensorrt":
            options = {"trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": cache_dir is not None}
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                options["trt_engine_cache_path"] = str(cache_dir)
            out.append((full, options))
        else:
            out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


class OnnxModel:
    """An exported ClustViT in an ONNX Runtime session, called like the PyTorch model:

        model = OnnxModel("cwfid_k3_ip3.onnx")               # providers=("cpu",) by default
        out = model(images, keep_bias=0.0)                    # images: normalized float [B, 3, H, W] torch tensor
        out.logits, out.cluster_ids, out.tokens               # as ClustViT.forward (cluster_ids None for a plain ViT)

    Images must have the exported size (`model.size`); a batch runs image by image (each keeps its tokens).
    """

    backend = "onnxruntime"
    training = False  # inference only; train()/eval() are no-ops

    def __init__(self, path: str | Path, providers: Sequence[str] = ("cpu",), *, fp16: bool = False,
                 cache_dir: str | Path | None = None, threads: int = 0):
        ort = _ort()
        self.path = Path(path)
        meta = read_onnx_metadata(self.path)
        self.config = ModelConfig.from_dict(json.loads(meta[METADATA_KEY]))
        self.attention = meta.get(ATTENTION_KEY, "onnx")
        if self.attention == "ort" and "tensorrt" in providers:
            raise ConfigError(f"{self.path} was exported with --attention ort (an ONNX Runtime op TensorRT cannot "
                              "build); export it again with --attention onnx for the tensorrt provider")
        self.size = self.config.data.input_size
        self.num_classes = self.config.num_classes
        self.clustering = self.config.k is not None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=session_providers(
                providers, fp16=fp16, cache_dir=cache_dir))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are long; the first line says it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{self.path}: ONNX Runtime cannot load it ({first}); export it again") from None
        names = tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs())
        self.oracle = names[0] == (*INPUTS, ORACLE_INPUT)
        if names not in ((INPUTS, OUTPUTS), ((*INPUTS, ORACLE_INPUT), OUTPUTS)):
            raise WeightsError(f"{self.path}: inputs/outputs {names}, expected {(INPUTS, OUTPUTS)}; "
                               "export it with python -m clustvit_core.export --onnx")
        self.providers = self.session.get_providers()

    @property
    def device(self):
        import torch

        return torch.device("cpu")  # outputs come back as CPU tensors whatever the provider

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    def to(self, *args, **kwargs) -> OnnxModel:
        return self

    def run(self, image: np.ndarray, keep_bias: float = 0.0,
            cluster_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """One normalized float32 image [1, 3, H, W] -> (logits [1, C, H, W], cluster ids [1, h, w], tokens).
        `cluster_ids` [1, h, w] only for a graph exported with oracle=True (and then required)."""
        if tuple(image.shape[-2:]) != tuple(self.size):
            raise InputError(f"{self.path.name} was exported for {self.size[1]}x{self.size[0]} images, got "
                             f"{image.shape[-1]}x{image.shape[-2]}: resize, or export again with --size H W")
        feed = {"image": np.ascontiguousarray(image, np.float32), "keep_bias": np.asarray(keep_bias, np.float32)}
        if (cluster_ids is not None) != self.oracle:
            raise InputError(f"{self.path.name}: cluster_ids are {'required' if self.oracle else 'not accepted'} "
                             f"(oracle clusters need a graph exported for them)")
        if cluster_ids is not None:
            feed[ORACLE_INPUT] = np.ascontiguousarray(cluster_ids, np.int64)
        logits, ids, tokens = self.session.run(None, feed)
        return logits, ids, int(tokens[0])

    def __call__(self, images, cluster_ids=None, keep_bias: float = 0.0):
        """ClustViT.forward's contract for torch tensors [B, 3, H, W] (cluster_ids, oracle clusters: not supported)."""
        import torch

        from .model import ClustViTOutput

        batch = images.detach().float().cpu().numpy()
        ids_in = None if cluster_ids is None else cluster_ids.detach().cpu().numpy()
        parts = [self.run(batch[b : b + 1], keep_bias, None if ids_in is None else ids_in[b : b + 1])
                 for b in range(batch.shape[0])]
        logits = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        ids = torch.from_numpy(np.concatenate([p[1] for p in parts])) if self.clustering else None
        tokens = torch.tensor([p[2] for p in parts], dtype=torch.long)
        return ClustViTOutput(logits, ids, None, tokens)
