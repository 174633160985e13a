"""torchrun-native distributed helpers: ranks from the environment, gloo on CPU, nccl on GPU.

The same command runs with or without torchrun: without it (WORLD_SIZE unset or 1) every helper is a
no-op for a single process.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .errors import ShipReIDError


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group torchrun describes; returns this process's device (cuda:LOCAL_RANK on GPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ShipReIDError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                                "start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _AllGather(torch.autograd.Function):
    """Every rank's tensor concatenated along dim 0; backward hands each rank the gradient of its own rows,
    summed over the ranks (each rank's loss on the gathered batch sends gradient to every source)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # small tensors (features, labels): a full all-reduce works on every backend
        rows = grad.shape[0] // world_size()
        return grad[rank() * rows:(rank() + 1) * rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum that every rank uses is the sum of their gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` (same shape on each) along dim 0; gradients flow back to each source.

    A loss computed on the gathered batch is the same on every rank; backward sums its gradient over
    ranks into each local input, and DDP's averaging then gives exactly the one-process gradient.
    """
    if world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
