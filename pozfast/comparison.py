"""Comparing two RDMs over their upper triangles: Pearson, R^2, Spearman, Kendall's tau-a, cosine."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.interop import COMPARE_METHODS as METHODS
from pozfast.interop import as_rdm_set, canonical_method, values_out
from pozfast.ops import ranks
from pozfast.rows import n_items


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Result of an RDM comparison: ``value`` over ``n_pairs`` pairs (NaN pairs skipped)."""

    value: float
    n_pairs: int
    method: str
    path: str = "materialised"

    def __float__(self) -> float:
        return self.value


def pearson_from_moments(m: Tensor) -> float:
    n, sx, sy, sxx, syy, sxy = (float(v) for v in m)
    if n < 2:
        return float("nan")
    cov = n * sxy - sx * sy
    var = (n * sxx - sx * sx) * (n * syy - sy * sy)
    return cov / math.sqrt(var) if var > 0 else float("nan")


def compare_rdms(a: Any, b: Any, method: str = "pearson", *, a_kind: str = "dissimilarity",
                 b_kind: str = "dissimilarity", dtype: Any = None) -> Any:
    """Compare two RDMs (or two sets of RDMs) over their upper triangles, skipping pairs NaN in either.

    Args:
        a, b: one RDM each (a condensed vector (P,) or (1, P), or a square symmetric matrix; numpy, torch,
            DataFrame, a one-RDM :class:`pozfast.StoredRDMs`), or sets of RDMs ((S, P) or (S, N, N) stacks,
            lists, rsatoolbox ``RDMs`` objects); same N. NaN marks a missing pair (skipped), inf is an error.
        method: ``"pearson"`` (rsatoolbox ``"corr"``); ``"r2"`` (the squared Pearson correlation);
            ``"spearman"`` (Pearson of ranks, ties averaged, as scipy.stats.spearmanr: the second-order
            isomorphism measure); ``"kendall_tau_a"`` (rsatoolbox ``"tau-a"``: (concordant - discordant) /
            all pairs); ``"cosine"`` (cosine of the two dissimilarity vectors, as rsatoolbox's).
        a_kind, b_kind: ``"dissimilarity"`` or ``"similarity"`` (turned into ``1 - s``). A square matrix with
            a unit diagonal given as dissimilarities is an error: it is a similarity matrix.
        dtype: floating dtype of a set comparison's matrix (default float64).
    Returns:
        For two single RDMs, a :class:`Comparison`. When either is a set (rsatoolbox ``RDMs`` always are),
        the (n_a, n_b) matrix of values, as ``rsatoolbox.rdm.compare``: in a's form (torch on its device,
        else numpy), NaN pairs skipped per pair of RDMs.
    """
    method = canonical_method(method, "compare")
    A, fa = as_rdm_set(a, "a", kind=a_kind, kind_arg="a_kind")
    B, fb = as_rdm_set(b, "b", kind=b_kind, kind_arg="b_kind")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"a and b are RDMs of different N: {n_items(A.shape[1])} vs {n_items(B.shape[1])} items")
    if not (fa.is_set or fb.is_set):
        return _compare_pair(A[0], B[0], method)
    return values_out(_compare_sets(A, B, method), fa, dtype=dtype)


def _compare_sets(A: Tensor, B: Tensor, method: str) -> Tensor:
    """(n_A, n_B) float64 values for every pair of condensed RDMs (A: (n_A, P), B: (n_B, P)), each RDM ranked
    once, with rsatoolbox's rule for NaN: a pair NaN in any RDM of either set is left out of all."""
    from pozfast.rdm_sets import compare_rdm_sets  # it builds on this module

    return torch.from_numpy(compare_rdm_sets(A.cpu(), B.cpu(), method))


def _compare_pair(x: Tensor, y: Tensor, method: str) -> Comparison:
    """One comparison of two condensed float64 RDMs of the same length."""
    y = y.to(x.device if x.is_cuda else y.device)  # one device: a GPU's, when either RDM is there
    x = x.to(y.device)
    keep = ~(torch.isnan(x) | torch.isnan(y))
    x, y = x[keep], y[keep]
    n = int(x.numel())
    if method in ("pearson", "r2"):
        m = torch.stack([x.new_tensor(float(n)), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])
        r = pearson_from_moments(m.cpu()) if n else float("nan")
        return Comparison(r * r if method == "r2" else r, n, method)
    if n < 2:
        return Comparison(float("nan"), n, method)
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    if method == "spearman":
        value = ranks.spearman(xs, ys)
    elif method == "kendall_tau_a":
        value = ranks.kendall_tau_a(xs, ys)
    else:
        denom = float(np.linalg.norm(xs) * np.linalg.norm(ys))
        value = float(xs @ ys / denom) if denom > 0 else float("nan")
    return Comparison(value, n, method)
