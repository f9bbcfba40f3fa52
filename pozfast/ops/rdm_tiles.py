"""RDM tiles: the tile drivers of the RDM, similarity and insertion-curve paths, and their epilogues.

Each driver (:func:`fill_rdm`, :func:`similarity_moments`, :func:`curve_moments`) picks its backend here:
Triton runs the whole job as fused tile kernels (triton_kernels/rdm_tiles.py); otherwise GEMM tiles run in
torch (BLAS, cuBLAS) and their epilogues (:func:`pack_condensed`, :func:`pair_moments`) run in the native
kernels, csrc/rdm_tiles_cpu.cpp on CPU tensors and csrc/rdm_tiles_cuda.cu on CUDA tensors (on the current
stream), or in plain torch, the reference, when ``torch`` is forced. Internal ops of the geometry modules,
not registered with torch.library: they write into caller-owned buffers (e.g. a memory-mapped .npy file).
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor

from pozfast._native import native
from pozfast.backends import select
from pozfast.crossnobis import CrossTerms
from pozfast.distributed import all_reduce_sum, world
from pozfast.rows import RowBlocks, RowStats, SquaredNorms, default_block, progress_bar, row_chunks, tiles

_SUPPORTED = ("cpu-native", "cuda-native", "torch")
TILE_BACKENDS = ("cpu-native", "cuda-native", "triton", "torch")
CURVE_BLOCK = 1024
ONE_PASS_EPS = 1e-10  # v = q - s^2/k below this share of q is cancellation noise: that row is skipped


class RefMode(enum.IntEnum):
    """What ``pair_moments`` compares against (the same values in csrc/rdm_tiles.h)."""

    DISSIMILARITY = 0  # a dissimilarity tile
    GRAM = 1  # a Gram tile of normalised rows: y = 1 - tile
    CONDENSED = 2  # the condensed vector of the whole reference RDM


def condensed_index(i: Tensor, j: Tensor, n: int) -> Tensor:
    """scipy squareform position of pair (i, j), i < j, in int64."""
    i, j = i.long(), j.long()
    return i * n - i * (i + 1) // 2 + (j - i - 1)


def _upper_pairs(rows: int, cols: int, i0: int, j0: int, device) -> tuple[Tensor, Tensor, Tensor]:
    i = i0 + torch.arange(rows, device=device).unsqueeze(1)
    j = j0 + torch.arange(cols, device=device).unsqueeze(0)
    return i, j, j > i


def _native(*operands: Tensor, extra: tuple[Tensor, ...] = ()) -> str | None:
    """The native backend ("cpu-native" or "cuda-native") for these operands (one dtype, unit column stride),
    or None for plain torch. Every tensor a kernel reads, ``extra`` too, must be on one device."""
    device = operands[0].device
    if any(t.device != device for t in (*operands, *extra)):  # a kernel would read another device's memory
        found = sorted({str(t.device) for t in (*operands, *extra)})
        raise RuntimeError(f"rdm tiles: operands on different devices: {found}")
    backend = select("rdm tiles", device, _SUPPORTED)
    ok = backend != "torch" and all(t.stride(-1) == 1 for t in operands if t.dim())
    return backend if ok and len({t.dtype for t in operands}) == 1 else None


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def pack_condensed(tile: Tensor, i0: int, j0: int, n: int, bad: Tensor, out: Tensor) -> None:
    """out[idx(i, j)] = 1 - tile[i - i0, j - j0] for the tile's pairs with j > i; NaN for bad rows.

    tile: (rows, cols) float32/float64 with unit column stride; bad: uint8 [n]; out: condensed [n(n-1)/2].
    """
    rows, cols = tile.shape
    backend = _native(tile, out, extra=(bad,))
    if backend is not None:
        args = (tile.data_ptr(), tile.stride(0), rows, cols, i0, j0, n, bad.data_ptr(), out.data_ptr(),
                tile.dtype == torch.float64)
        if backend == "cuda-native":
            with torch.cuda.device(tile.device):
                native().pack_condensed_cuda(*args, _stream(tile))
        else:
            native().pack_condensed_cpu(*args)
        return
    i, j, _ = _upper_pairs(rows, cols, i0, j0, tile.device)
    pack_values(torch.where(bad[i].bool() | bad[j].bool(), float("nan"), 1 - tile), i0, j0, n, out)


def pack_values(values: Tensor, i0: int, j0: int, n: int, out: Tensor) -> None:
    """out[idx(i, j)] = values[i - i0, j - j0] for the tile's pairs with j > i (plain torch, any dtypes)."""
    rows, cols = values.shape
    i, j, upper = _upper_pairs(rows, cols, i0, j0, values.device)
    out[condensed_index(i, j, n).expand(rows, cols)[upper]] = values[upper].to(out.dtype)


