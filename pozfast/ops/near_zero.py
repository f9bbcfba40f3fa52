"""``near_zero``: per-channel counts of the elements with ``|a| <= tau``, for up to 32 thresholds in one pass.

Two forms: read-only counting of any activation (GELU, SiLU, ...), and counting fused with ReLU
(``y = torch.relu(x)`` and the counts of ``|y| <= tau`` in the same pass). Counts are int64 ``[T, C]`` and
are added to, so one tensor accumulates over batches. An optional token mask drops whole leading
positions (padding) inside the kernels: no masked copy, no extra pass.

Public functions -> the ``pozfast::near_zero_count_``, ``pozfast::relu_near_zero_count`` and
``pozfast::relu_near_zero_count_`` torch.library ops (schema, fake) -> one implementation per device: plain
torch by default, ``pozfast._C`` kernels (csrc/near_zero_cpu.cpp, csrc/near_zero_cuda.cu) on CPU and CUDA
tensors, or the Triton kernels (triton_kernels/near_zero.py), as :func:`pozfast.backends.select` picks.

Thresholds are rounded to the activation's dtype as torch rounds a Python float in ``a.abs() <= tau``, so the
counts equal ``((a.abs() <= tau) & mask).sum(...)`` exactly, for every dtype: NaN never counts, -0.0 counts
at tau = 0, inf only where tau itself rounds to inf (float16 above 65504).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from pozfast._native import native
from pozfast.backends import forced_backend, select
from pozfast.ops.relu_count import channel_axis, cuda_relu_clears, eager_plain, memory_split

MAX_THRESHOLDS = 32

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# The integer type whose bit patterns order the magnitudes of each float type (csrc/near_zero_elem.h).
_KEY_DTYPES = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
               torch.bfloat16: torch.int16}
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_SUPPORTED = ("cpu-native", "cuda-native", "triton", "torch")
_NATIVE_DEVICES = ("cpu", "cuda")


# --- validation -------------------------------------------------------------------------------------

def check_thresholds(thresholds: object, name: str = "thresholds") -> list[float]:
    """1 to 32 finite, non-negative, strictly increasing numbers, as a list of floats."""
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        if isinstance(thresholds, Tensor) and thresholds.dim() == 1:
            thresholds = thresholds.tolist()
        else:
            raise TypeError(f"{name} must be a sequence of numbers, e.g. (0.0, 0.01), got "
                            f"{type(thresholds).__name__} {thresholds!r}")
    values = []
    for tau in thresholds:
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise TypeError(f"{name} must hold numbers, got {type(tau).__name__} {tau!r}")
        values.append(float(tau))
    if not 1 <= len(values) <= MAX_THRESHOLDS:
        raise ValueError(f"{name} must hold 1 to {MAX_THRESHOLDS} values, got {len(values)}")
    bad = [tau for tau in values if not (math.isfinite(tau) and tau >= 0)]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0, got {bad[0]!r} in {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing (sorted, no duplicates), got {values}")
    return values


def _check_mask(mask: object, t: Tensor, axis: int, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be None or a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype not in _MASK_DTYPES:
        raise TypeError(f"mask must be a bool or integer tensor (nonzero = counted), got {mask.dtype}")
    k = mask.dim()
    if k > axis or tuple(mask.shape) != tuple(t.shape[:k]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} matches no leading dims of {name} of shape "
                         f"{tuple(t.shape)} before its channel dim {axis}: expected one of "
                         f"{[tuple(t.shape[:j]) for j in range(1, axis + 1)]}")


def _check_counts(counts: object, t: Tensor, axis: int, thresholds: Sequence[float]) -> None:
    want = (len(thresholds), t.shape[axis])
    if not isinstance(counts, Tensor):
        raise TypeError(f"counts must be a torch.Tensor, got {type(counts).__name__}")
    if counts.dtype != torch.int64 or tuple(counts.shape) != want or counts.device != t.device:
        raise ValueError(f"counts must be an int64 tensor of shape {want} (thresholds, channels) on {t.device}, "
                         f"got {counts.dtype} of shape {tuple(counts.shape)} on {counts.device}")


def _checked(counts: Tensor, t: Tensor, thresholds: Sequence[float], channel_dim: int, mask: Optional[Tensor],
             name: str) -> tuple[int, list[float]]:
    """Every argument of an op checked; returns the axis and the thresholds as floats."""
    axis = channel_axis(t, channel_dim, name)
    thresholds = check_thresholds(thresholds)
    _check_mask(mask, t, axis, name)
    _check_counts(counts, t, axis, thresholds)
    return axis, thresholds


@functools.lru_cache(maxsize=256)
def threshold_keys(thresholds: tuple[float, ...], dtype: torch.dtype) -> tuple[int, ...]:
    """The thresholds rounded to ``dtype`` as torch rounds a Python float against a ``dtype`` tensor, as
    their bit patterns (the kernels compare ``bits(|a|) <= key``; equal keys are allowed)."""
    rounded = torch.tensor(thresholds, dtype=torch.float64).to(dtype)
    return tuple(rounded.view(_KEY_DTYPES[dtype]).tolist())


# --- layouts ------------------------------------------------------------------------------------------

def _layout(t: Tensor, axis: int, mask: Optional[Tensor]) -> tuple[tuple[int, int, int], int] | None:
    """``((outer, channels, inner), repeat)`` when the kernels can read t in place with this mask, else None.

    t must be dense (memory_split), and the mask's dims t's outermost dims in memory, in order: then outer
    row r (memory order) lies at the mask's flat index r // repeat.
    """
    if t.is_contiguous():  # also right for a single channel, whose stride memory_split cannot use
        split = (math.prod(t.shape[:axis]), t.shape[axis], math.prod(t.shape[axis + 1:]))
    else:
        split = memory_split(t, axis)
        if split is None:
            return None
    if mask is None:
        return split, 1
    outer, channels, inner = split
    entries = mask.numel()
    if entries == 0 or outer % entries:
        return None
    repeat = outer // entries
    expected = channels * inner * repeat
    for d in reversed(range(mask.dim())):
        if t.shape[d] != 1:
            if t.stride(d) != expected:
                return None
            expected *= t.shape[d]
    return split, repeat


def _mask_rows(mask: Tensor, device: torch.device) -> Tensor:
    """The mask as one byte per entry (0 or 1), flat and contiguous, on ``device``."""
    keep = mask.to(device)
    if keep.dtype != torch.bool:
        keep = keep != 0
    return keep.reshape(-1).contiguous().view(torch.uint8)


# --- the counting core: read-only (y None) or fused with relu (y written) --------------------------

def _torch_counts(t: Tensor, thresholds: Sequence[float], axis: int, mask: Optional[Tensor]) -> Tensor:
    """[T, C] int64 counts of |t| <= tau, in plain torch: the default implementation."""
    magnitude = t.abs()
    dims = [d for d in range(t.dim()) if d != axis]
    keep = None
    if mask is not None:
        keep = mask.to(t.device) != 0
        keep = keep.reshape(tuple(keep.shape) + (1,) * (t.dim() - keep.dim()))
    rows = []
    for tau in thresholds:
        hit = magnitude <= tau
        if keep is not None:
            hit = hit & keep
        rows.append(hit.sum(dim=dims, dtype=torch.int64))
    return torch.stack(rows)


def _run(counts: Tensor, x: Tensor, y: Optional[Tensor], layout: tuple[tuple[int, int, int], int],
         thresholds: list[float], mask: Optional[Tensor], backend: str) -> None:
    """Add the counts of x (or, with y, write relu(x) into y and add its counts) with a kernel backend.

    x is read in place with ``layout`` (from _layout); y, when given, has x's strides (it may be x).
    """
    (outer, channels, inner), repeat = layout
    device = x.device
    rows = _mask_rows(mask, device) if mask is not None else None
    target = counts if counts.is_contiguous() else torch.zeros_like(counts, memory_format=torch.contiguous_format)
    clear = y is not None and x.is_cuda and cuda_relu_clears(device, x.dtype)  # the ReLU's sign of a zero
    if backend == "triton":
        from pozfast.triton_kernels.near_zero import near_zero_count as triton_near_zero_count

        keys = threshold_keys(tuple(thresholds), x.dtype)
        triton_near_zero_count(x, y, target, keys, outer, channels, inner, rows, repeat, clear=clear)
    else:
        keys = list(threshold_keys(tuple(thresholds), x.dtype))
        args = (x.data_ptr(), 0 if y is None else y.data_ptr(), target.data_ptr(), outer, channels, inner,
                0 if rows is None else rows.data_ptr(), repeat, keys, _DTYPE_CODES[x.dtype])
        if backend == "cuda-native":
            with torch.cuda.device(device):
                native().near_zero_count_cuda(*args, clear, torch.cuda.current_stream(device).cuda_stream)
        else:
            # The thread count follows torch.set_num_threads (DataLoader workers and CPU DDP ranks lower it).
            native().near_zero_count_cpu(*args, torch.get_num_threads())
    if target is not counts:
        counts.add_(target)


def _backend(device: torch.device, native_ok: bool) -> str:
    return select("near_zero_count", device, _SUPPORTED) if native_ok else "torch"


def _count(counts: Tensor, a: Tensor, thresholds: Sequence[float], channel_dim: int, mask: Optional[Tensor],
           native_ok: bool) -> None:
    axis, thresholds = _checked(counts, a, thresholds, channel_dim, mask, "a")
    backend = _backend(a.device, native_ok)
    if backend == "torch" or a.numel() == 0:
        if a.numel():
            counts.add_(_torch_counts(a, thresholds, axis, mask))
        return
    layout = _layout(a, axis, mask)
    if layout is None:  # strided, or a mask over dims that are not outermost in memory: one copy
        a = a.contiguous()
        layout = _layout(a, axis, mask)
    _run(counts, a, None, layout, thresholds, mask, backend)


def _relu_into(counts: Tensor, x: Tensor, y: Tensor, axis: int, thresholds: list[float], mask: Optional[Tensor],
               backend: str) -> bool:
    """relu(x) into y (x's strides; may be x) and its counts; False, doing nothing, if a kernel backend
    cannot read x's layout in place."""
    if backend == "torch" or x.numel() == 0:
        torch.clamp_min(x, 0, out=y)  # what torch.relu computes, bit for bit
        if x.numel():
            counts.add_(_torch_counts(y, thresholds, axis, mask))
        return True
    layout = _layout(x, axis, mask)
    if layout is None:
        return False
    _run(counts, x, y, layout, thresholds, mask, backend)
    return True


def _relu_functional(x: Tensor, counts: Tensor, thresholds: Sequence[float], channel_dim: int,
                     mask: Optional[Tensor], native_ok: bool) -> Tensor:
    axis, thresholds = _checked(counts, x, thresholds, channel_dim, mask, "x")
    backend = _backend(x.device, native_ok)
    y = torch.empty_like(x)  # the layout torch.relu gives (and the fake implementation promises)
    if _relu_into(counts, x, y, axis, thresholds, mask, backend):
        return y
    if _relu_into(counts, y.copy_(x), y, axis, thresholds, mask, backend):  # dense now: relu in place
        return y
    work = x.contiguous()  # y's layout does not suit the mask: run on a contiguous copy
    _relu_into(counts, work, work, axis, thresholds, mask, backend)
    return y.copy_(work)


def _relu_inplace(x: Tensor, counts: Tensor, thresholds: Sequence[float], channel_dim: int,
                  mask: Optional[Tensor], native_ok: bool) -> None:
    axis, thresholds = _checked(counts, x, thresholds, channel_dim, mask, "x")
    backend = _backend(x.device, native_ok)
    if not _relu_into(counts, x, x, axis, thresholds, mask, backend):
        work = x.contiguous()
        _relu_into(counts, work, work, axis, thresholds, mask, backend)
        x.copy_(work)


# --- torch.library registration: default = plain torch, CPU/CUDA = the selected backend -------------

@torch.library.custom_op("pozfast::near_zero_count_", mutates_args=("counts",))
def _near_zero_count_op(counts: Tensor, a: Tensor, thresholds: list[float], channel_dim: int,
                        mask: Optional[Tensor] = None) -> None:
    _count(counts, a, thresholds, channel_dim, mask, native_ok=False)


@torch.library.custom_op("pozfast::relu_near_zero_count", mutates_args=("counts",))
def _relu_near_zero_count_op(x: Tensor, counts: Tensor, thresholds: list[float], channel_dim: int,
                             mask: Optional[Tensor] = None) -> Tensor:
    return _relu_functional(x, counts, thresholds, channel_dim, mask, native_ok=False)


@torch.library.custom_op("pozfast::relu_near_zero_count_", mutates_args=("x", "counts"))
def _relu_near_zero_count_inplace_op(x: Tensor, counts: Tensor, thresholds: list[float], channel_dim: int,
                                     mask: Optional[Tensor] = None) -> None:
    _relu_inplace(x, counts, thresholds, channel_dim, mask, native_ok=False)


_near_zero_count_op.register_kernel(_NATIVE_DEVICES)(
    lambda counts, a, thresholds, channel_dim, mask=None: _count(counts, a, thresholds, channel_dim, mask, True))
_relu_near_zero_count_op.register_kernel(_NATIVE_DEVICES)(
    lambda x, counts, thresholds, channel_dim, mask=None:
    _relu_functional(x, counts, thresholds, channel_dim, mask, True))
_relu_near_zero_count_inplace_op.register_kernel(_NATIVE_DEVICES)(
    lambda x, counts, thresholds, channel_dim, mask=None: _relu_inplace(x, counts, thresholds, channel_dim, mask, True))


@_near_zero_count_op.register_fake
def _(counts: Tensor, a: Tensor, thresholds: list[float], channel_dim: int, mask: Optional[Tensor] = None) -> None:
    _checked(counts, a, thresholds, channel_dim, mask, "a")


@_relu_near_zero_count_op.register_fake
def _(x: Tensor, counts: Tensor, thresholds: list[float], channel_dim: int,
      mask: Optional[Tensor] = None) -> Tensor:
    _checked(counts, x, thresholds, channel_dim, mask, "x")
    return torch.empty_like(x)


@_relu_near_zero_count_inplace_op.register_fake
def _(x: Tensor, counts: Tensor, thresholds: list[float], channel_dim: int, mask: Optional[Tensor] = None) -> None:
    _checked(counts, x, thresholds, channel_dim, mask, "x")


class _ReluNearZeroWithGrad(torch.autograd.Function):
    """relu_near_zero_count under autograd, with torch.relu's gradient: torch.library takes no autograd
    formula for ops that mutate an argument (here the counts)."""

    @staticmethod
    def forward(ctx, x: Tensor, counts: Tensor, thresholds: list[float], channel_dim: int,
                mask: Optional[Tensor], inplace: bool) -> Tensor:
        if inplace:
            torch.ops.pozfast.relu_near_zero_count_(x, counts, thresholds, channel_dim, mask)
            ctx.mark_dirty(x)
            y = x
        else:
            y = torch.ops.pozfast.relu_near_zero_count(x, counts, thresholds, channel_dim, mask)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad_y, y, 0), None, None, None, None, None


