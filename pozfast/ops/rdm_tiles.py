"""RDM tile epilogues: condensed packing and fused Pearson pair sums over a Gram tile.

Native kernels in csrc/rdm_tiles_cpu.cpp (CPU tensors) and csrc/rdm_tiles_cuda.cu (CUDA tensors, on the
current stream); plain torch elsewhere, as the reference, and when ``torch`` is forced. (The Triton path
fuses these epilogues into its own tile kernels: triton_kernels/rdm_tiles.py.) Internal ops of :mod:`pozfast.geometry`, called from Python drivers (not
registered with torch.library: they write into caller-owned buffers, e.g. a memory-mapped .npy file).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pozfast._native import native
from pozfast.backends import select

_SUPPORTED = ("cpu-native", "cuda-native", "torch")
REF_DISSIMILARITY, REF_GRAM, REF_CONDENSED = 0, 1, 2


def condensed_index(i: Tensor, j: Tensor, n: int) -> Tensor:
    """scipy squareform position of pair (i, j), i < j, in int64."""
    i, j = i.long(), j.long()
    return i * n - i * (i + 1) // 2 + (j - i - 1)


def _upper_pairs(rows: int, cols: int, i0: int, j0: int, device) -> tuple[Tensor, Tensor, Tensor]:
    i = i0 + torch.arange(rows, device=device).unsqueeze(1)
    j = j0 + torch.arange(cols, device=device).unsqueeze(0)
    return i, j, j > i


def _native(*tensors: Tensor) -> str | None:
    """The native backend for these tensors ("cpu-native" or "cuda-native"), or None for plain torch."""
    backend = select("rdm tiles", tensors[0].device, _SUPPORTED)
    ok = backend != "torch" and all(t.stride(-1) == 1 for t in tensors if t.dim())
    return backend if ok and len({t.dtype for t in tensors}) == 1 else None


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def pack_condensed(tile: Tensor, i0: int, j0: int, n: int, bad: Tensor, out: Tensor) -> None:
    """out[idx(i, j)] = 1 - tile[i - i0, j - j0] for the tile's pairs with j > i; NaN for bad rows.

    tile: (rows, cols) float32/float64 with unit column stride; bad: uint8 [n]; out: condensed [n(n-1)/2].
    """
    rows, cols = tile.shape
    backend = _native(tile, out)
    if backend is not None:
        args = (tile.data_ptr(), tile.stride(0), rows, cols, i0, j0, n, bad.data_ptr(), out.data_ptr(),
                tile.dtype == torch.float64)
        if backend == "cuda-native":
            with torch.cuda.device(tile.device):
                native().pack_condensed_cuda(*args, _stream(tile))
        else:
            native().pack_condensed_cpu(*args)
        return
    i, j, upper = _upper_pairs(rows, cols, i0, j0, tile.device)
    values = torch.where(bad[i].bool() | bad[j].bool(), float("nan"), 1 - tile)
    out[condensed_index(i, j, n).expand(rows, cols)[upper]] = values[upper].to(out.dtype)


def pair_moments(gram: Tensor, i0: int, j0: int, n: int, s_rows: Tensor, q_rows: Tensor, s_cols: Tensor,
                 q_cols: Tensor, k: float, eps: float, ref: Tensor, ref_mode: int) -> Tensor:
    """float64 [6]: n, sum x, sum y, sum x^2, sum y^2, sum xy over the tile's pairs j > i.

    x = 1 - r with r = (G - s_i s_j / k) / sqrt(v_i v_j), v = q - s^2/k (rows with v <= eps * q skipped);
    y from ``ref``: a dissimilarity tile (REF_DISSIMILARITY), 1 - a Gram tile (REF_GRAM), or the
    condensed vector of the whole RDM (REF_CONDENSED). Pairs with NaN y are skipped.
    """
    rows, cols = gram.shape
    backend = _native(gram, ref)
    if backend is not None:
        args = (gram.data_ptr(), gram.stride(0), rows, cols, i0, j0, n, s_rows.data_ptr(), q_rows.data_ptr(),
                s_cols.data_ptr(), q_cols.data_ptr(), float(k), float(eps), ref.data_ptr(),
                ref.stride(0) if ref_mode != REF_CONDENSED else 0, ref_mode, gram.dtype == torch.float64)
        if backend == "cuda-native":
            scratch = torch.empty(2 * (rows + cols), dtype=torch.float64, device=gram.device)
            sums = torch.zeros(6, dtype=torch.float64, device=gram.device)
            with torch.cuda.device(gram.device):
                native().pair_moments_cuda(*args, scratch.data_ptr(), sums.data_ptr(), _stream(gram))
            return sums.cpu()
        return torch.tensor(native().pair_moments_cpu(*args), dtype=torch.float64)
    i, j, upper = _upper_pairs(rows, cols, i0, j0, gram.device)

    def prep(s, q):
        v = q - s * s / k
        ok = (v > eps * q) & (v > 0)
        return s / k ** 0.5, torch.where(ok, 1 / v.clamp_min(1e-300).sqrt(), torch.zeros_like(v)), ok

    mr, ir, okr = prep(s_rows, q_rows)
    mc, ic, okc = prep(s_cols, q_cols)
    x = 1 - (gram.double() - mr[:, None] * mc[None, :]) * ir[:, None] * ic[None, :]
    if ref_mode == REF_CONDENSED:
        y = torch.full((rows, cols), float("nan"), dtype=torch.float64, device=gram.device)
        y[upper] = ref[condensed_index(i, j, n).expand(rows, cols)[upper]].double()
    else:
        y = ref.double() if ref_mode == REF_DISSIMILARITY else 1 - ref.double()
    ok = upper & okr[:, None] & okc[None, :] & ~torch.isnan(y)
    x, y = x[ok], y[ok]
    return torch.stack([ok.sum().double(), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]).cpu()
