"""Plain-torch references that the tests and the benchmarks compare pozfast's kernels with."""

from __future__ import annotations

import torch
from torch import Tensor


def relu_count_reference(x: Tensor, channel_dim: int = 1) -> tuple[Tensor, Tensor]:
    """The usual APoZ code: ``y = torch.relu(x)`` then ``(y == 0).sum`` over every dim but the channel."""
    y = torch.relu(x)
    axis = channel_dim % x.dim()
    return y, (y == 0).sum(dim=[d for d in range(x.dim()) if d != axis], dtype=torch.int64)
