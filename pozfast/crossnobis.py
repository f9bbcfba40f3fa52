"""Crossnobis RDMs: cross-validated Mahalanobis distances between conditions, as rsatoolbox's
``calc_rdm_crossnobis`` defines them, computed blockwise with one GEMM per tile.

Definition (rsatoolbox's): observations carry a condition and a fold (run, session). For each fold f, u_f are
the condition means of the observations outside f (training) and v_f those inside f (test), and

    d_ij = mean_f (u_f,i - u_f,j)^T L (v_f,i - v_f,j) / D

with L the noise precision (D x D; identity by default, which gives a cross-validated squared Euclidean
distance over D). With a list of per-fold precisions L_f (the precision of each fold's means), the terms are
the fold pairs f < g instead: (m_f,i - m_f,j)^T L_fg (m_g,i - m_g,j) / D with m the fold's condition means and
L_fg = ((L_f^-1 + L_g^-1) / 2)^-1. Crossnobis distances are unbiased, so they can be negative.

How it is computed: with a_t = u_t L_t / (T D) and b_t = v_t for the T terms, and k = A B^T (the terms side
by side), d_ij = k_ii + k_jj - k_ij - k_ji. The rows p_i = [a_i, b_i] and q_j = [b_j, a_j] give
p_i . q_j = k_ij + k_ji, so a tile is one GEMM of p rows by q rows and k_ii is a row statistic. Observations
are centred on their overall mean first (the distances do not change; the products stop cancelling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.interop import Form, as_feature_set, is_dataset
from pozfast.rows import as_tensor, compute_dtype, row_chunks


@dataclasses.dataclass(frozen=True)
class CrossTerms:
    """What crossnobis tiles need of the rows P = [A, B]: the width of A and k_ii = a_i . b_i."""

    half: int  # columns of A
    diag: Tensor  # float64 [N]: k_ii from the rows as the compute dtype holds them

    def normalised(self, P: Tensor, lo: int, hi: int, dtype: torch.dtype, device) -> Tensor:
        """p rows lo:hi: [a, b]."""
        return P[lo:hi].to(device=device, dtype=dtype)

    def partner(self, P: Tensor, lo: int, hi: int, dtype: torch.dtype, device) -> Tensor:
        """q rows lo:hi: [b, a]."""
        rows = P[lo:hi].to(device=device, dtype=dtype)
        return torch.cat([rows[:, self.half:], rows[:, :self.half]], dim=1)

    def distances(self, tile: Tensor, i0: int, j0: int) -> Tensor:
        """float64 crossnobis distances of a tile from its p.q block (rows i0.., columns j0..); not clamped."""
        k = self.diag.to(tile.device)
        rows, cols = tile.shape
        return tile.double().neg_().add_(k[i0:i0 + rows, None]).add_(k[None, j0:j0 + cols])


def crossnobis_rows(obs: Tensor, conditions: np.ndarray, folds: np.ndarray, noise: Any,
                    name: str = "X") -> tuple[Tensor, CrossTerms]:
    """The rows P (one per condition, conditions in sorted order) and their :class:`CrossTerms` for the
    (n_obs, D) observations ``obs`` with per-observation ``conditions`` and ``folds`` labels."""
    n_obs, d = obs.shape
    device, dtype = obs.device, compute_dtype(obs)
    conds, cond_of = np.unique(conditions, return_inverse=True)
    fold_values, fold_of = np.unique(folds, return_inverse=True)
    n_cond, n_fold = len(conds), len(fold_values)
    if n_cond < 2:
        raise ValueError(f"{name} has {n_cond} condition; an RDM needs at least 2")
    if n_fold < 2:
        raise ValueError(f"crossnobis needs at least 2 folds (values of the cv descriptor), {name} has "
                         f"{n_fold}: {fold_values.tolist()!r}")
    counts = np.zeros((n_fold, n_cond), dtype=np.int64)
    np.add.at(counts, (fold_of.reshape(-1), cond_of.reshape(-1)), 1)
    missing = np.argwhere(counts == 0)
    if len(missing):
        f, c = missing[0]
        raise ValueError(f"condition {conds[c].item()!r} has no observation in fold {fold_values[f].item()!r} "
                         f"({len(missing)} (fold, condition) cells are empty); crossnobis needs every condition in "
                         f"every fold")
    precisions = _precisions(noise, d, n_fold, device)
    # Sums per (fold, condition) in float64, over observations centred on their mean (no float64 copy of obs).
    slot = torch.as_tensor(fold_of.reshape(-1) * n_cond + cond_of.reshape(-1), device=device)
    chunks = row_chunks(n_obs, d)
    centre = sum(obs[lo:hi].double().sum(0) for lo, hi in chunks) / n_obs
    if not bool(torch.isfinite(centre).all()):  # any NaN or inf reaches the column sums
        raise ValueError(f"{name} contains NaN or inf; RDMs need finite features")
    sums = torch.zeros(n_fold * n_cond, d, dtype=torch.float64, device=device)
    for lo, hi in chunks:
        sums.index_add_(0, slot[lo:hi], obs[lo:hi].double() - centre)
    sums = sums.view(n_fold, n_cond, d)
    n = torch.as_tensor(counts, dtype=torch.float64, device=device)[..., None]
    if isinstance(precisions, Tensor):  # one precision: leave-one-fold-out
        total, n_total = sums.sum(0), n.sum(0)
        terms = [((total - sums[f]) / (n_total - n[f]), sums[f] / n[f]) for f in range(n_fold)]
        left = [u @ precisions for u, _ in terms] if precisions.numel() else [u for u, _ in terms]
        right = [v for _, v in terms]
    else:  # per-fold precisions: every pair of folds
        means = sums / n
        covariances = [torch.linalg.inv(p) for p in precisions]
        pairs = [(f, g) for f in range(n_fold) for g in range(f + 1, n_fold)]
        left = [means[f] @ torch.linalg.inv((covariances[f] + covariances[g]) / 2) for f, g in pairs]
        right = [means[g] for _, g in pairs]
    scale = 1.0 / (len(left) * d)
    a = torch.cat(left, dim=1).mul_(scale)
    b = torch.cat(right, dim=1)
    P = torch.cat([a, b], dim=1).to(dtype)
    half = a.shape[1]
    diag = torch.linalg.vecdot(P[:, :half].double(), P[:, half:].double())
    return P, CrossTerms(half, diag)


def _precisions(noise: Any, d: int, n_fold: int, device) -> Tensor | list[Tensor]:
    """One (D, D) float64 precision (empty for the identity), or a list of one per fold."""
    if noise is None:
        return torch.empty(0, dtype=torch.float64, device=device)
    if isinstance(noise, (list, tuple)):
        if len(noise) != n_fold:
            raise ValueError(f"noise as a list holds one precision matrix per fold: {n_fold} folds, got "
                             f"{len(noise)} matrices")
        return [_precision(p, d, f"noise[{i}]", device) for i, p in enumerate(noise)]
    return _precision(noise, d, "noise", device)


def _precision(p: Any, d: int, name: str, device) -> Tensor:
    t = as_tensor(p, name)
    if tuple(t.shape) != (d, d):
        raise ValueError(f"{name} must be a ({d}, {d}) noise precision matrix (channels x channels), got shape "
                         f"{tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def default_folds(conditions: np.ndarray, name: str = "X") -> np.ndarray:
    """rsatoolbox's default cv descriptor: the k-th observation of each condition is in fold k; every
    condition must have the same number of observations."""
    conds, cond_of, counts = np.unique(conditions, return_inverse=True, return_counts=True)
    if not np.all(counts == counts[0]):
        raise ValueError(f"{name}: conditions have different numbers of observations ({counts.min()} to "
                         f"{counts.max()}), so folds cannot be inferred; pass cv_descriptor")
    folds = np.zeros(len(cond_of), dtype=np.int64)
    for c in range(len(conds)):
        where = np.flatnonzero(cond_of.reshape(-1) == c)
        folds[where] = np.arange(len(where))
    return folds


def crossnobis_inputs(X: Any, descriptor: Any, cv_descriptor: Any, noise: Any,
                      name: str = "X") -> tuple[list[tuple[Tensor, CrossTerms]], Form]:
    """Rows and terms of each crossnobis RDM of X, and the caller's Form (conditions as labels).

    X: observations (n_obs, D) in any form :func:`pozfast.interop.as_feature_set` takes, or a set. With
    rsatoolbox Datasets, ``descriptor`` and ``cv_descriptor`` name obs descriptors; with arrays they are
    the labels themselves, one per observation (shared by the members of a set).
    """
    if descriptor is None:
        raise ValueError("method='crossnobis' needs descriptor=: the condition of each observation (an obs "
                         "descriptor's name for rsatoolbox Datasets, else one label per row of X)")
    datasets = isinstance(descriptor, str)
    if datasets:
        _, form = as_feature_set(X, name, descriptor=descriptor)  # checks the Datasets, makes the Form
        members = [X] if not form.is_set else list(X)
        observations = [as_feature_set(ds, name)[0][0] for ds in members]
        labelled = [_dataset_labels(ds, descriptor, cv_descriptor, name) for ds in members]
        # the RDMs' descriptors, as rsatoolbox's calc_rdm_crossnobis records them
        recorded = {"noise": np.eye(observations[0].shape[1]) if noise is None else noise,
                    "cv_descriptor": cv_descriptor if isinstance(cv_descriptor, str) else "cv_desc"}
        form = dataclasses.replace(form, rsa=tuple({**info, "descriptors": {**info["descriptors"], **recorded}}
                                                   for info in form.rsa))
    else:
        observations, form = as_feature_set(X, name)
        if any(is_dataset(m) for m in ([X] if not form.is_set else list(X))):
            raise TypeError("with rsatoolbox Datasets, descriptor= and cv_descriptor= name obs descriptors")
        conditions = _labels(descriptor, observations[0].shape[0], "descriptor")
        folds = default_folds(conditions, name) if cv_descriptor is None else \
            _labels(cv_descriptor, observations[0].shape[0], "cv_descriptor")
        labelled = [(conditions, folds)] * len(observations)
        form = dataclasses.replace(form, labels=np.unique(conditions).tolist())
    out = [crossnobis_rows(obs, conds, folds, noise, name) for obs, (conds, folds) in zip(observations, labelled)]
    return out, form


def _dataset_labels(ds: Any, descriptor: str, cv_descriptor: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    obs = ds.obs_descriptors
    conditions = np.asarray(obs[descriptor])
    if cv_descriptor is None:
        return conditions, default_folds(conditions, name)
    if not isinstance(cv_descriptor, str):
        raise TypeError(f"with rsatoolbox Datasets, cv_descriptor names an obs descriptor, got "
                        f"{type(cv_descriptor).__name__}")
    if cv_descriptor not in obs:
        raise KeyError(f"cv_descriptor {cv_descriptor!r} is not an obs descriptor of {name}; it has {sorted(obs)!r}")
    return conditions, np.asarray(obs[cv_descriptor])


def _labels(values: Any, n_obs: int, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, Tensor)):
        raise TypeError(f"{name} must be one label per observation (a sequence or array), got "
                        f"{type(values).__name__}")
    labels = values.cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if labels.shape != (n_obs,):
        raise ValueError(f"{name} must hold one label per observation: {n_obs}, got shape {labels.shape}")
    return labels