def pair_moments(gram: Tensor, i0: int, j0: int, n: int, s_rows: Tensor, q_rows: Tensor, s_cols: Tensor,
                 q_cols: Tensor, k: float, eps: float, ref: Tensor, ref_mode: RefMode, out: Tensor) -> None:
    """Add to ``out`` (float64 [6] on the tile's device) n, sum x, sum y, sum x^2, sum y^2, sum xy over the
    tile's pairs j > i, without waiting for the device.

    x = 1 - r with r = (G - s_i s_j / k) / sqrt(v_i v_j), v = q - s^2/k (rows with v <= eps * q skipped);
    y from ``ref`` as ``ref_mode`` says (:class:`RefMode`). Pairs with NaN y are skipped.
    """
    rows, cols = gram.shape
    backend = _native(gram, ref, extra=(s_rows, q_rows, s_cols, q_cols, out))
    if backend is not None:
        args = (gram.data_ptr(), gram.stride(0), rows, cols, i0, j0, n, s_rows.data_ptr(), q_rows.data_ptr(),
                s_cols.data_ptr(), q_cols.data_ptr(), float(k), float(eps), ref.data_ptr(),
                ref.stride(0) if ref_mode != RefMode.CONDENSED else 0, int(ref_mode), gram.dtype == torch.float64)
        if backend == "cuda-native":
            scratch = torch.empty(2 * (rows + cols), dtype=torch.float64, device=gram.device)
            with torch.cuda.device(gram.device):
                native().pair_moments_cuda(*args, scratch.data_ptr(), out.data_ptr(), _stream(gram))
        else:
            out += torch.tensor(native().pair_moments_cpu(*args), dtype=torch.float64)
        return
    i, j, upper = _upper_pairs(rows, cols, i0, j0, gram.device)

    def prep(s, q):
        v = q - s * s / k
        ok = (v > eps * q) & (v > 0)
        return s / k ** 0.5, torch.where(ok, 1 / v.clamp_min(1e-300).sqrt(), torch.zeros_like(v)), ok

    mr, ir, okr = prep(s_rows, q_rows)
    mc, ic, okc = prep(s_cols, q_cols)
    x = 1 - (gram.double() - mr[:, None] * mc[None, :]) * ir[:, None] * ic[None, :]
    if ref_mode == RefMode.CONDENSED:
        y = torch.full((rows, cols), float("nan"), dtype=torch.float64, device=gram.device)
        y[upper] = ref[condensed_index(i, j, n).expand(rows, cols)[upper]].double()
    else:
        y = ref.double() if ref_mode == RefMode.DISSIMILARITY else 1 - ref.double()
    ok = upper & okr[:, None] & okc[None, :] & ~torch.isnan(y)
    x, y = torch.where(ok, x, 0), torch.where(ok, y, 0)  # masks, not boolean indexing: no wait for the device
    out += torch.stack([ok.sum().double(), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])


# --- tile drivers -----------------------------------------------------------------------------------

