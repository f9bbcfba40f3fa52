"""RDMs between the rows of feature matrices (correlation, Euclidean, squared Euclidean or cosine
dissimilarities) or between conditions of observations (crossnobis), blockwise over the upper triangle:
condensed, square, or written to a memory-mapped ``.npy`` file; one matrix or a set, in the caller's form."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast._io import atomic_path
from pozfast.crossnobis import CrossTerms, crossnobis_inputs
from pozfast.interop import as_feature_set, canonical_method, rdms_out, result_dtype
from pozfast.ops import rdm_tiles
from pozfast.rows import (RowStats, SquaredNorms, compute_dtype, condensed_length, default_block, row_stats,
                          squared_norms)
from pozfast.validate import device as checked_device, optional_positive_int


def rdm(X: Any, *, method: str = "correlation", out: str | os.PathLike = "condensed", block: int | None = None,
        device: str | torch.device | None = None, progress: bool = False, descriptor: Any = None,
        dtype: Any = None, cv_descriptor: Any = None, noise: Any = None) -> Any:
    """RDM of the rows (items) of X, computed blockwise over the upper triangle with one GEMM per tile.

    Args:
        X: (N, D) features, finite: a numpy array, torch tensor, DataFrame or nested list, an rsatoolbox
            ``Dataset``; or a set: an (S, N, D) stack or a list of matrices / Datasets with the same N items.
        method: the dissimilarity (scipy ``pdist`` names; rsatoolbox's names as aliases):
            ``"correlation"`` (``1 - pearson``, the default), ``"euclidean"``, ``"sqeuclidean"`` (squared
            Euclidean), ``"cosine"`` (``1 - x.y / (|x| |y|)``), or ``"crossnobis"`` (cross-validated
            Mahalanobis distance between conditions, :mod:`pozfast.crossnobis`, as rsatoolbox's
            ``calc_rdm_crossnobis``: X holds observations, ``descriptor`` their conditions). Note that
            rsatoolbox's ``calc_rdm`` ``"euclidean"`` is the squared distance over D:
            ``rdm(X, method="sqeuclidean") / D``.
        out: ``"condensed"`` (N(N-1)/2 entries, scipy squareform order), ``"square"`` (N x N, zero
            diagonal), or a path ending in ``.npy``: the condensed RDM ((S, P) for a set) written blockwise
            to a memory-mapped file, complete or absent (written under a temporary name, then renamed).
        block: tile size (rows per GEMM block), a positive int; default about N / 8, between 1024 and 2048 (on
            a GPU between 1024 and 4096).
        device: where the GEMMs run (default: X's device), also for ``.npy`` output, which receives the
            condensed RDM one block row at a time. Torch results stay there.
        progress: tqdm bar over tiles.
        descriptor: rsatoolbox Datasets: average the observations of each condition of this obs descriptor
            first, as ``rsatoolbox.rdm.calc_rdm(..., descriptor=...)``. Crossnobis (required): the
            conditions, as an obs descriptor's name for Datasets, else one label per row of X; the RDM's
            items are the conditions in sorted order.
        cv_descriptor: crossnobis only: the fold (run) of each observation, named or given as
            ``descriptor`` is; default as rsatoolbox's: the k-th observation of each condition is in fold k.
        noise: crossnobis only: the noise precision matrix (D x D, the inverse noise covariance, as
            rsatoolbox's ``noise``), or a list of one per fold (the precision of each fold's means);
            default the identity.
        dtype: floating dtype of the result. Default float64 for every input form (numpy, torch, rsatoolbox),
            whatever the compute dtype: GEMMs run in float32 for float32 features (float64 for float64), and
            their float32 rounding (about 1e-7 of the values' scale) stays in the float64 result. On a GPU,
            the cuda-native and torch backends' float32 GEMMs follow torch's TF32 setting
            (``torch.backends.cuda.matmul.fp32_precision``, ``allow_tf32``): with TF32 on, about 1e-3
            (Triton's are IEEE float32 either way). Ask for
            ``torch.float32`` to keep a float32 result without the float64 copy (half the memory). A ``.npy``
            file gets ``dtype``, else the compute dtype.
    Returns:
        numpy in: a numpy array; torch in: a tensor on X's device (or ``device``); rsatoolbox in: an ``RDMs``
        object (descriptors kept, ``dissimilarity_measure`` the method); a set adds a leading S axis. The
        Path of the written file for ``.npy`` output. Correlation pairs with a zero-variance row, and cosine
        pairs with an all-zero row, are NaN (a ZeroVarianceWarning counts the rows). NaN or inf in X is an
        error.

    Euclidean distances come from the Gram identity |x|^2 + |y|^2 - 2 x.y on column-centred rows with a
    float64 epilogue; for near-duplicate rows in float32 their absolute error is about sqrt(1e-7) of the
    rows' spread (pass float64 features where such distances matter).
    """
    method = canonical_method(method, "rdm")
    block = optional_positive_int(block, "block")
    device = None if device is None else checked_device(device)
    to_file = not (isinstance(out, str) and out in ("condensed", "square"))
    if to_file and not str(out).endswith(".npy"):
        raise ValueError(f"out must be 'condensed', 'square' or a path ending in .npy, got {out!r}")
    if method == "crossnobis":
        rows, form = crossnobis_inputs(X, descriptor, cv_descriptor, noise)
    else:
        if cv_descriptor is not None or noise is not None:
            raise ValueError(f"cv_descriptor and noise are options of method='crossnobis', not {method!r}")
        mats, form = as_feature_set(X, "X", descriptor=descriptor)
        rows = [(m, _stats(m, method)) for m in mats]
    if to_file:
        return _rdms_to_file(rows, Path(out), block, device, progress, dtype, form.is_set)
    res = [_rdm_into(m, stats, out == "square", None, block, device, progress) for m, stats in rows]
    if device is not None and form.kind == "torch":
        form = dataclasses.replace(form, device=device)
    return rdms_out(torch.stack(res) if form.is_set else res[0], form, measure=method, dtype=dtype)


def _stats(X: Tensor, method: str) -> RowStats | SquaredNorms:
    if method in ("euclidean", "sqeuclidean"):
        return squared_norms(X, squared=method == "sqeuclidean")
    return row_stats(X, centre=method == "correlation")


def _rdm_into(X: Tensor, stats: RowStats | SquaredNorms | CrossTerms, square: bool, result: Tensor | None,
              block: int | None, device, progress: bool) -> Tensor:
    """The RDM of one (N, D) matrix with its ``stats``, into ``result`` (a condensed buffer) or a new tensor in
    the compute dtype."""
    device = device if device is not None else X.device
    dtype = compute_dtype(X)
    n = X.shape[0]
    if result is None:
        result = torch.empty((n, n) if square else (condensed_length(n),), dtype=dtype, device=device)
    rdm_tiles.fill_rdm(X, result, stats, dtype, block or default_block(n, device), device, progress)
    return result


def _rdms_to_file(rows: list[tuple[Tensor, Any]], path: Path, block: int | None, device, progress: bool,
                  dtype: Any, is_set: bool) -> Path:
    from numpy.lib.format import open_memmap

    torch_dtype = result_dtype(dtype) if dtype is not None else \
        (torch.float64 if any(compute_dtype(m) == torch.float64 for m, _ in rows) else torch.float32)
    np_dtype = np.float64 if torch_dtype == torch.float64 else np.float32
    length = condensed_length(rows[0][0].shape[0])
    with atomic_path(path) as tmp:
        mm = open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(len(rows), length) if is_set else (length,))
        targets = mm if is_set else mm[None]
        for s, (m, stats) in enumerate(rows):
            _rdm_into(m, stats, False, torch.from_numpy(targets[s]), block, device, progress)
        mm.flush()
        del mm, targets
    return path
