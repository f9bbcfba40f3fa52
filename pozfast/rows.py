"""Rows of a feature matrix, as the RDM code needs them: inputs checked and converted, condensed-RDM
bookkeeping, float64 row statistics (scale, mean, centred norm, zero-variance flags), normalised row
blocks and the tiles of the upper triangle."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

_KINDS = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers"}
_CHUNK_ELEMENTS = 1 << 19  # row chunks of the O(N D) passes: bounded float64 temporaries
_ROUNDING_ULPS = 4  # a row whose rms spread is within this many eps of its rms value is constant
PREPARED_BYTES = 256 << 20  # normalised copies of X up to this size are made once (RowBlocks)


class ZeroVarianceWarning(RuntimeWarning):
    """Some rows have zero variance: their pairs are NaN / skipped."""


def as_tensor(a: Any, name: str) -> Tensor:
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
        with warnings.catch_warnings():  # read-only arrays (memory-mapped files) are fine: inputs are only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            a = torch.from_numpy(a)
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(a).__name__}")
    if a.is_complex():
        raise TypeError(f"{name} must hold real numbers, got a {a.dtype} tensor")
    return a


def as_features(X: Any, name: str = "X") -> Tensor:
    X = as_tensor(X, name)
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
    return X  # finiteness is checked by row_stats, in the same pass as the row statistics


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
    t = as_tensor(rdm, name).double()
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
class RowStats:
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
        if not self.safe_in(dtype):
            return self.normalise(self.scaled(X, lo, hi, device), lo, hi).to(dtype)
        mean = (self.mean[lo:hi] * self.scale[lo:hi])[:, None].to(device=device, dtype=dtype)
        inv = (self.inv_norm[lo:hi] / self.scale[lo:hi])[:, None].to(device=device, dtype=dtype)
        return X[lo:hi].to(device=device, dtype=dtype).sub(mean).mul_(inv)


@dataclasses.dataclass(frozen=True)
class SquaredNorms:
    """What Euclidean tiles need: rows less the column means (distances do not change, and the Gram formula
    stops cancelling on data far from the origin) over one power-of-two scale (exact), and their float64
    squared norms as the compute dtype holds them, so that d^2 = q_i + q_j - 2 x_i.x_j errs only by the GEMM's
    rounding."""

    mean: Tensor  # float64 [D]: column means
    scale: float  # power of two <= the largest |x - mean|
    sq: Tensor  # float64 [N]: squared norms of the centred, scaled rows in the compute dtype
    squared: bool  # squared distances (sqeuclidean) or distances (euclidean)

    def normalised(self, X: Tensor, lo: int, hi: int, dtype: torch.dtype, device) -> Tensor:
        """Rows lo:hi centred and scaled, in ``dtype`` on ``device``."""
        rows = X[lo:hi].to(device=device, dtype=torch.float64, copy=True)
        return rows.sub_(self.mean.to(device)).div_(self.scale).to(dtype)

    def distances(self, gram: Tensor, i0: int, j0: int) -> Tensor:
        """float64 (squared) distances of a tile from its Gram block of rows i0.. and columns j0..; clamped
        at 0, where rounding can take a tiny squared distance."""
        q = self.sq.to(gram.device)
        rows, cols = gram.shape
        d2 = gram.double().mul_(-2).add_(q[i0:i0 + rows, None]).add_(q[None, j0:j0 + cols]).clamp_min_(0)
        d2.mul_(self.scale * self.scale)
        return d2 if self.squared else d2.sqrt_()


def squared_norms(X: Tensor, squared: bool, name: str = "X") -> SquaredNorms:
    """:class:`SquaredNorms` of X (finite) in two float64 passes over row chunks, on X's device."""
    n, d = X.shape
    chunks = row_chunks(n, d)
    total = torch.zeros(d, dtype=torch.float64, device=X.device)
    finite = torch.ones((), dtype=torch.bool, device=X.device)
    for lo, hi in chunks:
        rows = X[lo:hi].double()
        finite &= torch.isfinite(rows).all()
        total += rows.sum(0)
    if not bool(finite):
        raise ValueError(f"{name} contains NaN or inf; RDMs need finite features")
    mean = total / n
    top = max((float((X[lo:hi].double() - mean).abs().max()) for lo, hi in chunks), default=0.0)
    scale = math.ldexp(1.0, math.frexp(top)[1] - 1) if top > 0 else 1.0
    stats = SquaredNorms(mean, scale, torch.empty(n, dtype=torch.float64, device=X.device), squared)
    dtype = compute_dtype(X)
    for lo, hi in chunks:
        rows = stats.normalised(X, lo, hi, dtype, X.device).double()
        stats.sq[lo:hi] = torch.linalg.vecdot(rows, rows)
    return stats


