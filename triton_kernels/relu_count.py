"""Triton relu_count: torch.relu fused with per-channel zero counts, for dense [outer, C, inner] buffers.

Two kernels, as in the CPU and CUDA sources: long rows (inner >= 64; one channel per program, one atomic
per program) and short rows (channel-last and the like: a tile of rows x positions, summed over rows,
one atomic per position per program, i.e. per channel when inner == 1). float16/bfloat16 are compared
in float32 (exact for every non-NaN value); float32/float64 natively.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROW_MODE_MIN_INNER = 64


@triton.jit
def _relu(x, UPCAST: tl.constexpr):
    if UPCAST:
        xf = x.to(tl.float32)
        yf = tl.where(xf < 0, 0.0, xf)
        return yf.to(x.dtype), yf == 0
    y = tl.where(x < 0, tl.zeros_like(x), x)
    return y, y == 0


@triton.jit
def _rows_kernel(x_ptr, y_ptr, counts_ptr, inner, channels, BLOCK: tl.constexpr, UPCAST: tl.constexpr):
    row = tl.program_id(0)  # up to 2^31 - 1 rows; chunks of a row on the second grid axis
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    ptr = row.to(tl.int64) * inner + offs
    x = tl.load(x_ptr + ptr, mask=mask, other=1.0)
    y, zero = _relu(x, UPCAST)
    tl.store(y_ptr + ptr, y, mask=mask)
    tl.atomic_add(counts_ptr + row % channels, tl.sum((zero & mask).to(tl.int64), axis=0))


@triton.jit
def _positions_kernel(x_ptr, y_ptr, counts_ptr, outer, positions, inner,
                      BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, UPCAST: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    col_ok = cols < positions
    mask = (rows < outer)[:, None] & col_ok[None, :]
    ptr = rows.to(tl.int64)[:, None] * positions + cols[None, :]
    x = tl.load(x_ptr + ptr, mask=mask, other=1.0)
    y, zero = _relu(x, UPCAST)
    tl.store(y_ptr + ptr, y, mask=mask)
    tl.atomic_add(counts_ptr + cols // inner, tl.sum((zero & mask).to(tl.int64), axis=0), mask=col_ok)


# Hopper-class choices: wide blocks and 4-8 warps keep enough bytes in flight for HBM bandwidth.
_ROWS_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b in (1024, 2048, 4096) for w in (4, 8)]
_POSITIONS_CONFIGS = [triton.Config({"BLOCK_R": r, "BLOCK_P": p}, num_warps=w)
                      for r, p in ((32, 128), (64, 128), (16, 256), (128, 64)) for w in (4, 8)]
# Under the interpreter a fixed heuristic replaces tuning, which would only cost time.
_INTERPRET_META = {"rows": {"BLOCK": 256}, "positions": {"BLOCK_R": 16, "BLOCK_P": 64}}

if INTERPRET:
    _rows, _positions = _rows_kernel, _positions_kernel
else:  # counts accumulate with atomics, so every tuning run starts from zero
    _rows = triton.autotune(_ROWS_CONFIGS, key=["inner", "channels"], reset_to_zero=["counts_ptr"])(_rows_kernel)
    _positions = triton.autotune(_POSITIONS_CONFIGS, key=["positions", "inner"],
                                 reset_to_zero=["counts_ptr"])(_positions_kernel)


def relu_count(x: torch.Tensor, y: torch.Tensor, zeros: torch.Tensor, outer: int, channels: int, inner: int) -> None:
    """relu(x) into y (same dense layout; may be x), zero counts added into ``zeros`` (int64 [channels],
    zero-initialised by the caller). Runs on torch's current stream."""
    upcast = x.dtype in (torch.float16, torch.bfloat16)
    if inner >= ROW_MODE_MIN_INNER:
        meta = _INTERPRET_META["rows"] if INTERPRET else {}
        grid = lambda m: (outer * channels, triton.cdiv(inner, m["BLOCK"]))  # noqa: E731
        _rows[grid](x, y, zeros, inner, channels, UPCAST=upcast, **meta)
    else:
        positions = channels * inner
        meta = _INTERPRET_META["positions"] if INTERPRET else {}
        grid = lambda m: (triton.cdiv(outer, m["BLOCK_R"]), triton.cdiv(positions, m["BLOCK_P"]))  # noqa: E731
        _positions[grid](x, y, zeros, outer, positions, inner, UPCAST=upcast, **meta)
