"""``relu_count``: torch.relu fused with a per-channel count of the zeros it outputs.

Public function -> the ``pozfast::relu_count*`` torch.library ops (schema, fake, autograd) -> one
implementation per device: plain torch by default, ``pozfast._C`` kernels (csrc/relu_count_cpu.cpp,
csrc/relu_count_cuda.cu) on CPU and CUDA tensors when the native backend is selected
(:func:`pozfast.backends.select`). The CPU kernel runs on ``torch.get_num_threads()`` OpenMP threads.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode

from pozfast._native import native
from pozfast.backends import select
from pozfast.validate import integer

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_SUPPORTED = ("cpu-native", "cuda-native", "triton", "torch")
_NATIVE_DEVICES = ("cpu", "cuda")


def channel_axis(x: object, channel_dim: object, name: str = "x") -> int:
    """Validate the activation ``x`` (named ``name`` in errors) and return ``channel_dim`` as a non-negative
    axis."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPE_CODES:
        raise TypeError(f"{name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}")
    ndim = x.dim()
    if ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (positions and channel), got shape {tuple(x.shape)}")
    if type(channel_dim) is not int:  # plain ints skip the general check: this runs on every call
        channel_dim = integer(channel_dim, "channel_dim")
    if not -ndim <= channel_dim < ndim:
        raise ValueError(f"channel_dim must be an int in [{-ndim}, {ndim - 1}] for {name} of shape "
                         f"{tuple(x.shape)}, got {channel_dim!r}")
    return channel_dim % ndim


def _byte_span(t: Tensor) -> tuple[int, int]:
    """The first and one-past-last byte addresses that t's elements can occupy (t not empty)."""
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def memory_split(x: Tensor, axis: int) -> tuple[int, int, int] | None:
    """``(outer, channels, inner)`` of x in memory order if x is non-overlapping and dense, else None.

    Contiguous NCHW gives (N, C, H*W); channels_last gives (N*H*W, C, 1).
    """
    channels, numel = x.shape[axis], x.numel()
    if x.is_contiguous() and channels > 1 and numel:  # the common case, without sorting strides
        inner = math.prod(x.shape[axis + 1:])
        return numel // (channels * inner), channels, inner
    sizes, strides = x.shape, x.stride()
    dims = sorted((d for d in range(x.dim()) if sizes[d] != 1), key=lambda d: strides[d])
    expected = 1
    for d in dims:
        if strides[d] != expected:
            return None
        expected *= sizes[d]
    if channels <= 1 or numel == 0:
        return 1, channels, numel // max(channels, 1)
    inner = 1
    for d in dims:
        if strides[d] < strides[axis]:
            inner *= sizes[d]
    return numel // (channels * inner), channels, inner


_CLEARS: dict[torch.device, dict[torch.dtype, bool]] = {}