def row_chunks(n: int, d: int, min_rows: int = 1) -> list[tuple[int, int]]:
    rows = max(min_rows, _CHUNK_ELEMENTS // max(d, 1))
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


def default_block(n: int, device: torch.device | str = "cpu") -> int:
    # About 8 row blocks: the diagonal tiles (computed whole) then cost 1/8 of the upper-triangle GEMMs. At
    # least 1024 rows: each tile's GEMM and epilogue are parallel regions that wait for every thread, and on
    # a busy core each wait costs a time slice, so small N gets a few large tiles (N = 2000: 3 tiles, +10 %
    # time on an idle machine, a third less under load). GPUs get up to 4096: their GEMMs need the size,
    # and each tile costs a few kernel launches.
    low, high, step = (1024, 4096, 256) if torch.device(device).type == "cuda" else (1024, 2048, 64)
    return int(min(high, max(low, -(-n // 8 // step) * step)))


def constant(centred_sq: Tensor, sq: Tensor, dtype: torch.dtype) -> Tensor:
    """Which rows are constant up to rounding, from their centred sum of squares and their sum of squares.

    Values in ``dtype`` carry a relative rounding error of about eps, so a spread below a few eps of the
    values' own size is indistinguishable from a constant; the test is relative, so any magnitude works.
    """
    return centred_sq <= (_ROUNDING_ULPS * torch.finfo(dtype).eps) ** 2 * sq


def row_stats(X: Tensor, warn: bool = True, name: str = "X", centre: bool = True) -> RowStats:
    """Row scales, means and centred norms in float64 on X's device, in row chunks (no float64 copy of X);
    X must be finite. The host waits for the device a few times per call (the checks, the size range), never per chunk.

    ``centre=False`` gives the statistics of cosine dissimilarities: means 0, plain norms, and only all-zero
    rows are bad (their pairs NaN)."""
    n = X.shape[0]
    scale, mean, centred_sq, sq = (torch.empty(n, dtype=torch.float64, device=X.device) for _ in range(4))
    finite = torch.ones((), dtype=torch.bool, device=X.device)
    for lo, hi in row_chunks(n, X.shape[1]):
        rows = X[lo:hi].to(dtype=torch.float64, copy=True)  # worked on in place
        low, high = torch.aminmax(rows, dim=1)
        top = torch.maximum(high, -low)
        finite &= torch.isfinite(top).all()  # aminmax passes NaN on
        top = top.nan_to_num(1.0, 1.0, 1.0)  # keeps the scale finite until the check below
        scale[lo:hi] = torch.ldexp(torch.ones_like(top), torch.frexp(top).exponent - 1)  # 1/2 for an all-zero row
        rows.div_(scale[lo:hi, None])
        sq[lo:hi] = torch.linalg.vecdot(rows, rows)
        mean[lo:hi] = rows.mean(1) if centre else 0.0
        rows.sub_(mean[lo:hi, None])
        centred_sq[lo:hi] = torch.linalg.vecdot(rows, rows)
    if not bool(finite):
        raise ValueError(f"{name} contains NaN or inf; RDMs need finite features")
    bad = constant(centred_sq, sq, compute_dtype(X)) if centre else sq == 0
    inv = torch.where(bad, torch.zeros_like(sq), centred_sq.clamp_min(torch.finfo(torch.float64).tiny).rsqrt())
    if warn and bool(bad.any()):
        what = "zero variance" if centre else "zero norm (all features 0)"
        warnings.warn(f"{int(bad.sum())} of {n} rows have {what}: their pairs are NaN in the RDM and "
                      f"skipped in comparisons", ZeroVarianceWarning, stacklevel=3)
    sizes = torch.cat([scale, scale / inv]).masked_fill(torch.cat([bad, bad]), torch.nan)  # valid rows only
    low, high = torch.stack([sizes.nan_to_num(torch.inf).min(), sizes.nan_to_num(-torch.inf).max()]).tolist()
    return RowStats(scale, mean, inv, bad, (low, high) if high >= low else (1.0, 1.0))


class RowBlocks:
    """Normalised row blocks of X on ``device`` (``partner=True``: the partner rows of :class:`CrossTerms`).

    With ``prepare``, when the whole normalised matrix takes at most PREPARED_BYTES it is made once, in row
    chunks, and blocks are views of it: one pass of elementwise work instead of one per tile, and per tile
    only its GEMM and epilogue, so few parallel regions, each of which waits for every thread (what a busy
    core punishes). Otherwise (streaming comparisons keep their memory at a few blocks) blocks are made on
    demand; the current i-block is kept while its tiles go by.
    """

    def __init__(self, X: Tensor, stats: Any, dtype: torch.dtype, device=None, partner: bool = False,
                 prepare: bool = False):
        self.X, self.dtype = X, dtype
        self.device = X.device if device is None else torch.device(device)
        self._rows = stats.partner if partner else stats.normalised
        self._key, self._block, self._all = None, None, None
        n, d = X.shape
        if prepare and n * d * dtype.itemsize <= PREPARED_BYTES:
            self._all = torch.empty((n, d), dtype=dtype, device=self.device)
            for lo, hi in row_chunks(n, d):
                self._all[lo:hi] = self._rows(X, lo, hi, dtype, self.device)

    def make(self, lo: int, hi: int) -> Tensor:
        """Rows lo:hi normalised, on the blocks' device."""
        return self._all[lo:hi] if self._all is not None else self._rows(self.X, lo, hi, self.dtype, self.device)

    def get(self, lo: int, hi: int) -> Tensor:
        if self._key != (lo, hi):
            self._key, self._block = (lo, hi), self.make(lo, hi)
        return self._block


def tiles(n: int, block: int) -> list[tuple[int, int, int, int]]:
    return [(i, min(i + block, n), j, min(j + block, n)) for i in range(0, n, block) for j in range(i, n, block)]


def progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="tile")


def compute_dtype(X: Tensor) -> torch.dtype:
    return torch.float64 if X.dtype == torch.float64 else torch.float32
