"""How alike the RDMs of two feature sets (or of features and a given RDM) are, without an N x N matrix:
an exact identity in feature space, or streamed tiles of the upper triangle."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pozfast.comparison import Comparison, pearson_from_moments
from pozfast.distributed import all_reduce_sum, world
from pozfast.interop import (as_rdm_set, canonical_method, is_rdm_object, looks_like_similarity_matrix,
                             one_feature_matrix)
from pozfast.ops import rdm_tiles
from pozfast.rows import as_tensor, compute_dtype, n_items, row_chunks, row_stats
from pozfast.validate import optional_positive_int


def _is_rdm_like(Y: Tensor, n: int) -> bool:
    if Y.dim() == 1:
        return True
    return (Y.shape == (n, n) and bool(torch.allclose(Y, Y.T, equal_nan=True))
            and bool((Y.diagonal().nan_to_num() == 0).all()))


def rdm_similarity(X: Any, Y: Any, method: str = "pearson", *, y_kind: str = "auto", path: str = "auto",
                   block: int | None = None, progress: bool = False) -> Comparison:
    """Pearson (or ``"r2"``) between the RDM of X and the RDM of Y without materialising either.

    Args:
        X: (N, D_A) features, finite (numpy, torch, DataFrame, rsatoolbox Dataset).
        Y: (N, D_B) features, finite, or an RDM of the same N items (condensed vector, square dissimilarity
            matrix, one-RDM rsatoolbox ``RDMs`` or :class:`pozfast.StoredRDMs`; NaN pairs skipped, inf is an
            error), or a square similarity matrix (``y_kind="similarity"``: used as ``1 - s``).
        method: ``"pearson"`` (rsatoolbox ``"corr"``) or ``"r2"``.
        y_kind: ``"features"``, ``"rdm"``, ``"similarity"``, or ``"auto"``: RDM objects, 1-D vectors and
            square symmetric matrices with a zero diagonal are RDMs, anything else features, except a square
            symmetric matrix with a unit diagonal, which is an error (a similarity matrix: say
            ``"similarity"``, or ``"features"`` if it really holds features).
        path: ``"features"`` (both features only: the exact feature-space identity, O(N (D_A + D_B)^2)
            time and O((D_A + D_B)^2) memory, no N^2 term), ``"tiled"`` (O(N^2 (D_A + D_B)) time, memory
            bounded by tiles), or ``"auto"``: the feature path when D_A + D_B < N / 2.
        block: tile size of the tiled path, a positive int (default as for :func:`rdm`).
    Returns:
        A :class:`Comparison`; ``.path`` says which path ran. Pairs with a zero-variance row (in X or Y)
        are skipped.
    """
    method = canonical_method(method, "compare")
    if method not in ("pearson", "r2"):
        raise ValueError(f"method must be 'pearson' or 'r2', got {method!r}")
    if y_kind not in ("auto", "features", "rdm", "similarity"):
        raise ValueError(f"y_kind must be 'auto', 'features', 'rdm' or 'similarity', got {y_kind!r}")
    if path not in ("auto", "features", "tiled"):
        raise ValueError(f"path must be 'auto', 'features' or 'tiled', got {path!r}")
    block = optional_positive_int(block, "block")
    X = one_feature_matrix(X, "X")
    n = X.shape[0]
    if y_kind == "auto" and is_rdm_object(Y):
        y_kind = "rdm"
    Yt = None if is_rdm_object(Y) or y_kind == "features" else as_tensor(Y, "Y")
    if y_kind == "auto":
        if looks_like_similarity_matrix(Yt):
            raise ValueError("Y is a square symmetric matrix with a unit diagonal: a similarity matrix, not features "
                             "or dissimilarities; pass y_kind='similarity' to compare with it as similarities "
                             "(1 - s), or y_kind='features' if its rows really are features")
        y_kind = "rdm" if _is_rdm_like(Yt, n) else "features"
    if y_kind in ("rdm", "similarity"):
        if path == "features":
            raise ValueError("path='features' needs Y as features, but Y is an RDM")
        refs, _ = as_rdm_set(Y if Yt is None else Yt, "Y", kind="similarity" if y_kind == "similarity" else
                             "dissimilarity", kind_arg="y_kind")
        if refs.shape[0] != 1:
            raise ValueError(f"Y holds {refs.shape[0]} RDMs; rdm_similarity compares with one")
        ref = refs[0]
        if n_items(ref.numel(), "Y") != n:
            raise ValueError(f"X has {n} items but the RDM Y has {n_items(ref.numel(), 'Y')}")
        device = X.device if X.is_cuda or not ref.is_cuda else ref.device  # a GPU's, when either input is there
        m = _tiled_moments(X.to(device), None, ref.to(device), block, progress)
        chosen = "tiled"
    else:
        Yf = one_feature_matrix(Y if Yt is None else Yt, "Y")
        if Yf.shape[0] != n:
            raise ValueError(f"X and Y must have the same number of items (rows): {n} vs {Yf.shape[0]}")
        device = X.device if X.is_cuda or not Yf.is_cuda else Yf.device
        X, Yf = X.to(device), Yf.to(device)
        chosen = path if path != "auto" else ("features" if X.shape[1] + Yf.shape[1] < n / 2 else "tiled")
        m = _feature_moments(X, Yf) if chosen == "features" else _tiled_moments(X, Yf, None, block, progress)
    r = pearson_from_moments(m)
    return Comparison(r * r if method == "r2" else r, int(m[0]), method, chosen)


def _feature_moments(X: Tensor, Y: Tensor) -> Tensor:
    """Pair moments of x = 1 - r^X and y = 1 - r^Y from D x D Gram sums, without any N x N term.

    With z the centred, unit-norm rows: sum_{i<j} r_ij = (|sum_i z_i|^2 - n) / 2,
    sum_{i<j} r_ij^2 = (|Z^T Z|_F^2 - n) / 2, sum_{i<j} r^X_ij r^Y_ij = (|Z_X^T Z_Y|_F^2 - n) / 2.
    """
    sx, sy = row_stats(X), row_stats(Y, name="Y")
    good = ~(sx.bad | sy.bad)
    rank, size = world()
    dx, dy = X.shape[1], Y.shape[1]
    dev = X.device
    gxx = torch.zeros(dx, dx, dtype=torch.float64, device=dev)
    gyy = torch.zeros(dy, dy, dtype=torch.float64, device=dev)
    gxy = torch.zeros(dx, dy, dtype=torch.float64, device=dev)
    ux = torch.zeros(dx, dtype=torch.float64, device=dev)
    uy = torch.zeros(dy, dtype=torch.float64, device=dev)
    for lo, hi in row_chunks(X.shape[0], dx + dy, min_rows=256)[rank::size]:
        keep = good[lo:hi, None]  # rows left out are zeroed: they add nothing to any sum
        zx = sx.normalised(X, lo, hi, torch.float64, dev).mul_(keep)
        zy = sy.normalised(Y, lo, hi, torch.float64, dev).mul_(keep)
        gxx += zx.T @ zx
        gyy += zy.T @ zy
        gxy += zx.T @ zy
        ux += zx.sum(0)
        uy += zy.sum(0)
    flat = all_reduce_sum(torch.cat([gxx.flatten(), gyy.flatten(), gxy.flatten(), ux, uy])).cpu()
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
    dtype = compute_dtype(X) if Y is None else torch.promote_types(compute_dtype(X), compute_dtype(Y))
    sy = row_stats(Y, name="Y") if Y is not None else None
    return rdm_tiles.similarity_moments(X, Y, ref, row_stats(X), sy, dtype, block, progress)
