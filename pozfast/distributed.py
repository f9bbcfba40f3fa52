"""torch.distributed, as pozfast uses it: who is running, sums over ranks, agreement checks, broadcasts and
barriers that name a rank that stopped."""

from __future__ import annotations

import datetime
from typing import Any

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


def is_main() -> bool:
    """Whether this process writes shared files: rank 0, or the only process."""
    return world()[0] == 0


def sync(what: str, timeout: float) -> None:
    """Wait until every rank gets here. With gloo, a rank that does not come within ``timeout`` seconds
    (it stopped on an error, or hangs) is named in the error that every other rank raises."""
    if world()[1] == 1:
        return
    if torch.distributed.get_backend() != "gloo":
        torch.distributed.barrier()
        return
    try:
        torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=timeout), wait_all_ranks=True)
    except RuntimeError as exc:
        raise RuntimeError(f"{what}: not every rank arrived within {timeout:g} s ({exc})") from None


def gather(value: Any) -> list:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    size = world()[1]
    if size == 1:
        return [value]
    out: list = [None] * size
    torch.distributed.all_gather_object(out, value)
    return out


def agree(value: Any, what: str) -> None:
    """Raise on every rank, naming the ranks, unless every rank holds an equal ``value``."""
    values = gather(value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise ValueError(f"ranks disagree on {what}: rank 0 has {values[0]!r:.300}, rank {odd[0]} has "
                         f"{values[odd[0]]!r:.300} (ranks that differ from rank 0: {odd})")


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
