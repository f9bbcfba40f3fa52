"""Representational geometry at scale: Pearson RDMs computed blockwise, RDM comparison, streaming
comparison without an N x N matrix, and PoZ-ordered feature insertion/removal curves.

Conventions:
- An RDM holds dissimilarities ``d_ij = 1 - pearson(x_i, x_j)`` between the rows (items) of X (N x D).
  Condensed form: the N(N-1)/2 upper-triangle entries in scipy ``squareform`` order.
- Zero-variance rows (an item whose feature vector is constant, up to the rounding of its values in the
  dtype the RDM is computed in) make Pearson undefined. Policy, the same in every function: their pairs
  are NaN in RDMs (a :class:`ZeroVarianceWarning` says how many rows), and comparisons skip them (and NaN
  pairs of given RDMs) and report the number of pairs used.
- Non-finite values: NaN or inf in X (or Y, or poz) is an error (no silent NaN propagation). In a given
  RDM, NaN marks a missing pair (skipped); inf is an error.
- "r2" is the squared Pearson correlation of the two RDMs' upper triangles (not squared Spearman).

Under ``torch.distributed``, :func:`rdm_similarity` and :func:`insertion_curve` split their tiles across
ranks and all-reduce float64 sums; every rank returns the same result.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.backends import select
from pozfast.ops.rdm_tiles import REF_CONDENSED, REF_GRAM, pack_condensed, pair_moments
from pozfast.validate import optional_positive_int, positive_int

_TILE_BACKENDS = ("cpu-native", "cuda-native", "triton", "torch")

CURVE_BLOCK = 1024
_CHUNK_ELEMENTS = 1 << 19  # row chunks of the O(N D) passes: bounded float64 temporaries
_ROUNDING_ULPS = 4  # a row whose rms spread is within this many eps of its rms value is constant
_ONE_PASS_EPS = 1e-10  # v = q - s^2/k below this share of q is cancellation noise: that row is skipped
_RANK_DECIMALS = 10  # the Spearman curve's partial RDMs are rounded to this many decimals
_KINDS = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers"}


class ZeroVarianceWarning(RuntimeWarning):
    """Some rows have zero variance: their pairs are NaN / skipped."""


# --- input handling ---------------------------------------------------------------------------------

def _as_tensor(a: Any, name: str) -> Tensor:
    """a (a tensor, numpy array or nested list) as a tensor of real numbers."""
    if isinstance(a, (list, tuple)):
        try:
            a = np.asarray(a)
        except ValueError:
            raise ValueError(f"{name} must be a rectangular array of numbers; its nested lists differ in "
                             f"length") from None
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got {_KINDS.get(a.dtype.kind, a.dtype)}")
        a = torch.from_numpy(a)
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(a).__name__}")
    if a.is_complex():
        raise TypeError(f"{name} must hold real numbers, got a {a.dtype} tensor")
    return a


def _as_features(X: Any, name: str = "X") -> Tensor:
    X = _as_tensor(X, name)
    if X.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N items x D features), got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        X = X.double() if X.element_size() >= 4 else X.float()
    elif X.dtype not in (torch.float32, torch.float64):
        X = X.float()
    if X.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (items) for an RDM, got {X.shape[0]}")
    if X.shape[1] < 1:
        raise ValueError(f"{name} has no features (shape {tuple(X.shape)})")
    return X  # finiteness is checked by _row_stats, in the same pass as the row statistics


def condensed_length(n: int) -> int:
    return n * (n - 1) // 2


def n_items(length: int, name: str = "rdm") -> int:
    """N such that N(N-1)/2 == length; ValueError (naming ``name``) if there is none."""
    n = (1 + math.isqrt(1 + 8 * length)) // 2
    if condensed_length(n) != length or n < 2:
        raise ValueError(f"{name} has {length} entries, but a condensed RDM has N(N-1)/2 entries for some "
                         f"N >= 2; {length} is not such a length")
    return n


def as_condensed(rdm: Any, name: str = "rdm", kind: str = "dissimilarity", atol: float = 1e-6) -> Tensor:
    """A condensed float64 dissimilarity vector from a condensed vector or a square matrix.

    ``kind="similarity"`` turns similarities into dissimilarities as ``1 - s``. A square matrix must be
    symmetric (NaN entries must be symmetric too). NaN marks a missing pair; inf is refused.
    """
    if kind not in ("dissimilarity", "similarity"):
        raise ValueError(f"{name} kind must be 'dissimilarity' or 'similarity', got {kind!r}")
    t = _as_tensor(rdm, name).double()
    if bool(torch.isinf(t).any()):
        raise ValueError(f"{name} contains inf; RDM entries must be finite, or NaN for a missing pair")
    if t.dim() == 2:
        n = t.shape[0]
        if t.shape[1] != n:
            raise ValueError(f"{name} must be a condensed vector or a square matrix, got shape {tuple(t.shape)}")
        diff = (t - t.T).abs()
        nan_mismatch = torch.isnan(t) != torch.isnan(t.T)
        if bool(nan_mismatch.any()) or bool((diff[~torch.isnan(diff)] > atol * (1 + t.abs().nan_to_num().max())).any()):
            raise ValueError(f"{name} is not symmetric; an RDM must be")
        i, j = torch.triu_indices(n, n, offset=1)
        t = t[i, j]
    elif t.dim() == 1:
        n_items(t.numel(), name)
    else:
        raise ValueError(f"{name} must be a condensed vector or a square matrix, got shape {tuple(t.shape)}")
    return 1 - t if kind == "similarity" else t


@dataclasses.dataclass(frozen=True)
class _RowStats:
    """Row statistics of the scaled rows x / scale, whose values lie in (-2, 2): no square over- or underflows."""

    scale: Tensor  # float64 [N]: the largest power of two <= the row's max |x| (dividing by it is exact)
    mean: Tensor  # float64 [N]: mean of the scaled row
    inv_norm: Tensor  # float64 [N]: 1 / centred norm of the scaled row; 0 for zero-variance rows
    bad: Tensor  # bool [N]

    def scaled(self, X: Tensor, lo: int, hi: int, device) -> Tensor:
        """Rows lo:hi over their scale, in float64: a new tensor."""
        return X[lo:hi].to(device=device, dtype=torch.float64, copy=True).div_(self.scale[lo:hi, None].to(device))

    def normalise(self, rows: Tensor, lo: int, hi: int) -> Tensor:
        """Scaled rows lo:hi (columns in any order) centred and scaled to unit norm, in place (in-place float64
        ops cost a tenth of new temporaries); zero-variance rows become 0."""
        return rows.sub_(self.mean[lo:hi, None].to(rows.device)).mul_(self.inv_norm[lo:hi, None].to(rows.device))

    sizes: tuple[float, float]  # the smallest and largest max |x| or centred norm over the valid rows

    def safe_in(self, dtype: torch.dtype) -> bool:
        """Whether every valid row's max |x| and centred norm lie where squares and Gram sums in ``dtype``
        neither over- nor underflow, so that rows can be centred and scaled in ``dtype`` directly."""
        limit = torch.finfo(dtype).max ** 0.25
        return 1 / limit <= self.sizes[0] and self.sizes[1] <= limit

    def normalised(self, X: Tensor, lo: int, hi: int, dtype: torch.dtype, device) -> Tensor:
        """Rows lo:hi centred and scaled to unit norm, returned in ``dtype``: computed in ``dtype`` when the
        rows are safe there (:meth:`safe_in`), else in float64 over the rows' scales."""
        if dtype == torch.float64 or not self.safe_in(dtype):
            return self.normalise(self.scaled(X, lo, hi, device), lo, hi).to(dtype)
        mean = (self.mean[lo:hi] * self.scale[lo:hi])[:, None].to(device=device, dtype=dtype)
        inv = (self.inv_norm[lo:hi] / self.scale[lo:hi])[:, None].to(device=device, dtype=dtype)
        return X[lo:hi].to(device=device, dtype=dtype).sub(mean).mul_(inv)