def cuda_relu_clears(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch.relu on this CUDA device makes -0.0 into +0.0 (clamp_min as a float max, as some torch
    versions compute it) rather than keeping it (a compare, as on the CPU). The CUDA and Triton kernels take
    the answer, so that y has torch.relu's bits either way. Probed with torch itself on the device's first
    call, for every dtype at once, so that later calls in a CUDA graph capture find it known."""
    known = _CLEARS.get(device)
    if known is None:
        known = _CLEARS[device] = _probe_relu_clears(device)
    return known[dtype]


def _probe_relu_clears(device: torch.device) -> dict[torch.dtype, bool]:
    on_cuda = device.type == "cuda"
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch._C.DisableTorchFunction())  # torch's own relu, not a mode's
        stack.enter_context(_disable_current_modes())
        if on_cuda:
            stack.enter_context(torch.cuda.device(device))
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"pozfast's first CUDA ReLU on {device} asks torch how its relu treats -0.0, "
                                   "which cannot run while a CUDA graph is being captured: call it once before")
            # The probe reads its answer on the host once: not the per-call synchronisation that mode reports.
            debug = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            stack.callback(torch.cuda.set_sync_debug_mode, debug)
        probe = torch.tensor([-0.0], device=device)
        return {t: not bool(torch.signbit(torch.relu(probe.to(t))).item())
                for t in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}


def count_zeros_reference(y: Tensor, axis: int) -> Tensor:
    """Per-channel number of zeros of ``y`` (int64), in plain torch."""
    return (y == 0).sum(dim=[d for d in range(y.dim()) if d != axis], dtype=torch.int64)


def _into(x: Tensor, y: Tensor, axis: int, split: tuple[int, int, int], native_ok: bool) -> Tensor:
    """Write relu(x) into y, which has x's shape and strides (y may be x); return the zero counts.

    x is dense, with ``memory_split(x, axis) == split``. Runs the native kernel when ``native_ok`` and the
    backend selection picks it, plain torch otherwise.
    """
    device = x.device
    backend = select("relu_count", device, _SUPPORTED) if native_ok else "torch"
    if backend == "torch" or x.numel() == 0:
        torch.clamp_min(x, 0, out=y)  # what torch.relu computes, bit for bit
        return count_zeros_reference(y, axis)
    if backend == "triton":
        from pozfast.triton_kernels.relu_count import relu_count as triton_relu_count

        zeros = torch.zeros(split[1], dtype=torch.int64, device=device)
        triton_relu_count(x, y, zeros, *split, clear=x.is_cuda and cuda_relu_clears(device, x.dtype))
        return zeros
    zeros = torch.empty(split[1], dtype=torch.int64, device=device)
    args = (x.data_ptr(), y.data_ptr(), zeros.data_ptr(), *split, _DTYPE_CODES[x.dtype])
    if backend == "cuda-native":
        with torch.cuda.device(device):
            native().relu_count_cuda(*args, cuda_relu_clears(device, x.dtype),
                                     torch.cuda.current_stream(device).cuda_stream)
    else:
        # The thread count follows torch.set_num_threads (DataLoader workers and CPU DDP ranks lower it).
        native().relu_count_cpu(*args, torch.get_num_threads())
    return zeros


def _dense_copy(x: Tensor, axis: int) -> tuple[Tensor, tuple[int, int, int]]:
    """A dense copy of x, with the layout torch.empty_like(x) gives, and its split."""
    work = torch.empty_like(x).copy_(x)
    return work, memory_split(work, axis)


# The helpers below take a validated axis (channel_axis).

def _functional(x: Tensor, axis: int, native_ok: bool) -> tuple[Tensor, Tensor]:
    split = memory_split(x, axis)
    if split is None:
        x, split = _dense_copy(x, axis)
    y = torch.empty_like(x)
    return y, _into(x, y, axis, split, native_ok)


def _inplace(x: Tensor, axis: int, native_ok: bool) -> Tensor:
    split = memory_split(x, axis)
    if split is not None:
        return _into(x, x, axis, split, native_ok)
    work, split = _dense_copy(x, axis)
    zeros = _into(work, work, axis, split, native_ok)
    x.copy_(work)
    return zeros


def _out(x: Tensor, axis: int, out: Tensor, native_ok: bool) -> Tensor:
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must match x in shape, dtype and device: x is {tuple(x.shape)} {x.dtype} on "
                         f"{x.device}, out is {tuple(out.shape)} {out.dtype} on {out.device}")
    same_view = out.data_ptr() == x.data_ptr() and out.stride() == x.stride()
    if x.numel() and not same_view:
        (x_lo, x_hi), (o_lo, o_hi) = _byte_span(x), _byte_span(out)
        if x_lo < o_hi and o_lo < x_hi:  # a kernel would read elements of x it has already overwritten
            raise RuntimeError("relu_count: out overlaps x in memory (two different views of one storage); "
                               "pass a separate out tensor, or inplace=True to overwrite x")
    split = memory_split(x, axis) if out.stride() == x.stride() else None
    if split is not None:
        return _into(x, out, axis, split, native_ok)
    y, zeros = _functional(x, axis, native_ok)
    out.copy_(y)
    return zeros


# --- torch.library registration: default = plain torch, CPU/CUDA = native when selected -------------

@torch.library.custom_op("pozfast::relu_count", mutates_args=())
def _relu_count_op(x: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
    return _functional(x, channel_axis(x, channel_dim), native_ok=False)


@torch.library.custom_op("pozfast::relu_count_", mutates_args=("x",))
def _relu_count_inplace_op(x: Tensor, channel_dim: int) -> Tensor:
    return _inplace(x, channel_axis(x, channel_dim), native_ok=False)


@torch.library.custom_op("pozfast::relu_count_out", mutates_args=("out",))
def _relu_count_out_op(x: Tensor, channel_dim: int, out: Tensor) -> Tensor:
    return _out(x, channel_axis(x, channel_dim), out, native_ok=False)


_relu_count_op.register_kernel(_NATIVE_DEVICES)(
    lambda x, channel_dim: _functional(x, channel_axis(x, channel_dim), True))
_relu_count_inplace_op.register_kernel(_NATIVE_DEVICES)(
    lambda x, channel_dim: _inplace(x, channel_axis(x, channel_dim), True))
_relu_count_out_op.register_kernel(_NATIVE_DEVICES)(
    lambda x, channel_dim, out: _out(x, channel_axis(x, channel_dim), out, True))


def _counts_like(x: Tensor, channel_dim: int) -> Tensor:
    return x.new_empty((x.shape[channel_axis(x, channel_dim)],), dtype=torch.int64)


@_relu_count_op.register_fake
def _(x: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), _counts_like(x, channel_dim)


@_relu_count_inplace_op.register_fake
def _(x: Tensor, channel_dim: int) -> Tensor:
    return _counts_like(x, channel_dim)


@_relu_count_out_op.register_fake
def _(x: Tensor, channel_dim: int, out: Tensor) -> Tensor:
    return _counts_like(x, channel_dim)


def _relu_grad(y: Tensor, grad_y: Tensor) -> Tensor:
    # torch.relu's own backward (threshold_backward): grad where y > 0, else 0 (NaN y gives 0).
    return torch.where(y > 0, grad_y, torch.zeros((), dtype=grad_y.dtype, device=grad_y.device))


def _relu_backward(ctx, grad_y: Tensor, grad_zeros: Tensor | None):
    (y,) = ctx.saved_tensors
    return _relu_grad(y, grad_y), None


def _save_output(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[0])


_relu_count_op.register_autograd(_relu_backward, setup_context=_save_output)


class _InplaceWithGrad(torch.autograd.Function):
    """In-place relu_count under autograd: torch.library takes no autograd formula for mutating ops."""

    @staticmethod
    def forward(ctx, x: Tensor, channel_dim: int):
        zeros = torch.ops.pozfast.relu_count_(x, channel_dim)
        ctx.mark_dirty(x)
        ctx.mark_non_differentiable(zeros)
        ctx.save_for_backward(x)
        return x, zeros

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_zeros: Tensor | None):
        (y,) = ctx.saved_tensors
        return _relu_grad(y, grad_y), None


def eager_plain(*tensors: Tensor | None) -> bool:
    """True when a call on these tensors needs nothing from the dispatcher: eager, no autograd, no modes, no
    subclasses."""
    return (all(t is None or type(t) is Tensor for t in tensors)
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
            and not torch.compiler.is_compiling()
            and not torch._C._is_torch_function_mode_enabled()
            and _get_current_dispatch_mode() is None)


# --- public API -------------------------------------------------------------------------------------

def relu_count(x: Tensor, channel_dim: int = 1, inplace: bool = False, *,
               out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``torch.relu(x)`` and, per channel, how many of its elements are zero.

    Args:
        x: float32, float64, float16 or bfloat16 tensor with at least 2 dims, e.g. (N, C), (N, C, L),
            (N, C, H, W), (N, C, D, H, W) or channel-last (N, L, C). Contiguous and channels_last inputs
            run natively without a copy; other strided inputs are copied once.
        channel_dim: the channel axis (negative counts from the end; -1 for (N, L, C)).
        inplace: overwrite x, like ``torch.relu_``; no extra allocation.
        out: write y into this tensor (same shape, dtype and device as x) instead of a new one. It may be x
            itself (same as ``inplace=True``) but not another view that overlaps x in memory, and, with
            autograd enabled, neither x nor out may require grad (as for torch's ``out=`` functions).

    Returns:
        ``(y, zeros)``: y equals ``torch.relu(x)`` on x's device bit for bit (NaN passes through with its
        payload, which torch's own 16-bit paths may rewrite depending on layout; -0.0 passes through on CPU,
        and on CUDA keeps or loses its sign as the installed torch's CUDA relu does, which some versions
        compute as a float max: see :func:`cuda_relu_clears`); zeros is an int64 tensor
        ``[x.shape[channel_dim]]`` on x's device counting the elements of y equal to zero (-0.0 counts, NaN
        does not). Gradients flow through y as through ``torch.relu``; zeros has none.
    """
    channel_dim = channel_axis(x, channel_dim)  # clear errors before any dispatch; a plain int for the op schema
    if inplace and out is not None:
        raise ValueError("relu_count: pass either inplace=True or out=, not both")
    if out is not None:
        if not isinstance(out, Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
            # Like torch's out= functions: no autograd through out=, and no writing into a leaf that needs grad.
            who = "x requires grad" if x.requires_grad else \
                f"out is a {'leaf Variable' if out.is_leaf else 'tensor'} that requires grad"
            raise RuntimeError(f"relu_count(out=...) does not support autograd ({who}); call it without out= "
                               f"or under torch.no_grad()")
    if eager_plain(x, out):
        # The registered op costs tens of microseconds of dispatch per call, as much as the kernel on
        # small activations; plain tensors outside tracing and autograd need none of what it adds.
        if inplace:
            zeros = _inplace(x, channel_dim, native_ok=True)
            torch.autograd.graph.increment_version(x)
            return x, zeros
        if out is not None:
            zeros = _out(x, channel_dim, out, native_ok=True)
            torch.autograd.graph.increment_version(out)
            return out, zeros
        return _functional(x, channel_dim, native_ok=True)
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if inplace:
        if needs_grad:
            return _InplaceWithGrad.apply(x, channel_dim)
        return x, torch.ops.pozfast.relu_count_(x, channel_dim)
    if out is not None:
        return out, torch.ops.pozfast.relu_count_out(x, channel_dim, out)
    return torch.ops.pozfast.relu_count(x, channel_dim)