# --- accumulating calls (what trackers call on every activation) ------------------------------------

def near_zero_count_(counts: Tensor, a: Tensor, thresholds: Sequence[float], channel_dim: int = 1,
                     mask: Optional[Tensor] = None) -> None:
    """Add to ``counts`` [T, C] (int64, on a's device) the per-channel counts of ``|a| <= thresholds[t]``.

    The same as ``torch.ops.pozfast.near_zero_count_``, without the dispatcher's cost on plain eager tensors.
    """
    if eager_plain(counts, a, mask):
        _count(counts, a, thresholds, channel_dim, mask, native_ok=True)
    else:
        torch.ops.pozfast.near_zero_count_(counts, a, list(thresholds), channel_dim, mask)


def relu_near_zero_count(x: Tensor, counts: Tensor, thresholds: Sequence[float], channel_dim: int = 1,
                         mask: Optional[Tensor] = None, inplace: bool = False) -> Tensor:
    """``torch.relu(x)`` (into x when ``inplace``), adding the counts of ``|y| <= thresholds[t]`` to ``counts``.

    Gradients flow through y as through torch.relu; counts get none.
    """
    if eager_plain(x, counts, mask):
        if inplace:
            _relu_inplace(x, counts, thresholds, channel_dim, mask, native_ok=True)
            torch.autograd.graph.increment_version(x)
            return x
        return _relu_functional(x, counts, thresholds, channel_dim, mask, native_ok=True)
    thresholds = list(thresholds)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ReluNearZeroWithGrad.apply(x, counts, thresholds, channel_dim, mask, inplace)
    if inplace:
        torch.ops.pozfast.relu_near_zero_count_(x, counts, thresholds, channel_dim, mask)
        return x
    return torch.ops.pozfast.relu_near_zero_count(x, counts, thresholds, channel_dim, mask)