def triton_operands(X: Tensor, stats: RowStats, dtype, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """X (row-major, unit column stride) with its row means, inverse norms and zero-variance flags on device.

    The kernels centre and multiply rows as they are, in ``dtype``; when a row's size could over- or
    underflow there, they get the normalised rows instead (a copy), with means 0 and inverse norms 1.
    """
    bad = stats.bad.to(device=device, dtype=torch.uint8)
    if stats.safe_in(dtype):
        x = X.to(device=device, dtype=dtype)
        x = x if x.stride(1) == 1 else x.contiguous()
        return (x, (stats.mean * stats.scale).to(device=device, dtype=dtype),
                (stats.inv_norm / stats.scale).to(device=device, dtype=dtype), bad)
    x = torch.empty(X.shape, dtype=dtype, device=device)
    for lo, hi in row_chunks(*X.shape):
        x[lo:hi] = stats.normalised(X, lo, hi, dtype, device)
    n = X.shape[0]
    return x, torch.zeros(n, dtype=dtype, device=device), torch.ones(n, dtype=dtype, device=device), bad


def _row_start(i: int, n: int) -> int:
    """Condensed position of row i's first pair (i, i + 1); n(n-1)/2 for i = n."""
    return i * n - i * (i + 1) // 2


def fill_rdm(X: Tensor, result: Tensor, stats: RowStats | SquaredNorms | CrossTerms, dtype, block: int, device,
             progress: bool) -> None:
    """Write the RDM of X into ``result``: condensed [N(N-1)/2] or square [N, N]. The GEMMs run on ``device``;
    a condensed ``result`` elsewhere (a memory-mapped file) receives one block row at a time.

    ``stats`` says what the tiles hold: :class:`RowStats` give Gram tiles of unit-norm rows, stored as
    ``1 - tile`` (correlation, or cosine with uncentred stats) by the native and Triton kernels;
    :class:`SquaredNorms` give (squared) Euclidean distances from their float64 epilogue, packed in torch;
    :class:`CrossTerms` crossnobis distances likewise, from tiles of its rows by their partner rows."""
    n = X.shape[0]
    square = result.dim() == 2
    staged = not square and result.device != device
    gram = isinstance(stats, RowStats)
    cross = isinstance(stats, CrossTerms)
    if gram and not square and select("rdm", device, TILE_BACKENDS) == "triton":
        _triton_condensed(X, result, stats, dtype, block, device, staged, progress)
        return
    bad = stats.bad.to(device=device, dtype=torch.uint8) if gram else None
    rows = RowBlocks(X, stats, dtype, device, prepare=True)  # an RDM's N x N result dwarfs an N x D copy
    cols = RowBlocks(X, stats, dtype, device, partner=True, prepare=True) if cross else rows
    with progress_bar(len(tiles(n, block)), progress, "RDM") as bar:
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
            # The condensed pairs of rows i0..i1 are one span, which is the head of the condensed RDM of items
            # i0..n: staged, a block row is packed as that smaller RDM into a device buffer, then copied out.
            first = i0 if staged else 0
            target = torch.empty(_row_start(i1, n) - _row_start(i0, n), dtype=dtype, device=device) \
                if staged else result
            zi = rows.get(i0, i1)
            for j0 in range(i0, n, block):
                j1 = min(j0 + block, n)
                zj = zi if j0 == i0 and not cross else cols.make(j0, j1)
                tile = zi @ zj.T
                if gram and not square:
                    pack_condensed(tile, i0 - first, j0 - first, n - first, bad[first:], target)
                else:
                    d = (1 - tile) if gram else stats.distances(tile, i0, j0)
                    if square:
                        if j0 == i0:  # its upper triangle, mirrored: rounding may leave the tile unsymmetric
                            d = d.triu(1)
                            d = d + d.T
                        result[i0:i1, j0:j1] = d
                        result[j0:j1, i0:i1] = d.T
                    else:
                        pack_values(d, i0 - first, j0 - first, n - first, target)
                bar.update()
            if staged:
                result[_row_start(i0, n):_row_start(i1, n)].copy_(target)
    if square:
        result.fill_diagonal_(0)
    if square and gram:
        b = stats.bad.to(result.device)
        result.masked_fill_(b[:, None], float("nan")).masked_fill_(b[None, :], float("nan"))  # broadcast masks


def _triton_condensed(X: Tensor, result: Tensor, stats: RowStats, dtype, block: int, device, staged: bool,
                      progress: bool) -> None:
    """fill_rdm's condensed RDM of Gram tiles with Triton: one fused kernel (GEMM tiles and packing) for the
    whole RDM, or, staged, per block row into a device buffer that is then copied out."""
    from pozfast.triton_kernels.rdm_tiles import condensed_rdm, condensed_rows_multiple

    operands = triton_operands(X, stats, dtype, device)
    if not staged:
        condensed_rdm(*operands, result)
        return
    n = X.shape[0]
    multiple = condensed_rows_multiple(operands[0])
    block = -(-block // multiple) * multiple  # whole tile rows: none computed twice
    with progress_bar(len(tiles(n, block)), progress, "RDM") as bar:
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
            span = torch.empty(_row_start(i1, n) - _row_start(i0, n), dtype=dtype, device=device)
            condensed_rdm(*operands, span, rows=(i0, i1))
            result[_row_start(i0, n):_row_start(i1, n)].copy_(span)
            bar.update(-(-(n - i0) // block))  # the block row's tiles


def similarity_moments(X: Tensor, Y: Tensor | None, ref: Tensor | None, sx: RowStats, sy: RowStats | None,
                       dtype, block: int | None, progress: bool) -> Tensor:
    """float64 [6]: pair moments of x = 1 - r^X and y (1 - r^Y of features Y, or the condensed RDM
    ``ref``) over the upper triangle, tiles split across ranks and summed."""
    n = X.shape[0]
    dev = X.device
    bad = sx.bad | (sy.bad if sy is not None else torch.zeros_like(sx.bad))  # X's or Y's zero-variance rows
    rank, size = world()
    if select("rdm similarity", dev, TILE_BACKENDS) == "triton":  # GEMM tiles and sums in one kernel
        from pozfast.triton_kernels import rdm_tiles

        x, mean, inv, _ = triton_operands(X, sx, dtype, dev)
        bad_dev = bad.to(device=dev, dtype=torch.uint8)
        if Y is not None:
            y, y_mean, y_inv, _ = triton_operands(Y, sy, dtype, dev)
            m = rdm_tiles.pair_moments(x, mean, inv, bad_dev, y=y, y_mean=y_mean, y_inv=y_inv, rank=rank, world=size)
        else:
            m = rdm_tiles.pair_moments(x, mean, inv, bad_dev, ref=ref.to(device=dev, dtype=dtype), rank=rank,
                                       world=size)
        return all_reduce_sum(m.cpu())
    s = torch.zeros(n, dtype=torch.float64, device=dev)
    q = (~bad).double().to(dev)  # v = q - s^2/k: 1 for valid rows, 0 for the others
    ref_t = ref.to(device=dev, dtype=dtype).contiguous() if ref is not None else None
    mine = tiles(n, block or default_block(n, dev))[rank::size]
    total = torch.zeros(6, dtype=torch.float64, device=dev)
    rows = RowBlocks(X, sx, dtype), RowBlocks(Y, sy, dtype) if Y is not None else None
    with progress_bar(len(mine), progress, "RDM similarity") as bar:
        for i0, i1, j0, j1 in mine:
            gram = rows[0].get(i0, i1) @ rows[0].make(j0, j1).T
            if Y is None:
                tile_ref, mode = ref_t, RefMode.CONDENSED
            else:
                tile_ref, mode = rows[1].get(i0, i1) @ rows[1].make(j0, j1).T, RefMode.GRAM
            pair_moments(gram, i0, j0, n, s[i0:i1], q[i0:i1], s[j0:j1], q[j0:j1], 1.0, 0.0, tile_ref, mode, total)
            bar.update()
    return all_reduce_sum(total).cpu()


def curve_moments(Z: Tensor, counts: list[int], s_steps: Tensor, q_steps: Tensor, bad: Tensor, ref: Tensor | None,
                  block: int | None, progress: bool) -> Tensor:
    """float64 [steps, 6]: pair moments of every step of an insertion curve.

    Z: (N, D) normalised rows in insertion order; step s holds its first ``counts[s]`` columns, with row
    sums ``s_steps[s]`` and squared sums ``q_steps[s]`` (zero for rows without pairs at that step). The
    reference is Z's own Gram (the full-feature RDM) or the condensed RDM ``ref``. Per tile, a running Gram
    block gets a rank-b update per step; tiles are split across ranks and summed.
    """
    n = Z.shape[0]
    dev, dtype = Z.device, Z.dtype
    rank, size = world()
    if select("insertion curve", dev, TILE_BACKENDS) == "triton":  # every step of a tile in one program
        from pozfast.triton_kernels.rdm_tiles import curve_moments as triton_curve

        zeros, ones = torch.zeros(n, dtype=dtype, device=dev), torch.ones(n, dtype=dtype, device=dev)
        bounds_t = torch.tensor(counts, dtype=torch.int32, device=dev)
        moments = triton_curve(Z, zeros, bounds_t, s_steps, q_steps, bad, ONE_PASS_EPS,
                               ref=ref.to(device=dev, dtype=torch.float64) if ref is not None else None,
                               full_mean=zeros, full_inv=ones, rank=rank, world=size)
        return all_reduce_sum(moments.cpu())
    bounds = [0, *counts]
    ref_t = ref.to(device=dev, dtype=dtype).contiguous() if ref is not None else None
    mine = tiles(n, block or CURVE_BLOCK)[rank::size]
    moments = torch.zeros(len(counts), 6, dtype=torch.float64, device=dev)
    with progress_bar(len(mine), progress, "insertion curve") as bar:
        for i0, i1, j0, j1 in mine:
            zi, zj = Z[i0:i1], Z[j0:j1]
            # The full-feature RDM is Z's Gram; zero-variance rows have zero sums, so no pairs, at every step.
            tile_ref, mode = (zi @ zj.T, RefMode.GRAM) if ref_t is None else (ref_t, RefMode.CONDENSED)
            gram = torch.zeros(i1 - i0, j1 - j0, dtype=dtype, device=dev)
            for step, (a, b) in enumerate(zip(bounds, bounds[1:])):
                gram.addmm_(zi[:, a:b], zj[:, a:b].T)
                pair_moments(gram, i0, j0, n, s_steps[step, i0:i1], q_steps[step, i0:i1], s_steps[step, j0:j1],
                             q_steps[step, j0:j1], float(b), ONE_PASS_EPS, tile_ref, mode, moments[step])
            bar.update()
    return all_reduce_sum(moments).cpu()
