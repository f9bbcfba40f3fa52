"""Triton RDM tiles: for a tile pair (i, j) of rows, the Gram block of the centred, unit-norm rows
(normalisation fused into the loads, so no normalised copy of X exists), with the epilogue fused:
write the condensed dissimilarities 1 - r directly, or reduce the tile to the six float64 pair sums
of a Pearson comparison without writing it at all.

Tiles are listed on the host (upper triangle only, j-block >= i-block), one program per tile.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _add_shifted_gram(acc, x_ptr, stride, mi, mj, rows_i, rows_j, ok_i, ok_j, k_lo, k_hi,
                      BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """acc + (X_i - m_i)[:, k_lo:k_hi] @ (X_j - m_j)[:, k_lo:k_hi]^T, the shift applied as the rows load."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok_k = ks < k_hi
        ma = ok_i[:, None] & ok_k[None, :]
        mb = ok_j[:, None] & ok_k[None, :]
        a = tl.load(x_ptr + rows_i.to(tl.int64)[:, None] * stride + ks[None, :], mask=ma, other=0.0).to(ACC)
        b = tl.load(x_ptr + rows_j.to(tl.int64)[:, None] * stride + ks[None, :], mask=mb, other=0.0).to(ACC)
        a = tl.where(ma, a - mi[:, None], 0.0)
        b = tl.where(mb, b - mj[:, None], 0.0)
        acc += tl.dot(a, tl.trans(b), input_precision="ieee")
    return acc


@triton.jit
def _normalised_gram(x_ptr, stride, mean_ptr, inv_ptr, rows_i, rows_j, n, d,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    ok_i, ok_j = rows_i < n, rows_j < n
    mi = tl.load(mean_ptr + rows_i, mask=ok_i, other=0.0).to(ACC)
    mj = tl.load(mean_ptr + rows_j, mask=ok_j, other=0.0).to(ACC)
    acc = _add_shifted_gram(tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC), x_ptr, stride, mi, mj, rows_i, rows_j,
                            ok_i, ok_j, 0, d, BLOCK_K, ACC)
    inv_i = tl.load(inv_ptr + rows_i, mask=ok_i, other=0.0).to(ACC)
    inv_j = tl.load(inv_ptr + rows_j, mask=ok_j, other=0.0).to(ACC)
    return acc * inv_i[:, None] * inv_j[None, :]


@triton.jit
def _tile_rows(tiles_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0)
    bm = tl.load(tiles_ptr + 2 * t)
    bn = tl.load(tiles_ptr + 2 * t + 1)
    return bm * BLOCK_M + tl.arange(0, BLOCK_M), bn * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _condensed_index(i, j, n):
    i64 = i.to(tl.int64)[:, None]
    return i64 * n - i64 * (i64 + 1) // 2 + (j.to(tl.int64)[None, :] - i64 - 1)


@triton.jit
def _add_moments(out_ptr, ok, x, y):
    """Add n, sum x, sum y, sum x^2, sum y^2, sum xy over the tile's valid pairs to out[0:6] (float64)."""
    x = tl.where(ok, x, 0.0).to(tl.float64)
    y = tl.where(ok, y, 0.0).to(tl.float64)
    tl.atomic_add(out_ptr + 0, tl.sum(tl.sum(ok.to(tl.float64), axis=1), axis=0))
    tl.atomic_add(out_ptr + 1, tl.sum(tl.sum(x, axis=1), axis=0))
    tl.atomic_add(out_ptr + 2, tl.sum(tl.sum(y, axis=1), axis=0))
    tl.atomic_add(out_ptr + 3, tl.sum(tl.sum(x * x, axis=1), axis=0))
    tl.atomic_add(out_ptr + 4, tl.sum(tl.sum(y * y, axis=1), axis=0))
    tl.atomic_add(out_ptr + 5, tl.sum(tl.sum(x * y, axis=1), axis=0))


