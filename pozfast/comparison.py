"""Comparing two RDMs over their upper triangles: Pearson, R^2, Spearman, Kendall's tau-a, cosine."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.rows import as_condensed, n_items

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


def pearson_from_moments(m: Tensor) -> float:
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
        from scipy.stats import spearmanr

        value = float(spearmanr(xs, ys).statistic)
    elif method == "kendall_tau_a":
        value = _tau_a(xs, ys)
    else:
        denom = float(np.linalg.norm(xs) * np.linalg.norm(ys))
        value = float(xs @ ys / denom) if denom > 0 else float("nan")
    return Comparison(value, n, method)