_PLANS: dict[tuple, tuple[str, tuple[tuple[int, int, int], int]] | None] = {}


def tracked_relu(x: Tensor, counts: Tensor, thresholds: tuple[float, ...], axis: int, mask: Optional[Tensor],
                 inplace: bool) -> Tensor:
    """:func:`relu_near_zero_count` for a tracker, whose counters and thresholds are valid by construction
    and whose calls repeat the same few layouts: without a mask, in a plain eager call, the backend and the
    layout are found once per (layout, dtype, device, forced backend), not on every call."""
    if mask is None and eager_plain(x, counts):
        key = (x.shape, x.stride(), x.dtype, x.device, axis, thresholds, forced_backend())
        plan = _PLANS.get(key, False)
        if plan is False:
            backend = _backend(x.device, True)
            layout = _layout(x, axis, None) if backend != "torch" else None
            plan = _PLANS[key] = (backend, layout) if layout is not None and x.numel() else None
            if len(_PLANS) > 4096:  # a model of ever-changing shapes: keep the table small
                _PLANS.clear()
        if plan is not None:
            y = x if inplace else torch.empty_like(x)
            _run(counts, x, y, plan[1], list(thresholds), None, plan[0])
            if inplace:
                torch.autograd.graph.increment_version(x)
            return y
    return relu_near_zero_count(x, counts, thresholds, axis, mask, inplace)