@triton.jit(do_not_specialize=["row_lo", "row_hi", "base"])  # one build for every block row
def _condensed_kernel(x_ptr, stride, mean_ptr, inv_ptr, bad_ptr, out_ptr, tiles_ptr, n, d, row_lo, row_hi, base,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """The tile's pairs (i, j), j > i, of rows row_lo <= i < row_hi, stored at their condensed index - base."""
    rows_i, rows_j = _tile_rows(tiles_ptr, BLOCK_M, BLOCK_N)
    r = _normalised_gram(x_ptr, stride, mean_ptr, inv_ptr, rows_i, rows_j, n, d, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    mine = (rows_i >= row_lo) & (rows_i < row_hi)
    upper = (rows_j[None, :] > rows_i[:, None]) & (rows_j < n)[None, :] & mine[:, None]
    bad = (tl.load(bad_ptr + rows_i, mask=rows_i < n, other=0) != 0)[:, None] | \
          (tl.load(bad_ptr + rows_j, mask=rows_j < n, other=0) != 0)[None, :]
    value = tl.where(bad, float("nan"), 1.0 - r)
    tl.store(out_ptr + (_condensed_index(rows_i, rows_j, n) - base), value.to(out_ptr.dtype.element_ty),
             mask=upper)


@triton.jit
def _moments_kernel(x_ptr, x_stride, x_mean, x_inv, y_ptr, y_stride, y_mean, y_inv, ref_ptr, bad_ptr, out_ptr,
                    tiles_ptr, n, dx, dy, REF_IS_FEATURES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    rows_i, rows_j = _tile_rows(tiles_ptr, BLOCK_M, BLOCK_N)
    x = 1.0 - _normalised_gram(x_ptr, x_stride, x_mean, x_inv, rows_i, rows_j, n, dx, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    upper = (rows_j[None, :] > rows_i[:, None]) & (rows_j < n)[None, :]
    if REF_IS_FEATURES:
        y = 1.0 - _normalised_gram(y_ptr, y_stride, y_mean, y_inv, rows_i, rows_j, n, dy,
                                   BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    else:
        y = tl.load(ref_ptr + _condensed_index(rows_i, rows_j, n), mask=upper, other=0.0).to(ACC)
    bad = (tl.load(bad_ptr + rows_i, mask=rows_i < n, other=1) != 0)[:, None] | \
          (tl.load(bad_ptr + rows_j, mask=rows_j < n, other=1) != 0)[None, :]
    ok = upper & ~bad & (y == y)  # y == y: not NaN
    _add_moments(out_ptr, ok, x, y)


# Tile sizes on a GPU, per kernel and dtype: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). The GEMM of the
# condensed RDM takes Hopper-sized 128 x 128 tiles; the kernels with a float64 epilogue (pair sums, curve steps)
# take smaller ones, where it stays in registers (benchmarks/triton_compile.py reports registers and spills).
_TILES = {("condensed", torch.float32): (128, 128, 32, 8, 3), ("condensed", torch.float64): (64, 64, 16, 4, 2),
          ("moments", torch.float32): (64, 64, 32, 8, 3), ("moments", torch.float64): (64, 64, 16, 8, 2),
          ("curve", torch.float32): (64, 64, 32, 8, 3), ("curve", torch.float64): (32, 32, 16, 4, 2)}


def production_meta(dtype: torch.dtype, kernel: str) -> dict:
    """Launch parameters on a GPU for ``kernel`` ("condensed", "moments" or "curve") on rows of ``dtype``."""
    bm, bn, bk, warps, stages = _TILES[kernel, torch.float64 if dtype == torch.float64 else torch.float32]
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "ACC": acc, "num_warps": warps, "num_stages": stages}


def _meta(x: torch.Tensor, kernel: str) -> dict:
    """The production launch parameters; small tiles when interpreted."""
    if INTERPRET:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "ACC": tl.float64 if x.dtype == torch.float64 else tl.float32}
    return production_meta(x.dtype, kernel)


def upper_tiles(n: int, block_m: int, block_n: int, device, rank: int = 0, world: int = 1,
                rows: tuple[int, int] | None = None) -> torch.Tensor:
    """int32 (T, 2) block coordinates (bm, bn) of the tiles that hold pairs j > i (of rows lo <= i < hi with
    ``rows=(lo, hi)``); every world-th from rank."""
    bm = torch.arange(triton.cdiv(n, block_m)).repeat_interleave(triton.cdiv(n, block_n))
    bn = torch.arange(triton.cdiv(n, block_n)).repeat(triton.cdiv(n, block_m))
    keep = (bn + 1) * block_n - 1 > bm * block_m
    if rows is not None:
        keep &= ((bm + 1) * block_m > rows[0]) & (bm * block_m < rows[1])
    return torch.stack([bm[keep], bn[keep]], 1)[rank::world].to(device=device, dtype=torch.int32)


def _on(x: torch.Tensor):
    """Launches on x's device (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def condensed_rows_multiple(x: torch.Tensor) -> int:
    """The rows of one program of the condensed RDM kernel: block rows of this many rows compute no tile twice."""
    return _meta(x, "condensed")["BLOCK_M"]


def condensed_rdm(x: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor, bad: torch.Tensor, out: torch.Tensor,
                  rows: tuple[int, int] | None = None) -> None:
    """The condensed RDM of the rows of x (row-major, unit column stride) into ``out``; with ``rows=(lo, hi)``,
    its pairs (i, j) of rows lo <= i < hi, which are one span of it, into ``out`` of that span's length."""
    n, d = x.shape
    lo, hi = rows if rows is not None else (0, n)
    meta = _meta(x, "condensed")
    tiles = upper_tiles(n, meta["BLOCK_M"], meta["BLOCK_N"], x.device, rows=rows)
    if len(tiles):
        with _on(x):
            _condensed_kernel[(len(tiles),)](x, x.stride(0), mean, inv, bad, out, tiles, n, d, lo, hi,
                                             lo * n - lo * (lo + 1) // 2, **meta)


def pair_moments(x: torch.Tensor, x_mean, x_inv, bad: torch.Tensor, *, y: torch.Tensor | None = None, y_mean=None,
                 y_inv=None, ref: torch.Tensor | None = None, rank: int = 0, world: int = 1) -> torch.Tensor:
    """float64 [6] pair sums (n, sum x, sum y, sum x^2, sum y^2, sum xy) of x = 1 - r^X against y = 1 - r^Y
    (features ``y``) or a condensed RDM ``ref``, over this rank's share of the tiles."""
    n, dx = x.shape
    meta = _meta(x, "moments")
    out = torch.zeros(6, dtype=torch.float64, device=x.device)
    tiles = upper_tiles(n, meta["BLOCK_M"], meta["BLOCK_N"], x.device, rank, world)
    if len(tiles):
        features = y is not None
        y_ = y if features else x
        with _on(x):
            _moments_kernel[(len(tiles),)](
                x, x.stride(0), x_mean, x_inv, y_, y_.stride(0), y_mean if features else x_mean,
                y_inv if features else x_inv, ref if ref is not None else x, bad, out, tiles, n, dx,
                y_.shape[1], REF_IS_FEATURES=features, **meta)
    return out


@triton.jit
def _curve_kernel(x_ptr, stride, mean_ptr, bounds_ptr, s_ptr, q_ptr, ref_ptr, ref_mean, ref_inv, bad_ptr, out_ptr,
                  tiles_ptr, n, d, steps, eps, REF_IS_CONDENSED: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """One tile for every step of an insertion curve: the running Gram block of the mean-shifted rows
    grows by the step's features (a rank-b update), then r = (G - s_i s_j / k) / sqrt(v_i v_j) is compared
    with the reference and the six pair sums of that step are added to out[step, :]."""
    rows_i, rows_j = _tile_rows(tiles_ptr, BLOCK_M, BLOCK_N)
    ok_i, ok_j = rows_i < n, rows_j < n
    upper = (rows_j[None, :] > rows_i[:, None]) & ok_j[None, :]
    if REF_IS_CONDENSED:
        y = tl.load(ref_ptr + _condensed_index(rows_i, rows_j, n), mask=upper, other=0.0).to(tl.float64)
    else:  # the full-feature RDM of the same rows
        y = 1.0 - _normalised_gram(x_ptr, stride, ref_mean, ref_inv, rows_i, rows_j, n, d,
                                   BLOCK_M, BLOCK_N, BLOCK_K, ACC).to(tl.float64)
    bad = (tl.load(bad_ptr + rows_i, mask=ok_i, other=1) != 0)[:, None] | \
          (tl.load(bad_ptr + rows_j, mask=ok_j, other=1) != 0)[None, :]
    base = upper & (y == y) & ~bad
    mi = tl.load(mean_ptr + rows_i, mask=ok_i, other=0.0).to(ACC)
    mj = tl.load(mean_ptr + rows_j, mask=ok_j, other=0.0).to(ACC)
    g = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    lo = 0
    s_at, q_at = s_ptr, q_ptr  # the step's rows of s_steps and q_steps: pointers advance, no step * n index
    for step in range(0, steps):
        hi = tl.load(bounds_ptr + step)
        g = _add_shifted_gram(g, x_ptr, stride, mi, mj, rows_i, rows_j, ok_i, ok_j, lo, hi, BLOCK_K, ACC)
        lo = hi
        k = hi.to(tl.float64)
        si = tl.load(s_at + rows_i, mask=ok_i, other=0.0)
        qi = tl.load(q_at + rows_i, mask=ok_i, other=0.0)
        sj = tl.load(s_at + rows_j, mask=ok_j, other=0.0)
        qj = tl.load(q_at + rows_j, mask=ok_j, other=0.0)
        s_at += n
        q_at += n
        vi = qi - si * si / k
        vj = qj - sj * sj / k
        good_i = (vi > eps * qi) & (vi > 0)
        good_j = (vj > eps * qj) & (vj > 0)
        inv_i = tl.where(good_i, 1.0 / tl.sqrt(tl.where(good_i, vi, 1.0)), 0.0)
        inv_j = tl.where(good_j, 1.0 / tl.sqrt(tl.where(good_j, vj, 1.0)), 0.0)
        ok = base & good_i[:, None] & good_j[None, :]
        r = (g.to(tl.float64) - si[:, None] * sj[None, :] / k) * inv_i[:, None] * inv_j[None, :]
        _add_moments(out_ptr + step * 6, ok, 1.0 - r, y)


def curve_moments(x: torch.Tensor, shift_mean: torch.Tensor, bounds: torch.Tensor, s_steps: torch.Tensor,
                  q_steps: torch.Tensor, bad: torch.Tensor, eps: float, *, ref: torch.Tensor | None = None,
                  full_mean=None, full_inv=None, rank: int = 0, world: int = 1) -> torch.Tensor:
    """float64 [steps, 6] pair sums of an insertion curve over this rank's tiles.

    x: features in insertion order (row-major); shift_mean: the per-row shift; bounds: int32 [steps],
    features in at each step; s_steps/q_steps: float64 [steps, n] running row sums and squared sums of
    the shifted rows; the reference is a condensed RDM ``ref`` or, when None, the full-feature RDM (with
    ``full_mean``/``full_inv``); bad: uint8 [n], rows left out of the reference.
    """
    n, d = x.shape
    meta = _meta(x, "curve")
    steps = bounds.numel()
    out = torch.zeros(steps, 6, dtype=torch.float64, device=x.device)
    tiles = upper_tiles(n, meta["BLOCK_M"], meta["BLOCK_N"], x.device, rank, world)
    if len(tiles):
        condensed = ref is not None
        with _on(x):
            _curve_kernel[(len(tiles),)](
                x, x.stride(0), shift_mean, bounds, s_steps, q_steps, ref if condensed else x,
                shift_mean if condensed else full_mean, shift_mean if condensed else full_inv, bad, out, tiles,
                n, d, steps, eps, REF_IS_CONDENSED=condensed, **meta)
    return out
