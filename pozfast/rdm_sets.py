"""Sets of RDMs: every comparison between two sets, as
``rsatoolbox.rdm.compare`` computes them, with each RDM ranked once.

A set is a float64 (n, P) stack of condensed RDMs (P = N(N-1)/2 pairs, scipy ``squareform`` order).
Missing pairs follow rsatoolbox: a pair that is NaN in any RDM of either set is dropped from all of them,
so every comparison in the matrix runs over the same pairs (rsatoolbox refuses two sets whose NaN pairs
differ; here the union is dropped, which for a single pair of RDMs is :func:`pozfast.compare_rdms`'s rule).
A comparison with a constant RDM (zero norm, or zero variance for Pearson and Spearman) is NaN, as in
:func:`pozfast.compare_rdms` and scipy; rsatoolbox reports 0 there.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.comparison import METHODS
from pozfast.ops import ranks
from pozfast.rows import as_condensed, as_tensor, n_items

LINEAR_METHODS = ("pearson", "r2", "spearman", "cosine")  # an inner product of prepared rows


def as_rdm_stack(rdms: Any, name: str = "rdms", kind: str = "dissimilarity") -> np.ndarray:
    """A C-contiguous float64 (n, P) stack of condensed dissimilarities (a view of float64 input).

    ``rdms``: a condensed vector (one RDM), an (n, P) stack of condensed vectors, or an (n, N, N) stack of
    symmetric square matrices; tensors or numpy arrays. ``kind="similarity"`` turns s into 1 - s. NaN marks
    a missing pair; inf is refused. The checks are those of :func:`pozfast.rows.as_condensed`, row by row.
    """
    t = as_tensor(rdms, name)
    if t.dim() == 3:
        if t.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one RDM, got shape {tuple(t.shape)}")
        return torch.stack([as_condensed(t[i], f"{name}[{i}]", kind) for i in range(t.shape[0])]).numpy()
    if t.dim() not in (1, 2) or t.shape[0] == 0:
        raise ValueError(f"{name} must be a condensed vector, an (n, P) stack of condensed vectors or an "
                         f"(n, N, N) stack of square matrices, got shape {tuple(t.shape)}")
    if kind not in ("dissimilarity", "similarity"):
        raise ValueError(f"{name} kind must be 'dissimilarity' or 'similarity', got {kind!r}")
    stack = t.reshape(1, -1) if t.dim() == 1 else t
    if stack.shape[0] == stack.shape[1] > 1 and _looks_square(stack):
        raise ValueError(f"{name} is a symmetric {tuple(t.shape)} matrix with a zero diagonal: one RDM in square "
                         f"form, but a 2-D {name} is read as a stack of condensed RDMs; pass it as {name}[None] "
                         f"(a stack of one square matrix) or in condensed form")
    n_items(stack.shape[1], name)
    stack = stack.to(device="cpu", dtype=torch.float64).contiguous()
    if bool(torch.isinf(stack).any()):
        raise ValueError(f"{name} contains inf; RDM entries must be finite, or NaN for a missing pair")
    return (1 - stack if kind == "similarity" else stack).numpy()


def _looks_square(m: Tensor) -> bool:
    d = m.double()
    return bool((d.diagonal().nan_to_num() == 0).all()) and bool(torch.allclose(d, d.T, equal_nan=True))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


class PreparedSet:
    """A NaN-free (n, P) float64 stack of RDMs prepared once for comparisons by one method.

    For the linear methods ``unit`` holds unit-norm rows whose inner products are the comparisons
    (centred values for Pearson and R^2, centred ranks for Spearman, the values for cosine); rows with no
    spread are NaN. ``rankings`` holds each RDM's ranking (Spearman and tau-a), made when first needed:
    the other side of a tau-a comparison needs only its values.
    """

    def __init__(self, values: np.ndarray, method: str):
        self.values, self.method = values, method
        self.unit = None if method == "kendall_tau_a" else unit_rows(self._rows())

    def __len__(self) -> int:
        return self.values.shape[0]

    @functools.cached_property
    def rankings(self) -> tuple[ranks.Ranking, ...]:
        return tuple(ranks.rank(v) for v in self.values)

    def _rows(self) -> np.ndarray:
        if self.method == "spearman":  # doubled centred ranks: the scale goes with the normalisation
            rows = np.empty(self.values.shape)
            for row, ranking in zip(rows, self.rankings):
                row[:] = ranking.ranks2  # unsigned: converted before the subtraction
                row -= ranking.n + 1
            return rows
        if self.method in ("pearson", "r2"):
            return self.values - self.values.mean(axis=1, keepdims=True)
        return self.values.copy()


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """rows / their norms, in place; rows of zero norm become NaN."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows /= np.where(norms > 0, norms, np.nan)
    return rows


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for float64 numpy arrays, on torch's threads: numpy's BLAS keeps a thread pool of its own,
    which on a busy machine costs more to wake than these products take."""
    return (torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))).numpy()


def compare_prepared(a: PreparedSet, b: PreparedSet) -> np.ndarray:
    """The (len(a), len(b)) comparisons of two sets prepared for the same method."""
    if a.method in LINEAR_METHODS:
        sims = matmul(a.unit, b.unit.T)
        np.clip(sims, -1.0, 1.0, out=sims)
        return sims * sims if a.method == "r2" else sims
    out = np.empty((len(a), len(b)))
    for i, ranking in enumerate(a.rankings):
        for j, v in enumerate(b.values):
            out[i, j] = ranks.tau_a_from_ranking(ranking, v)
    return out


def kept_pairs(*stacks: np.ndarray) -> np.ndarray:
    """bool (P,): the pairs that are NaN in no RDM of any stack."""
    keep = np.ones(stacks[0].shape[1], dtype=bool)
    for s in stacks:
        keep &= ~np.isnan(s).any(axis=0)
    return keep


def drop_missing(*stacks: np.ndarray) -> tuple[np.ndarray, ...]:
    """The stacks restricted to the pairs NaN in none of them (rsatoolbox's rule), C-contiguous."""
    keep = kept_pairs(*stacks)
    if keep.all():
        return stacks
    return tuple(np.ascontiguousarray(s[:, keep]) for s in stacks)


def compare_rdm_sets(a: Any, b: Any, method: str = "pearson", *, a_kind: str = "dissimilarity",
                     b_kind: str = "dissimilarity") -> np.ndarray:
    """Every comparison between two sets of RDMs: the (n_A, n_B) matrix of ``rsatoolbox.rdm.compare``.

    Args:
        a, b: sets of RDMs of the same N items (see :func:`as_rdm_stack`: a condensed vector, an (n, P)
            stack of condensed vectors or an (n, N, N) stack of square matrices).
        method: ``"pearson"``, ``"r2"`` (squared Pearson), ``"spearman"``, ``"kendall_tau_a"`` or
            ``"cosine"`` (see :func:`pozfast.compare_rdms`). Each RDM is ranked once for the rank methods.
        a_kind, b_kind: ``"dissimilarity"`` or ``"similarity"`` (turned into 1 - s).
    Returns:
        float64 (n_A, n_B) numpy array. A pair NaN in any RDM is dropped from all; NaN where an RDM is
        constant over the kept pairs (for tau-a only where fewer than 2 pairs are kept).
    """
    check_method(method)
    va, vb = as_rdm_stack(a, "a", a_kind), as_rdm_stack(b, "b", b_kind)
    if va.shape[1] != vb.shape[1]:
        raise ValueError(f"a and b are RDMs of different N: {n_items(va.shape[1], 'a')} vs "
                         f"{n_items(vb.shape[1], 'b')} items")
    same = a is b and a_kind == b_kind  # one set against itself: prepared once
    va, vb = drop_missing(va, vb)
    if method == "kendall_tau_a" and len(vb) < len(va):  # tau-a is symmetric: rank the smaller set
        return compare_prepared(PreparedSet(vb, method), PreparedSet(va, method)).T.copy()
    prepared = PreparedSet(va, method)
    return compare_prepared(prepared, prepared if same else PreparedSet(vb, method))