# --- public API ---------------------------------------------------------------------------------------

def near_zero_counts(a: Tensor, thresholds: Sequence[float] = (0.0,), channel_dim: int = 1, *,
                     mask: Optional[Tensor] = None) -> Tensor:
    """Per channel, how many elements of ``a`` have ``|a| <= tau``, for each threshold tau, in one pass.

    Args:
        a: float32, float64, float16 or bfloat16 activation with at least 2 dims: (N, C), (N, C, H, W),
            channels_last, (N, L, C), (N*L, C), ... Contiguous and channels_last inputs are read in place;
            other strides are copied once. ``a`` is never written.
        thresholds: 1 to 32 finite, non-negative, strictly increasing numbers. ``(0.0,)`` counts exact zeros
            (APoZ). Each is rounded to a's dtype as in ``a.abs() <= tau``.
        channel_dim: the channel axis (negative counts from the end; -1 for (N, L, C)).
        mask: None, or a bool or integer tensor over a's leading dims (``mask.shape == a.shape[:k]``,
            k <= channel_dim), on any device: only elements whose leading index has a nonzero entry count.
            An (N, L) token mask applies to (N, L, C); ``mask.reshape(-1)`` to the flattened (N*L, C).

    Returns:
        int64 tensor [len(thresholds), a.shape[channel_dim]] on a's device, equal to
        ``((a.abs() <= tau) & mask).sum(...)`` for each tau.
    """
    axis = channel_axis(a, channel_dim, "a")
    thresholds = check_thresholds(thresholds)
    _check_mask(mask, a, axis, "a")
    counts = torch.zeros((len(thresholds), a.shape[axis]), dtype=torch.int64, device=a.device)
    near_zero_count_(counts, a, thresholds, axis, mask)
    return counts


def relu_near_zero_counts(x: Tensor, thresholds: Sequence[float] = (0.0,), channel_dim: int = 1, *,
                          mask: Optional[Tensor] = None, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """``torch.relu(x)`` and, in the same pass, the per-channel counts of ``|y| <= tau`` for each threshold.

    Arguments as :func:`near_zero_counts`; ``inplace`` overwrites x like ``torch.relu_``. Returns
    ``(y, counts)``: y equals ``torch.relu(x)`` bit for bit (with torch.relu's gradient), counts is int64
    [len(thresholds), C] on x's device. With ``thresholds=(0.0,)`` the counts are relu_count's zeros.
    """
    axis = channel_axis(x, channel_dim, "x")
    thresholds = check_thresholds(thresholds)
    _check_mask(mask, x, axis, "x")
    counts = torch.zeros((len(thresholds), x.shape[axis]), dtype=torch.int64, device=x.device)
    return relu_near_zero_count(x, counts, thresholds, axis, mask, inplace), counts
