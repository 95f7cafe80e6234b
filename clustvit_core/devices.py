"""Where and in which precision a model runs: the one parser of device names and the one list of precisions.

Torch is imported only by `resolve_device` / `autocast_dtype`, so light tools (the ROS parameter
table, bag tools) can validate names without importing it.
"""
from __future__ import annotations

from .errors import ConfigError

DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "fp16", "bf16")  # fp16/bf16 run under torch.autocast; fp16 needs CUDA


def check_precision(precision: str, what: str = "precision") -> str:
    """`precision` if it is one of PRECISIONS, else a one-line ConfigError naming `what`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{what}={precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def native_bf16_cpu() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (Intel AMX tiles or AVX512-BF16): bf16 autocast is then
    faster than fp32 on it at the same tokens (measure it: python -m clustvit_core.benchmark --precisions fp32 bf16);
    False where torch cannot tell."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str = "auto", what: str = "device"):
    """'auto' -> cuda if torch sees a GPU, else cpu; 'cpu', 'cuda', 'cuda:N' as given (checked).

    Returns a torch.device; bad or unavailable names raise a one-line ConfigError naming `what`.
    """
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"{what}={device!r}: use {DEVICE_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={device!r} but torch sees no CUDA device: use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{what}={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise ConfigError(f"{what}={device!r}: use {DEVICE_HELP}")
    return dev


def autocast_dtype(precision: str, device, what: str = "precision"):
    """The torch.autocast dtype of `precision` on `device` (None for fp32); fp16 needs CUDA."""
    import torch

    check_precision(precision, what)
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ConfigError(f"{what}=fp16 needs a CUDA device: use fp32 or bf16 on the CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
