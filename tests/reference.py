"""Plain-torch references that the tests and the benchmarks compare pozfast's kernels with."""

from __future__ import annotations

import torch
from torch import Tensor


def relu_count_reference(x: Tensor, channel_dim: int = 1) -> tuple[Tensor, Tensor]:
    """The usual APoZ code: ``y = torch.relu(x)`` then ``(y == 0).sum`` over every dim but the channel."""
    y = torch.relu(x)
    axis = channel_dim % x.dim()
    return y, (y == 0).sum(dim=[d for d in range(x.dim()) if d != axis], dtype=torch.int64)


def near_zero_reference(a: Tensor, thresholds, channel_dim: int = 1, mask: Tensor | None = None) -> Tensor:
    """The usual code: ``((a.abs() <= tau) & mask).sum`` over every dim but the channel, for each tau: [T, C]."""
    axis = channel_dim % a.dim()
    dims = [d for d in range(a.dim()) if d != axis]
    keep = None
    if mask is not None:
        keep = (mask.to(a.device) != 0).reshape(tuple(mask.shape) + (1,) * (a.dim() - mask.dim()))
    rows = []
    for tau in thresholds:
        hit = a.abs() <= tau
        rows.append((hit if keep is None else hit & keep).sum(dim=dims, dtype=torch.int64))
    return torch.stack(rows)
