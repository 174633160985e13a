"""MODEL.DEVICE resolution (no hard-coded devices anywhere else)."""
from __future__ import annotations

import contextlib

import torch

from utils.errors import ShipReIDError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda', 'cuda:N' and 'cpu' as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ShipReIDError(f"MODEL.DEVICE {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ShipReIDError(f"MODEL.DEVICE {name!r} asks for CUDA but no GPU is visible; use MODEL.DEVICE cpu or auto")
    return device


def move_batch(batch: dict, device: torch.device) -> dict:
    """Tensors (and int lists collated to tensors) to `device`; strings stay on the host."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast_to(mode: str, modes: dict, key: str, device: torch.device):
    """The context a precision setting runs in: `modes[mode]` is the autocast dtype on `device`, None for plain
    float32 (no autocast). `key` names the setting in the error for a mode that is not in `modes`."""
    if mode not in modes:
        raise ShipReIDError(f"{key} must be one of {list(modes)}, got {mode!r}")
    dtype = modes[mode]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 (10-bit mantissa) for CUDA matmuls and cuDNN convolutions inside the block, restored after.
    Training takes SOLVER.TF32; test features are always computed in full fp32 (ReIDModel.embed)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