def _row_chunks(n: int, d: int, min_rows: int = 1) -> list[tuple[int, int]]:
    rows = max(min_rows, _CHUNK_ELEMENTS // max(d, 1))
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


def _default_block(n: int) -> int:
    # About 8 row blocks: the diagonal tiles (computed whole) then cost 1/8 of the upper-triangle GEMMs.
    return int(min(1024, max(256, -(-n // 8 // 64) * 64)))


def _constant(centred_sq: Tensor, sq: Tensor, dtype: torch.dtype) -> Tensor:
    """Which rows are constant up to rounding, from their centred sum of squares and their sum of squares.

    Values in ``dtype`` carry a relative rounding error of about eps, so a spread below a few eps of the
    values' own size is indistinguishable from a constant; the test is relative, so any magnitude works.
    """
    return centred_sq <= (_ROUNDING_ULPS * torch.finfo(dtype).eps) ** 2 * sq


def _row_stats(X: Tensor, warn: bool = True, name: str = "X") -> _RowStats:
    """Row scales, means and centred norms in float64, in row chunks (no float64 copy of X); X must be finite."""
    n = X.shape[0]
    scale, mean, centred_sq, sq = (torch.empty(n, dtype=torch.float64) for _ in range(4))
    for lo, hi in _row_chunks(n, X.shape[1]):
        rows = X[lo:hi].to(device="cpu", dtype=torch.float64, copy=True)  # worked on in place
        low, high = torch.aminmax(rows, dim=1)
        top = torch.maximum(high, -low)
        if not bool(torch.isfinite(top).all()):  # aminmax passes NaN on
            raise ValueError(f"{name} contains NaN or inf; RDMs need finite features")
        scale[lo:hi] = torch.ldexp(torch.ones_like(top), torch.frexp(top).exponent - 1)  # 1/2 for an all-zero row
        rows.div_(scale[lo:hi, None])
        sq[lo:hi] = torch.linalg.vecdot(rows, rows)
        mean[lo:hi] = rows.mean(1)
        rows.sub_(mean[lo:hi, None])
        centred_sq[lo:hi] = torch.linalg.vecdot(rows, rows)
    bad = _constant(centred_sq, sq, _compute_dtype(X))
    inv = torch.where(bad, torch.zeros_like(sq), centred_sq.clamp_min(torch.finfo(torch.float64).tiny).rsqrt())
    if warn and bool(bad.any()):
        warnings.warn(f"{int(bad.sum())} of {n} rows have zero variance: their pairs are NaN in the RDM and "
                      f"skipped in comparisons", ZeroVarianceWarning, stacklevel=3)
    good = ~bad
    sizes = torch.cat([scale[good], scale[good] / inv[good]])
    return _RowStats(scale, mean, inv, bad, (float(sizes.min()), float(sizes.max())) if sizes.numel() else (1.0, 1.0))


class _RowBlocks:
    """Normalised row blocks of X; the current i-block is kept while the tiles of its row go by."""

    def __init__(self, X: Tensor, stats: _RowStats, dtype: torch.dtype):
        self.X, self.stats, self.dtype = X, stats, dtype
        self._key, self._block = None, None

    def make(self, lo: int, hi: int) -> Tensor:
        """Rows lo:hi normalised, on X's device."""
        return self.stats.normalised(self.X, lo, hi, self.dtype, self.X.device)

    def get(self, lo: int, hi: int) -> Tensor:
        if self._key != (lo, hi):
            self._key, self._block = (lo, hi), self.make(lo, hi)
        return self._block


def _tiles(n: int, block: int) -> list[tuple[int, int, int, int]]:
    return [(i, min(i + block, n), j, min(j + block, n)) for i in range(0, n, block) for j in range(i, n, block)]


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: Tensor) -> Tensor:
    """Sum a float64 CPU tensor over ranks (a no-op without a process group)."""
    rank, world = _world()
    if world == 1:
        return t
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    buf = t.to(device)
    dist.all_reduce(buf)
    return buf.cpu()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="tile")


def _compute_dtype(X: Tensor) -> torch.dtype:
    return torch.float64 if X.dtype == torch.float64 else torch.float32


# --- RDMs -------------------------------------------------------------------------------------------

def rdm(X: Any, *, out: str | os.PathLike = "condensed", block: int | None = None,
        device: str | torch.device | None = None, progress: bool = False) -> Tensor | Path:
    """Pearson RDM ``1 - r`` between the rows of X, computed blockwise over the upper triangle.

    Args:
        X: (N, D) float tensor or numpy array, finite.
        out: ``"condensed"`` (N(N-1)/2 entries, scipy squareform order), ``"square"`` (N x N, zero
            diagonal), or a path ending in ``.npy``: the condensed RDM written blockwise to a memory-mapped
            file, complete or absent (written under a temporary name, then renamed).
        block: tile size (rows per GEMM block), a positive int; default about N / 8, between 256 and 1024.
        device: where the GEMMs run (default: X's device).
        progress: tqdm bar over tiles.
    Returns:
        float32 tensor (float64 when X is float64), or the path of the written ``.npy``. Pairs with a
        zero-variance row are NaN (a ZeroVarianceWarning counts the rows). NaN or inf in X is an error.
    """
    X = _as_features(X)
    device = torch.device(device) if device is not None else X.device
    dtype = _compute_dtype(X)
    n = X.shape[0]
    block = optional_positive_int(block, "block") or _default_block(n)
    stats = _row_stats(X)
    to_file = not (isinstance(out, str) and out in ("condensed", "square"))
    if to_file and not str(out).endswith(".npy"):
        raise ValueError(f"out must be 'condensed', 'square' or a path ending in .npy, got {out!r}")
    if to_file:
        return _rdm_to_file(X, Path(out), stats, dtype, block, progress)
    if out == "square":
        result = torch.empty((n, n), dtype=dtype, device=device)
    else:
        result = torch.empty(condensed_length(n), dtype=dtype, device=device)
        if select("rdm", device, _TILE_BACKENDS) == "triton":  # one fused kernel: GEMM tiles + packing
            from pozfast.triton_kernels.rdm_tiles import condensed_rdm

            x, mean, inv, bad = _triton_operands(X, stats, dtype, device)
            condensed_rdm(x, mean, inv, bad, result)
            return result
    _fill_rdm(X, result, stats, dtype, block, device, progress, square=out == "square")
    return result


def _triton_operands(X: Tensor, stats: _RowStats, dtype, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
    for lo, hi in _row_chunks(*X.shape):
        x[lo:hi] = stats.normalised(X, lo, hi, dtype, device)
    n = X.shape[0]
    return x, torch.zeros(n, dtype=dtype, device=device), torch.ones(n, dtype=dtype, device=device), bad


def _fill_rdm(X: Tensor, result: Tensor, stats: _RowStats, dtype, block: int, device, progress: bool,
              square: bool) -> None:
    n = X.shape[0]
    bad = stats.bad.to(device=device, dtype=torch.uint8)
    with _progress(len(_tiles(n, block)), progress, "RDM") as bar:
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
            zi = stats.normalised(X, i0, i1, dtype, device)
            for j0 in range(i0, n, block):
                j1 = min(j0 + block, n)
                zj = zi if j0 == i0 else stats.normalised(X, j0, j1, dtype, device)
                tile = zi @ zj.T
                if square:
                    d = 1 - tile
                    result[i0:i1, j0:j1] = d
                    result[j0:j1, i0:i1] = d.T
                else:
                    pack_condensed(tile, i0, j0, n, bad, result)
                bar.update()
    if square:
        result.fill_diagonal_(0)
        if bool(stats.bad.any()):
            b = stats.bad.to(device)
            result[b, :] = float("nan")
            result[:, b] = float("nan")


def _rdm_to_file(X: Tensor, path: Path, stats: _RowStats, dtype, block: int, progress: bool) -> Path:
    from numpy.lib.format import open_memmap

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.npy")
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    try:
        mm = open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(condensed_length(X.shape[0]),))
        _fill_rdm(X, torch.from_numpy(mm), stats, dtype, block, torch.device("cpu"), progress, square=False)
        mm.flush()
        del mm
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- comparing RDMs ---------------------------------------------------------------------------------

METHODS = ("pearson", "r2", "spearman", "kendall_tau_a", "cosine")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Result of an RDM comparison: ``value`` over ``n_pairs`` pairs (NaN pairs skipped)."""

    value: float
    n_pairs: int
    method: str
    path: str = "materialised"

    def __float__(self) -> float:
        return self.value


def _pearson_from_moments(m: Tensor) -> float:
    n, sx, sy, sxx, syy, sxy = (float(v) for v in m)
    if n < 2:
        return float("nan")
    cov = n * sxy - sx * sy
    var = (n * sxx - sx * sx) * (n * syy - sy * sy)
    return cov / math.sqrt(var) if var > 0 else float("nan")


def _tau_a(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-a = (concordant - discordant) / (n(n-1)/2), from scipy's tau-b and the tie counts."""
    from scipy.stats import kendalltau

    n0 = len(x) * (len(x) - 1) / 2
    if n0 == 0:
        return float("nan")

    def ties(v):
        _, counts = np.unique(v, return_counts=True)
        return float((counts * (counts - 1) / 2).sum())

    n1, n2 = ties(x), ties(y)
    if n1 == n0 or n2 == n0:
        return 0.0
    tau_b = kendalltau(x, y, variant="b").statistic
    return float(tau_b * math.sqrt((n0 - n1) * (n0 - n2)) / n0)


def compare_rdms(a: Any, b: Any, method: str = "pearson", *, a_kind: str = "dissimilarity",
                 b_kind: str = "dissimilarity") -> Comparison:
    """Compare two RDMs over their upper triangles, skipping pairs that are NaN in either.

    Args:
        a, b: condensed vectors or square (symmetric) matrices, tensors or numpy arrays, same N; NaN marks
            a missing pair (skipped), inf is an error.
        method: ``"pearson"``; ``"r2"`` (the squared Pearson correlation); ``"spearman"`` (Pearson of ranks,
            ties averaged, as scipy.stats.spearmanr: the second-order isomorphism measure); ``"kendall_tau_a"``
            (tau-a: (concordant - discordant) / all pairs, as rsatoolbox's 'tau-a'); ``"cosine"`` (cosine of
            the two dissimilarity vectors, as rsatoolbox's 'cosine').
        a_kind, b_kind: ``"dissimilarity"`` or ``"similarity"`` (turned into ``1 - s``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x, y = as_condensed(a, "a", a_kind), as_condensed(b, "b", b_kind)
    if x.numel() != y.numel():
        raise ValueError(f"a and b are RDMs of different N: {n_items(x.numel())} vs {n_items(y.numel())} items")
    keep = ~(torch.isnan(x) | torch.isnan(y))
    x, y = x[keep], y[keep]
    n = int(x.numel())
    if method in ("pearson", "r2"):
        m = torch.stack([torch.tensor(float(n), dtype=torch.float64), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(),
                         (x * y).sum()])
        r = _pearson_from_moments(m) if n else float("nan")
        return Comparison(r * r if method == "r2" else r, n, method)
    if n < 2:
        return Comparison(float("nan"), n, method)
    xs, ys = x.numpy(), y.numpy()
    if method == "spearman":
        from scipy.stats import spearmanr

        value = float(spearmanr(xs, ys).statistic)
    elif method == "kendall_tau_a":
        value = _tau_a(xs, ys)
    else:
        denom = float(np.linalg.norm(xs) * np.linalg.norm(ys))
        value = float(xs @ ys / denom) if denom > 0 else float("nan")
    return Comparison(value, n, method)


# --- streaming comparison ---------------------------------------------------------------------------

def _is_rdm_like(Y: Tensor, n: int) -> bool:
    if Y.dim() == 1:
        return True
    return (Y.shape == (n, n) and bool(torch.allclose(Y, Y.T, equal_nan=True))
            and bool((Y.diagonal().nan_to_num() == 0).all()))


def rdm_similarity(X: Any, Y: Any, method: str = "pearson", *, y_kind: str = "auto", path: str = "auto",
                   block: int | None = None, progress: bool = False) -> Comparison:
    """Pearson (or ``"r2"``) between the RDM of X and the RDM of Y without materialising either.

    Args:
        X: (N, D_A) features, finite.
        Y: (N, D_B) features, finite, or an RDM of the same N items (condensed vector or square
            dissimilarity matrix; NaN pairs skipped, inf is an error).
        y_kind: ``"features"``, ``"rdm"``, or ``"auto"`` (1-D, or square symmetric with zero diagonal,
            is an RDM; anything else features).
        path: ``"features"`` (both features only: the exact feature-space identity, O(N (D_A + D_B)^2)
            time and O((D_A + D_B)^2) memory, no N^2 term), ``"tiled"`` (O(N^2 (D_A + D_B)) time, memory
            bounded by tiles), or ``"auto"``: the feature path when D_A + D_B < N / 2.
        block: tile size of the tiled path, a positive int (default as for :func:`rdm`).
    Returns:
        A :class:`Comparison`; ``.path`` says which path ran. Pairs with a zero-variance row (in X or Y)
        are skipped.
    """
    if method not in ("pearson", "r2"):
        raise ValueError(f"method must be 'pearson' or 'r2', got {method!r}")
    if y_kind not in ("auto", "features", "rdm"):
        raise ValueError(f"y_kind must be 'auto', 'features' or 'rdm', got {y_kind!r}")
    if path not in ("auto", "features", "tiled"):
        raise ValueError(f"path must be 'auto', 'features' or 'tiled', got {path!r}")
    block = optional_positive_int(block, "block")
    X = _as_features(X)
    n = X.shape[0]
    Yt = _as_tensor(Y, "Y")
    y_is_rdm = y_kind == "rdm" or (y_kind == "auto" and _is_rdm_like(Yt, n))
    if y_is_rdm:
        if path == "features":
            raise ValueError("path='features' needs Y as features, but Y is an RDM")
        ref = as_condensed(Yt, "Y")
        if n_items(ref.numel(), "Y") != n:
            raise ValueError(f"X has {n} items but the RDM Y has {n_items(ref.numel(), 'Y')}")
        m = _tiled_moments(X, None, ref, block, progress)
        chosen = "tiled"
    else:
        Yf = _as_features(Yt, "Y")
        if Yf.shape[0] != n:
            raise ValueError(f"X and Y must have the same number of items (rows): {n} vs {Yf.shape[0]}")
        chosen = path if path != "auto" else ("features" if X.shape[1] + Yf.shape[1] < n / 2 else "tiled")
        m = _feature_moments(X, Yf) if chosen == "features" else _tiled_moments(X, Yf, None, block, progress)
    r = _pearson_from_moments(m)
    return Comparison(r * r if method == "r2" else r, int(m[0]), method, chosen)


def _feature_moments(X: Tensor, Y: Tensor) -> Tensor:
    """Pair moments of x = 1 - r^X and y = 1 - r^Y from D x D Gram sums, without any N x N term.

    With z the centred, unit-norm rows: sum_{i<j} r_ij = (|sum_i z_i|^2 - n) / 2,
    sum_{i<j} r_ij^2 = (|Z^T Z|_F^2 - n) / 2, sum_{i<j} r^X_ij r^Y_ij = (|Z_X^T Z_Y|_F^2 - n) / 2.
    """
    sx, sy = _row_stats(X), _row_stats(Y, name="Y")
    good = ~(sx.bad | sy.bad)
    rank, world = _world()
    dx, dy = X.shape[1], Y.shape[1]
    gxx = torch.zeros(dx, dx, dtype=torch.float64)
    gyy = torch.zeros(dy, dy, dtype=torch.float64)
    gxy = torch.zeros(dx, dy, dtype=torch.float64)
    ux = torch.zeros(dx, dtype=torch.float64)
    uy = torch.zeros(dy, dtype=torch.float64)
    for lo, hi in _row_chunks(X.shape[0], dx + dy, min_rows=256)[rank::world]:
        keep = good[lo:hi]
        zx = sx.normalised(X, lo, hi, torch.float64, "cpu")[keep]
        zy = sy.normalised(Y, lo, hi, torch.float64, "cpu")[keep]
        gxx += zx.T @ zx
        gyy += zy.T @ zy
        gxy += zx.T @ zy
        ux += zx.sum(0)
        uy += zy.sum(0)
    flat = _all_reduce(torch.cat([gxx.flatten(), gyy.flatten(), gxy.flatten(), ux, uy]))
    gxx, gyy, gxy, ux, uy = torch.split(flat, [dx * dx, dy * dy, dx * dy, dx, dy])
    n = float(good.sum())
    pairs = n * (n - 1) / 2
    sum_rx, sum_ry = (ux @ ux - n) / 2, (uy @ uy - n) / 2
    sum_rxx, sum_ryy, sum_rxy = (((g * g).sum() - n) / 2 for g in (gxx, gyy, gxy))  # |G|_F^2 = sum r^2
    # Moments of x = 1 - r_X, y = 1 - r_Y.
    sxm, sym = pairs - sum_rx, pairs - sum_ry
    return torch.stack([torch.tensor(pairs, dtype=torch.float64), sxm, sym,
                        pairs - 2 * sum_rx + sum_rxx, pairs - 2 * sum_ry + sum_ryy,
                        pairs - sum_rx - sum_ry + sum_rxy])


def _tiled_moments(X: Tensor, Y: Tensor | None, ref: Tensor | None, block: int | None, progress: bool) -> Tensor:
    """Pair moments of x = 1 - r^X and y (1 - r^Y, or the given condensed RDM) by tiles of the upper triangle."""
    n = X.shape[0]
    dtype = _compute_dtype(X) if Y is None else torch.promote_types(_compute_dtype(X), _compute_dtype(Y))
    sx = _row_stats(X)
    sy = _row_stats(Y, name="Y") if Y is not None else None
    bad = sx.bad | (sy.bad if sy is not None else torch.zeros_like(sx.bad))
    rank, world = _world()
    if select("rdm similarity", X.device, _TILE_BACKENDS) == "triton":  # GEMM tiles and sums in one kernel
        from pozfast.triton_kernels import rdm_tiles

        x, mean, inv, _ = _triton_operands(X, sx, dtype, X.device)
        bad_dev = bad.to(device=X.device, dtype=torch.uint8)  # X's or Y's zero-variance rows
        if Y is not None:
            y, y_mean, y_inv, _ = _triton_operands(Y, sy, dtype, X.device)
            m = rdm_tiles.pair_moments(x, mean, inv, bad_dev, y=y, y_mean=y_mean, y_inv=y_inv, rank=rank, world=world)
        else:
            m = rdm_tiles.pair_moments(x, mean, inv, bad_dev, ref=ref.to(device=X.device, dtype=dtype),
                                       rank=rank, world=world)
        return _all_reduce(m.cpu())
    dev = X.device
    s = torch.zeros(n, dtype=torch.float64, device=dev)
    q = (~bad).double().to(dev)  # v = q - s^2/k: 1 for valid rows, 0 for the others
    ref_t = ref.to(device=dev, dtype=dtype).contiguous() if ref is not None else None
    tiles = _tiles(n, block or _default_block(n))[rank::world]
    total = torch.zeros(6, dtype=torch.float64)
    rows = _RowBlocks(X, sx, dtype), _RowBlocks(Y, sy, dtype) if Y is not None else None
    with _progress(len(tiles), progress, "RDM similarity") as bar:
        for i0, i1, j0, j1 in tiles:
            gram = rows[0].get(i0, i1) @ rows[0].make(j0, j1).T
            if Y is None:
                tile_ref, mode = ref_t, REF_CONDENSED
            else:
                tile_ref, mode = rows[1].get(i0, i1) @ rows[1].make(j0, j1).T, REF_GRAM
            total += pair_moments(gram, i0, j0, n, s[i0:i1], q[i0:i1], s[j0:j1], q[j0:j1], 1.0, 0.0,
                                  tile_ref, mode)
            bar.update()
    return _all_reduce(total)


# --- insertion / removal curves ---------------------------------------------------------------------

@dataclasses.dataclass
class InsertionCurve:
    """One value per step: the partial-feature RDM compared with the reference.

    ``fractions[s]`` and ``n_features[s]`` say how many features were in at step s, ``values[s]`` the
    comparison and ``n_pairs[s]`` the number of valid pairs (pairs of rows with zero variance over the
    partial features, or NaN in the reference, are skipped).
    """

    order: str
    method: str
    n_total: int
    n_features: list[int]
    values: list[float]
    n_pairs: list[int]
    reference: str

    @property
    def fractions(self) -> list[float]:
        return [k / self.n_total for k in self.n_features]

    def value_at(self, fraction: float) -> float:
        """The value at the first step that holds at least round(fraction * D) features."""
        want = max(1, round(fraction * self.n_total))
        return next((v for k, v in zip(self.n_features, self.values) if k >= want), self.values[-1])

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fractions": self.fractions}

    def plot(self, path: str | os.PathLike, others: Sequence[InsertionCurve] = ()) -> Path:
        """PNG of value against the fraction of features inserted (other curves drawn alongside)."""
        from pozfast.report import _pyplot, _save_figure

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for c in (self, *others):
            label = {"low_to_high": "low to high PoZ", "high_to_low": "high to low PoZ"}.get(c.order, c.order)
            ax.plot([100 * f for f in c.fractions], c.values, marker="o", markersize=3, label=label)
        ax.set_xlabel("features inserted (%)")
        ax.set_ylabel({"r2": "R² with reference RDM", "pearson": "Pearson r with reference RDM",
                       "spearman": "Spearman ρ with reference RDM"}[self.method])
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"Feature insertion by PoZ (reference: {self.reference})")
        return _save_figure(fig, path)


def _poz_vector(poz: Any, d: int) -> np.ndarray:
    if hasattr(poz, "apoz"):
        poz = poz.apoz
    p = _as_tensor(poz, "poz").double().cpu()
    if p.dim() != 1 or p.shape[0] != d:
        raise ValueError(f"poz must have one value per feature: X has {d} features, poz has shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError("poz contains NaN or inf; PoZ values must be finite")
    return p.numpy()


def _step_counts(d: int, steps: int) -> list[int]:
    return sorted({max(1, round(d * s / steps)) for s in range(1, steps + 1)})


def insertion_curve(X: Any, poz: Any, *, order: str = "low_to_high", steps: int = 50, reference: Any = None,
                    method: str = "r2", block: int | None = None, progress: bool = False) -> InsertionCurve:
    """Insert features in PoZ order and compare each partial-feature RDM with a reference RDM.

    Args:
        X: (N, D) features, finite (e.g. a layer's activations over N items).
        poz: per-feature PoZ, finite, [D] (an array, or a LayerAPoZ from an APoZ report).
        order: ``"low_to_high"`` or ``"high_to_low"`` PoZ (ties keep feature order). A removal curve
            ("remove high to low PoZ") is the insertion curve ``low_to_high`` read from the end.
        steps: number of steps, a positive int; step s holds round(s * D / steps) features.
        reference: an RDM of the same N items (condensed or square; NaN pairs skipped, inf is an error),
            e.g. human similarity judgments; default the full-feature RDM of X.
        method: ``"r2"`` (squared Pearson of the upper triangles), ``"pearson"`` or ``"spearman"``.
        block: tile size of the Pearson curves, a positive int (default 1024).
    The Pearson-based curves keep a running Gram block, row sums and squared sums per tile, and a native
    kernel turns them into r and float64 pair sums after each step: the whole curve costs about two RDMs.
    Spearman curves materialise the condensed partial RDM at each step (ranks need all pairs), in float64
    rounded to 1e-10 so that exact ties stay ties.
    """
    if order not in ("low_to_high", "high_to_low"):
        raise ValueError(f"order must be 'low_to_high' or 'high_to_low', got {order!r}")
    if method not in ("r2", "pearson", "spearman"):
        raise ValueError(f"method must be 'r2', 'pearson' or 'spearman', got {method!r}")
    steps = positive_int(steps, "steps")
    block = optional_positive_int(block, "block")
    X = _as_features(X)
    n, d = X.shape
    p = _poz_vector(poz, d)
    perm = torch.from_numpy(np.argsort(p if order == "low_to_high" else -p, kind="stable"))
    counts = _step_counts(d, steps)
    ref = None
    if reference is not None:
        ref = as_condensed(reference, "reference")
        if n_items(ref.numel(), "reference") != n:
            raise ValueError(f"X has {n} items but the reference RDM has {n_items(ref.numel(), 'reference')}")
    ref_name = "given RDM" if ref is not None else "full-feature RDM"
    if method == "spearman":
        values, pairs = _spearman_curve(X[:, perm], counts, ref if ref is not None else rdm(X).double(), progress)
    else:
        moments = _pearson_curve(X, perm, counts, ref, block, progress)
        values, pairs = [], []
        for m in moments:
            r = _pearson_from_moments(m)
            values.append(r * r if method == "r2" else r)
            pairs.append(int(m[0]))
    return InsertionCurve(order, method, d, counts, values, pairs, ref_name)


def _spearman_curve(Xp: Tensor, counts: list[int], ref: Tensor, progress: bool) -> tuple[list[float], list[int]]:
    from tqdm.auto import tqdm

    values, pairs = [], []
    for k in tqdm(counts, disable=not progress, desc="insertion curve"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZeroVarianceWarning)
            # float64 and rounded to 1e-10, so that dissimilarities equal in exact arithmetic (sparse
            # features give many) stay tied instead of being ranked by rounding noise.
            partial = torch.round(rdm(Xp[:, :k].double()), decimals=_RANK_DECIMALS)
            c = compare_rdms(partial, ref, "spearman")
        values.append(c.value)
        pairs.append(c.n_pairs)
    return values, pairs


def _prefix_sums(v: Tensor, bounds: list[int]) -> Tensor:
    """[steps, rows]: the row sums of v's first bounds[s + 1] columns, for every step s."""
    parts = torch.stack([v[:, a:b].sum(1) for a, b in zip(bounds, bounds[1:])], 1)
    return parts.cumsum(1).T


def _pearson_curve(X: Tensor, perm: Tensor, counts: list[int], ref: Tensor | None, block: int | None,
                   progress: bool) -> Tensor:
    """Pair moments [steps, 6] by running Gram updates per tile: a rank-b update per step, one pass."""
    n, d = X.shape
    dtype = _compute_dtype(X)
    dev = X.device
    stats = _row_stats(X, warn=ref is None)
    # Work on the rows normalised over all features, in insertion order: Pearson over every feature prefix
    # is unchanged (a per-row shift and scale), the one-pass formula stops cancelling and nothing overflows.
    Z = torch.empty((n, d), dtype=dtype, device=dev)
    bounds = [0, *counts]
    k = torch.tensor(counts, dtype=torch.float64, device=dev)[:, None]
    s_steps = torch.empty(len(counts), n, dtype=torch.float64, device=dev)  # [step, row]: running row sums
    q_steps = torch.empty(len(counts), n, dtype=torch.float64, device=dev)  # and sums of squares
    perm = perm.to(dev)
    for lo, hi in _row_chunks(n, d):
        rows = stats.scaled(X, lo, hi, dev)[:, perm]
        sq = _prefix_sums((rows * stats.inv_norm[lo:hi, None].to(dev)) ** 2, bounds)  # in z's units
        z = stats.normalise(rows, lo, hi)
        Z[lo:hi] = z
        s, q = _prefix_sums(z, bounds), _prefix_sums(z * z, bounds)
        # A prefix that is constant up to rounding has no pairs at that step: zero sums give v = 0, skipped.
        flat = _constant(q - s * s / k, sq, dtype)
        s_steps[:, lo:hi] = s.masked_fill(flat, 0)
        q_steps[:, lo:hi] = q.masked_fill(flat, 0)
    rank, world = _world()
    bad = stats.bad.to(device=dev, dtype=torch.uint8)
    if select("insertion curve", dev, _TILE_BACKENDS) == "triton":  # every step of a tile in one program
        from pozfast.triton_kernels.rdm_tiles import curve_moments

        zeros, ones = torch.zeros(n, dtype=dtype, device=dev), torch.ones(n, dtype=dtype, device=dev)
        bounds_t = torch.tensor(counts, dtype=torch.int32, device=dev)
        moments = curve_moments(Z, zeros, bounds_t, s_steps, q_steps, bad, _ONE_PASS_EPS,
                                ref=ref.to(device=dev, dtype=torch.float64) if ref is not None else None,
                                full_mean=zeros, full_inv=ones, rank=rank, world=world)
        return _all_reduce(moments.cpu())
    ref_t = ref.to(device=dev, dtype=dtype).contiguous() if ref is not None else None
    tiles = _tiles(n, block or CURVE_BLOCK)[rank::world]
    moments = torch.zeros(len(counts), 6, dtype=torch.float64)
    with _progress(len(tiles), progress, "insertion curve") as bar:
        for i0, i1, j0, j1 in tiles:
            zi, zj = Z[i0:i1], Z[j0:j1]
            # The full-feature RDM is Z's Gram; zero-variance rows have zero sums, so no pairs, at every step.
            tile_ref, mode = (zi @ zj.T, REF_GRAM) if ref_t is None else (ref_t, REF_CONDENSED)
            gram = torch.zeros(i1 - i0, j1 - j0, dtype=dtype, device=dev)
            for step, (a, b) in enumerate(zip(bounds, bounds[1:])):
                gram.addmm_(zi[:, a:b], zj[:, a:b].T)
                moments[step] += pair_moments(
                    gram, i0, j0, n, s_steps[step, i0:i1], q_steps[step, i0:i1], s_steps[step, j0:j1],
                    q_steps[step, j0:j1], float(b), _ONE_PASS_EPS, tile_ref, mode)
            bar.update()
    return _all_reduce(moments)

