"""Rank statistics of float64 vectors: average ranks with ties, Spearman's rho, Kendall's tau-a.

Public functions -> the ``pozfast._C`` kernels (csrc/ranks_cpu.cpp: a parallel radix argsort, and Knight's
algorithm with an MSD radix inversion count) when the native CPU backend is selected
(:func:`pozfast.backends.select`), plain numpy and scipy otherwise (the reference). Both give the same
numbers: ranks exactly, rho and tau-a to rounding. The native kernels run on ``torch.get_num_threads()``
threads and take vectors of fewer than 2^31 entries (longer ones take the numpy path).

Vectors must be NaN-free (a comparison drops NaN pairs first); -0.0 and 0.0 are tied, inf ranks last.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from pozfast._native import native
from pozfast.backends import select

_SUPPORTED = ("cpu-native", "torch")
_NATIVE_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Ranking:
    """A vector's ranks, computed once and reused by every comparison with it.

    ``order`` is the stable ascending order (integers); ``ranks2`` is twice the average rank of each entry
    (integers: ties get the mean of the ranks they span, as ``scipy.stats.rankdata``); ``tie_pairs`` is the
    number of pairs of tied entries and ``groups`` the number of distinct values.
    """

    order: np.ndarray
    ranks2: np.ndarray
    tie_pairs: int
    groups: int

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def ranks(self) -> np.ndarray:
        """float64 average ranks, 1-based (``scipy.stats.rankdata(x)``)."""
        return self.ranks2 * 0.5

    def centred(self) -> np.ndarray:
        """float64 ranks minus their mean (n + 1) / 2: exact (half-integers)."""
        return (self.ranks2.astype(np.float64) - (self.n + 1)) * 0.5


def vector(x, name: str = "x") -> np.ndarray:
    """x as a contiguous 1-D float64 numpy array without NaN."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN; drop the NaN pairs before ranking")
    return a


def _native_ok(n: int) -> bool:
    return n <= _NATIVE_MAX and select("ranks", torch.device("cpu"), _SUPPORTED, host_step=True) == "cpu-native"


def rank(x) -> Ranking:
    """The :class:`Ranking` of a 1-D NaN-free vector."""
    x = vector(x)
    n = len(x)
    if _native_ok(n):
        order = np.empty(n, np.uint32)
        ranks2 = np.empty(n, np.uint32)
        groups, tie_pairs = native().rank_cpu(x.ctypes.data, n, order.ctypes.data, ranks2.ctypes.data,
                                              torch.get_num_threads())
        return Ranking(order, ranks2, int(tie_pairs), int(groups))
    return _rank_reference(x)


def _rank_reference(x: np.ndarray) -> Ranking:
    n = len(x)
    order = np.argsort(x + 0.0, kind="stable")  # + 0.0 makes -0.0 equal to 0.0 for the sort
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    ranks2 = np.empty(n, np.int64)
    ranks2[order] = np.repeat(starts + ends + 1, ends - starts)
    sizes = ends - starts
    return Ranking(order, ranks2, int((sizes * (sizes - 1) // 2).sum()), len(starts))


def average_ranks(x) -> np.ndarray:
    """float64 average ranks, 1-based, ties averaged: ``scipy.stats.rankdata(x)``."""
    return rank(x).ranks


def spearman(x, y) -> float:
    """Spearman's rho of two NaN-free vectors of equal length (the Pearson correlation of their average
    ranks, as ``scipy.stats.spearmanr``); NaN when either is constant or shorter than 2."""
    x, y = vector(x, "x"), vector(y, "y")
    _same_length(x, y)
    n = len(x)
    if _native_ok(n):
        return float(native().spearman_cpu(x.ctypes.data, y.ctypes.data, n, torch.get_num_threads()))
    return spearman_from_rankings(_rank_reference(x), _rank_reference(y))


def spearman_from_rankings(rx: Ranking, ry: Ranking) -> float:
    """Spearman's rho from two rankings of equal length."""
    if rx.n < 2:
        return math.nan
    a, b = rx.centred(), ry.centred()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))  # no BLAS call: see rdm_sets.matmul
    return float((a * b).sum()) / denom if denom > 0 else math.nan


def kendall_tau_a(x, y) -> float:
    """Kendall's tau-a of two NaN-free vectors of equal length: (concordant - discordant) / (n(n-1)/2),
    pairs tied in either counting as neither (rsatoolbox's 'tau-a'); NaN when shorter than 2."""
    x = vector(x, "x")
    return tau_a_from_ranking(rank(x), vector(y, "y"))


def tau_a_from_ranking(rx: Ranking, y) -> float:
    """Kendall's tau-a of the vector ranked in ``rx`` and ``y``: x is ranked once for many comparisons."""
    y = vector(y, "y")
    if len(y) != rx.n:
        raise ValueError(f"x and y differ in length: {rx.n} vs {len(y)}")
    return tau_a_from_counts(*kendall_counts(rx, y))


def tau_a_from_counts(pairs: int, x_ties: int, y_ties: int, joint_ties: int, discordant: int) -> float:
    if pairs == 0:
        return math.nan
    return (pairs - x_ties - y_ties + joint_ties - 2 * discordant) / pairs  # exact integers, one rounding


def kendall_counts(rx: Ranking, y: np.ndarray) -> tuple[int, int, int, int, int]:
    """(pairs, x ties, y ties, joint ties, discordant pairs) of the vector ranked in ``rx`` and ``y``."""
    n = rx.n
    if _native_ok(n):
        order = np.ascontiguousarray(rx.order, dtype=np.uint32)
        ranks2 = np.ascontiguousarray(rx.ranks2, dtype=np.uint32)
        counts = native().kendall_counts_cpu(order.ctypes.data, ranks2.ctypes.data, y.ctypes.data, n, rx.tie_pairs,
                                             torch.get_num_threads())
        return tuple(int(v) for v in counts)
    return _kendall_counts_reference(rx, y)


def _kendall_counts_reference(rx: Ranking, y: np.ndarray) -> tuple[int, int, int, int, int]:
    """The counts from scipy's tau-b, whose concordant-minus-discordant count it scales: exact after
    rounding, as it is an integer well inside float64's range."""
    from scipy.stats import kendalltau

    n = rx.n
    pairs = n * (n - 1) // 2
    ry = _rank_reference(y)
    keys = rx.ranks2.astype(np.int64) * (2 * n + 2) + ry.ranks2  # equal exactly when tied in both
    _, counts = np.unique(keys, return_counts=True)
    joint = int((counts * (counts - 1) // 2).sum())
    if pairs == 0 or rx.tie_pairs == pairs or ry.tie_pairs == pairs:
        return pairs, rx.tie_pairs, ry.tie_pairs, joint, 0
    tau_b = kendalltau(rx.ranks2, ry.ranks2, variant="b").statistic
    con_minus_dis = round(tau_b * math.sqrt((pairs - rx.tie_pairs) * (pairs - ry.tie_pairs)))
    discordant = (pairs - rx.tie_pairs - ry.tie_pairs + joint - con_minus_dis) // 2
    return pairs, rx.tie_pairs, ry.tie_pairs, joint, discordant


def _same_length(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
