"""Token masks: which positions of a batch of sequences are counted (padding is not), and which
activations a mask applies to.

A token mask is a bool or integer tensor (N, L) over N sequences of L positions; a nonzero entry marks a
position that counts (a Hugging Face ``attention_mask`` is one). It applies to an activation whose leading
dims are (N, L) (token activations (N, L, C)), or whose first dim has N*L rows (the flattened (N*L, C)
activations of OPT's feed-forward block), with the channel axis after them. Other activations (a pooled
(N, C) head, a conv map) are counted whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import Tensor

TokenMask = Union[str, None, Callable[[Any], Any]]
_AUTO = "auto"
_INTEGER = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def option(value: Any, name: str = "token_mask") -> TokenMask:
    """The validated ``token_mask=`` option: ``"auto"``, None, or a function batch -> mask or None."""
    if value is None or callable(value) or (isinstance(value, str) and value == _AUTO):
        return value
    raise TypeError(f"{name} must be 'auto', None or a function batch -> (N, L) mask, got "
                    f"{type(value).__name__} {value!r:.60}")


def checked(mask: Any, name: str = "token mask") -> Tensor:
    """``mask`` if it is a bool or integer tensor (N, L); else a TypeError or ValueError that says why."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, L) of bool or integers, got {type(mask).__name__}")
    if mask.dtype not in _INTEGER:
        raise TypeError(f"{name} must hold bool or integers (nonzero = counted), got {mask.dtype}; for a "
                        "float mask pass mask != 0")
    if mask.dim() != 2:
        raise ValueError(f"{name} must have 2 dims (sequences, positions), got shape {tuple(mask.shape)}")
    return mask


def from_batch(batch: Any, token_mask: TokenMask) -> Tensor | None:
    """The mask of one batch: its ``attention_mask`` entry (``"auto"``, dict and BatchEncoding batches),
    ``token_mask(batch)`` (a function), or None."""
    if token_mask is None:
        return None
    if token_mask == _AUTO:
        found = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        return None if found is None else checked(found, "the batch's attention_mask")
    found = token_mask(batch)
    return None if found is None else checked(found, "the mask token_mask(batch) returned")


def applied(mask: Tensor, x: Tensor, channel_dim: int) -> Tensor | None:
    """The mask over ``x``'s leading dims as the counting kernels take it, or None when it does not apply.

    ``channel_dim`` is non-negative: the mask must cover dims before it.
    """
    n, length = mask.shape
    if channel_dim >= 2 and x.shape[0] == n and x.shape[1] == length:
        return mask
    if channel_dim >= 1 and x.shape[0] == n * length:
        return mask.reshape(-1)
    return None
