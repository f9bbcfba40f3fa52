"""torch.distributed, as pozfast uses it: who is running, and sums over ranks."""

from __future__ import annotations

import torch
from torch import Tensor


def initialized() -> bool:
    """Whether a torch.distributed process group is up."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over ranks, on ``t``'s device (``t`` itself without a process group).

    NCCL reduces on this rank's current CUDA device, other backends (gloo) on the CPU.
    """
    if world()[1] == 1:
        return t
    nccl = torch.distributed.get_backend() == "nccl"
    buf = t.to(torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu"))
    torch.distributed.all_reduce(buf)
    return buf.to(t.device)
