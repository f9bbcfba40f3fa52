"""Triton near-zero counts: per channel and threshold, the elements with |a| <= tau, read-only or fused with
ReLU, for dense [outer, C, inner] buffers, with an optional mask over outer rows.

The rule of csrc/near_zero_elem.h: an element counts when its bit pattern with the sign cleared is at most
the threshold's key (tau rounded to the dtype, as bits), so NaN never counts and every dtype is exact.
Two kernels, as in the CPU and CUDA sources: long rows (inner >= 64; one row chunk per step, one atomic per
threshold per chunk) and short rows (channel-last and the like: a program owns BLOCK_P positions and walks
its share of the rows, counting [T, BLOCK_P] in registers, then one atomic per threshold and position).
Grids stay within the hardware's limits for any size: programs loop over the rest. Tuning keys are sizes
rounded up to powers of two; tuning restores the counts, which are added to, never overwritten.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from pozfast.triton_kernels.relu_count import torch_relu

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROW_MODE_MIN_INNER = 64
# Programs of the row kernel (each loops over further chunks) and row steps of the short-row kernel: small
# under the interpreter, so that the tests walk those loops.
MAX_GRID_X = 8 if INTERPRET else 1 << 20
MAX_ROWS_PER_STEP = 8 if INTERPRET else 32
MAX_GRID_Y = 65535
# Elements of the [T_PAD, BLOCK_R, BLOCK_P] compare tile of the short-row kernel: a GPU's register budget;
# the interpreter runs each tile as one numpy operation, so larger tiles cost it fewer steps.
SHORT_TILE = 1 << 16 if INTERPRET else 8192


@triton.jit
def _magnitude_key(v, KEY_BITS: tl.constexpr):
    """|v| as its bit pattern (sign cleared), widened to at least 32 bits."""
    if KEY_BITS == 16:
        return v.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    elif KEY_BITS == 32:
        return v.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    else:
        return v.to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF


@triton.jit(do_not_specialize=["rows"])
def _rows_kernel(x_ptr, y_ptr, counts_ptr, keys_ptr, mask_ptr, rows, inner, channels, repeat,
                 size_bucket, T: tl.constexpr, T_PAD: tl.constexpr, KEY_BITS: tl.constexpr,
                 HAS_MASK: tl.constexpr, RELU: tl.constexpr, UPCAST: tl.constexpr, CLEAR: tl.constexpr,
                 BLOCK: tl.constexpr):
    t_idx = tl.arange(0, T_PAD)
    t_ok = t_idx < T
    taus = tl.load(keys_ptr + t_idx, mask=t_ok, other=-1)  # -1: padding that nothing reaches
    chunks = tl.cdiv(inner, BLOCK)
    items = rows.to(tl.int64) * chunks
    for item in range(tl.program_id(0).to(tl.int64), items, tl.num_programs(0)):
        row = item // chunks
        offs = (item % chunks) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < inner
        ptr = row.to(tl.int64) * inner + offs
        keep = valid
        if HAS_MASK:
            keep = keep & (tl.load(mask_ptr + (row // channels // repeat + tl.zeros_like(offs))) != 0)
        if RELU:
            y, _ = torch_relu(tl.load(x_ptr + ptr, mask=valid, other=0.0), UPCAST, CLEAR)
            tl.store(y_ptr + ptr, y, mask=valid)
        else:
            y = tl.load(x_ptr + ptr, mask=keep, other=0.0)  # dropped rows are not read
        hit = (_magnitude_key(y, KEY_BITS)[None, :] <= taus[:, None]) & keep[None, :]
        tl.atomic_add(counts_ptr + t_idx * channels + row % channels, tl.sum(hit.to(tl.int64), axis=1), mask=t_ok)


@triton.jit
def _positions_kernel(x_ptr, y_ptr, counts_ptr, keys_ptr, mask_ptr, outer, positions, inner, channels, repeat,
                      size_bucket, T: tl.constexpr, T_PAD: tl.constexpr, KEY_BITS: tl.constexpr,
                      HAS_MASK: tl.constexpr, RELU: tl.constexpr, UPCAST: tl.constexpr, CLEAR: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    t_idx = tl.arange(0, T_PAD)
    t_ok = t_idx < T
    taus = tl.load(keys_ptr + t_idx, mask=t_ok, other=-1)
    cols = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    col_ok = cols < positions
    share = tl.cdiv(outer, tl.num_programs(1))
    row_start = tl.program_id(1) * share
    row_stop = tl.minimum(row_start + share, outer)
    acc = tl.zeros((T_PAD, BLOCK_P), dtype=tl.int32)
    for r0 in range(row_start, row_stop, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < row_stop
        keep = row_ok
        if HAS_MASK:
            keep = keep & (tl.load(mask_ptr + rows // repeat, mask=row_ok, other=0) != 0)
        ptr = rows.to(tl.int64)[:, None] * positions + cols[None, :]
        if RELU:
            io = row_ok[:, None] & col_ok[None, :]
            y, _ = torch_relu(tl.load(x_ptr + ptr, mask=io, other=0.0), UPCAST, CLEAR)
            tl.store(y_ptr + ptr, y, mask=io)
        else:
            y = tl.load(x_ptr + ptr, mask=keep[:, None] & col_ok[None, :], other=0.0)
        hit = (_magnitude_key(y, KEY_BITS)[None, :, :] <= taus[:, None, None]) & keep[None, :, None]
        acc += tl.sum(hit.to(tl.int32), axis=1)
    tl.atomic_add(counts_ptr + t_idx[:, None] * channels + (cols // inner)[None, :], acc.to(tl.int64),
                  mask=t_ok[:, None] & col_ok[None, :])


def _rows_per_step(args) -> int:
    return max(2, min(MAX_ROWS_PER_STEP, SHORT_TILE // (args["T_PAD"] * args["BLOCK_P"])))


# Hopper-class choices: wide blocks and 4-8 warps keep enough bytes in flight for HBM bandwidth.
_ROWS_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b in (1024, 2048, 4096) for w in (4, 8)]
_POSITIONS_CONFIGS = [triton.Config({"BLOCK_P": p}, num_warps=w) for p in (64, 128, 256) for w in (4, 8)]
# Under the interpreter a fixed choice replaces tuning, which would only cost time.
_INTERPRET_ROWS_BLOCK = 1024
_INTERPRET_MAX_BLOCK_P = 2048

_positions_with_rows = triton.heuristics({"BLOCK_R": _rows_per_step})(_positions_kernel)
if INTERPRET:
    _rows, _positions = _rows_kernel, _positions_with_rows
else:
    _KEY = ["size_bucket", "T_PAD", "KEY_BITS", "HAS_MASK", "RELU"]
    _rows = triton.autotune(_ROWS_CONFIGS, key=_KEY, restore_value=["counts_ptr"])(_rows_kernel)
    _positions = triton.autotune(_POSITIONS_CONFIGS, key=_KEY, restore_value=["counts_ptr"])(_positions_with_rows)


@functools.lru_cache(maxsize=256)
def _keys_tensor(keys: tuple[int, ...], key_bits: int, device: torch.device) -> torch.Tensor:
    # Cached per device: a CUDA graph captured after a first call finds it ready (no copy while capturing).
    return torch.tensor(keys, dtype=torch.int64 if key_bits == 64 else torch.int32, device=device)


def _programs(device: torch.device) -> int:
    """Programs that fill the device about twice (a few under the interpreter)."""
    if device.type != "cuda":
        return 4
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count * 8


def near_zero_count(x: torch.Tensor, y: torch.Tensor | None, counts: torch.Tensor, keys: Sequence[int], outer: int,
                    channels: int, inner: int, mask: torch.Tensor | None, repeat: int, clear: bool = False) -> None:
    """Add to ``counts`` (int64 [len(keys), channels], contiguous) the counts of x, or with y, write relu(x)
    into y (x's layout; may be x) and add y's counts. ``keys``: thresholds as bit patterns; ``mask``: one
    byte per ``repeat`` outer rows, or None; ``clear``: the ReLU makes -0.0 +0.0 (see torch_relu). Runs on torch's
    current stream of x's device."""
    key_bits = 8 * x.element_size()
    meta = dict(T=len(keys), T_PAD=triton.next_power_of_2(len(keys)), KEY_BITS=key_bits,
                HAS_MASK=mask is not None, RELU=y is not None, UPCAST=x.dtype in (torch.float16, torch.bfloat16),
                CLEAR=clear)
    key_tensor = _keys_tensor(tuple(keys), max(32, key_bits), x.device)
    mask_arg = mask if mask is not None else key_tensor  # never read without HAS_MASK
    y_arg = y if y is not None else x  # never written without RELU
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if inner >= ROW_MODE_MIN_INNER:
            meta.update({"BLOCK": _INTERPRET_ROWS_BLOCK} if INTERPRET else {})
            rows = outer * channels
            grid = lambda m: (min(rows * triton.cdiv(inner, m["BLOCK"]), MAX_GRID_X),)  # noqa: E731
            _rows[grid](x, y_arg, counts, key_tensor, mask_arg, rows, inner, channels, repeat,
                        triton.next_power_of_2(inner), **meta)
        else:
            positions = channels * inner
            if INTERPRET:
                meta["BLOCK_P"] = max(16, min(_INTERPRET_MAX_BLOCK_P, triton.next_power_of_2(positions)))
            programs = _programs(x.device)

            def grid(m):
                cols = triton.cdiv(positions, m["BLOCK_P"])
                return (cols, max(1, min(MAX_GRID_Y, outer, programs // cols)))

            _positions[grid](x, y_arg, counts, key_tensor, mask_arg, outer, positions, inner, channels, repeat,
                             triton.next_power_of_2(positions), **meta)
