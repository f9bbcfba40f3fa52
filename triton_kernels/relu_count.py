"""Triton relu_count: torch.relu fused with per-channel zero counts, for dense [outer, C, inner] buffers.

Two kernels, as in the CPU and CUDA sources: long rows (inner >= 64; one channel per program, one atomic
per program) and short rows (channel-last and the like: a block of positions walking the rows, counting in
registers, one atomic per position per program, i.e. per channel when inner == 1). float16/bfloat16 are compared
in float32 (exact for every non-NaN value); float32/float64 natively. y is torch.relu of the tensor's device bit
for bit, the sign of a zero included (see torch_relu).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROW_MODE_MIN_INNER = 64


@triton.jit
def torch_relu(x, UPCAST: tl.constexpr, CLEAR: tl.constexpr):
    """torch.relu bit for bit, and where its result is zero: NaN as it is, negatives to +0.0, -0.0 kept, or
    made +0.0 with CLEAR (torch's CUDA relu in some versions; pozfast.ops.relu_count.cuda_relu_clears).
    Compared in float32 for 16-bit types (exact for every non-NaN value); y is x or +0.0, bits included."""
    xf = x.to(tl.float32) if UPCAST else x
    if CLEAR:
        to_zero = xf <= 0
    else:
        to_zero = xf < 0
    return tl.where(to_zero, tl.zeros_like(x), x), to_zero | (xf == 0)


@triton.jit
def _rows_kernel(x_ptr, y_ptr, counts_ptr, inner, channels, size_key, BLOCK: tl.constexpr, UPCAST: tl.constexpr,
                 CLEAR: tl.constexpr):
    """One row (one channel) per program on axis 0; its chunks split over axis 1, each program looping
    over every num_programs(1)-th chunk, so the grid stays within the hardware limit for any row length."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * inner
    zeros = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(tl.program_id(1) * BLOCK, inner, tl.num_programs(1) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < inner
        x = tl.load(x_ptr + base + offs, mask=mask, other=1.0)
        y, zero = torch_relu(x, UPCAST, CLEAR)
        tl.store(y_ptr + base + offs, y, mask=mask)
        zeros += (zero & mask).to(tl.int32)
    tl.atomic_add(counts_ptr + row % channels, tl.sum(zeros.to(tl.int64), axis=0))


@triton.jit
def _positions_kernel(x_ptr, y_ptr, counts_ptr, outer, positions, inner, size_key,
                      BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, UPCAST: tl.constexpr,
                      CLEAR: tl.constexpr):
    """A block of positions per program on axis 0 (position p is channel p // inner), walking the rows
    over axis 1 and counting in registers: one atomic per position per program."""
    cols = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    col_ok = cols < positions
    zeros = tl.zeros((BLOCK_P,), dtype=tl.int32)
    for r0 in range(tl.program_id(1) * BLOCK_R, outer, tl.num_programs(1) * BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < outer)[:, None] & col_ok[None, :]
        ptr = rows.to(tl.int64)[:, None] * positions + cols[None, :]
        x = tl.load(x_ptr + ptr, mask=mask, other=1.0)
        y, zero = torch_relu(x, UPCAST, CLEAR)
        tl.store(y_ptr + ptr, y, mask=mask)
        zeros += tl.sum((zero & mask).to(tl.int32), axis=0)
    tl.atomic_add(counts_ptr + cols // inner, zeros.to(tl.int64), mask=col_ok & (zeros > 0))


# Hopper-class choices: wide blocks and 4-8 warps keep enough bytes in flight for HBM bandwidth.
_ROWS_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b in (1024, 2048, 4096) for w in (4, 8)]
_POSITIONS_CONFIGS = [triton.Config({"BLOCK_R": r, "BLOCK_P": p}, num_warps=w)
                      for r, p in ((32, 128), (64, 128), (16, 256), (128, 64)) for w in (4, 8)]
# Under the interpreter a fixed heuristic replaces tuning, which would only cost time.
_INTERPRET_META = {"rows": {"BLOCK": 256}, "positions": {"BLOCK_R": 16, "BLOCK_P": 64}}

if INTERPRET:
    _rows, _positions = _rows_kernel, _positions_kernel
else:  # counts accumulate with atomics, so every tuning run starts from zero
    # Tuned once per size bucket (size_key), not for every new image resolution or sequence length.
    _rows = triton.autotune(_ROWS_CONFIGS, key=["size_key"], reset_to_zero=["counts_ptr"])(_rows_kernel)
    _positions = triton.autotune(_POSITIONS_CONFIGS, key=["size_key"], reset_to_zero=["counts_ptr"])(_positions_kernel)

MAX_GRID_AXIS = 65535  # the hardware limit of grid axes 1 and 2


def size_bucket(*sizes: int) -> int:
    """One autotuning key per power-of-two bucket of each size (a few bits each, packed)."""
    key = 0
    for size in sizes:
        key = key * 64 + max(size - 1, 0).bit_length()
    return key


def relu_count(x: torch.Tensor, y: torch.Tensor, zeros: torch.Tensor, outer: int, channels: int, inner: int,
               clear: bool) -> None:
    """relu(x) into y (same dense layout; may be x), zero counts added into ``zeros`` (int64 [channels],
    zero-initialised by the caller); ``clear``: relu(-0.0) is +0.0 (see torch_relu). Runs on x's device and
    torch's current stream there."""
    upcast = x.dtype in (torch.float16, torch.bfloat16)
    if inner >= ROW_MODE_MIN_INNER:
        meta = _INTERPRET_META["rows"] if INTERPRET else {}
        grid = lambda m: (outer * channels, min(triton.cdiv(inner, m["BLOCK"]), MAX_GRID_AXIS))  # noqa: E731
        launch, args = _rows, (x, y, zeros, inner, channels, size_bucket(inner, outer * channels))
    else:
        positions = channels * inner
        meta = _INTERPRET_META["positions"] if INTERPRET else {}
        # About 4 programs per position block along the rows: enough to fill the GPU, few atomics.
        grid = lambda m: (triton.cdiv(positions, m["BLOCK_P"]),  # noqa: E731
                          min(triton.cdiv(outer, m["BLOCK_R"]), max(1, 4096 // triton.cdiv(positions, m["BLOCK_P"])),
                              MAX_GRID_AXIS))
        launch, args = _positions, (x, y, zeros, outer, positions, inner, size_bucket(positions, outer))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        launch[grid](*args, UPCAST=upcast, CLEAR=clear, **meta)
