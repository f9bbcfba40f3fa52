"""PoZ-ordered feature insertion and removal curves: how the RDM of a growing feature subset compares with
a reference RDM (the full-feature RDM, or e.g. human similarity judgments) at every step."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.comparison import compare_rdms, pearson_from_moments
from pozfast.interop import as_rdm_set, one_feature_matrix
from pozfast.ops import rdm_tiles
from pozfast.plotting import pyplot, save_figure
from pozfast.rdms import rdm
from pozfast.rows import ZeroVarianceWarning, as_tensor, compute_dtype, constant, n_items, row_chunks, row_stats
from pozfast.validate import optional_positive_int, positive_int


_RANK_DECIMALS = 10  # the Spearman curve's partial RDMs are rounded to this many decimals


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
        plt = pyplot()
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
        return save_figure(fig, path)


def _poz_vector(poz: Any, d: int) -> np.ndarray:
    if hasattr(poz, "apoz"):
        poz = poz.apoz
    p = as_tensor(poz, "poz").double().cpu()
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
        X: (N, D) features, finite (e.g. a layer's activations over N items): numpy, torch, DataFrame or an
            rsatoolbox Dataset.
        poz: per-feature PoZ, finite, [D] (an array, or a LayerAPoZ from an APoZ report).
        order: ``"low_to_high"`` or ``"high_to_low"`` PoZ (ties keep feature order). A removal curve
            ("remove high to low PoZ") is the insertion curve ``low_to_high`` read from the end.
        steps: number of steps, a positive int; step s holds round(s * D / steps) features.
        reference: an RDM of the same N items (condensed or square dissimilarities, a one-RDM rsatoolbox
            ``RDMs`` or :class:`pozfast.StoredRDMs`; NaN pairs skipped, inf is an error), e.g. human
            similarity judgments; default the full-feature RDM of X.
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
    X = one_feature_matrix(X, "X")
    n, d = X.shape
    p = _poz_vector(poz, d)
    perm = torch.from_numpy(np.argsort(p if order == "low_to_high" else -p, kind="stable"))
    counts = _step_counts(d, steps)
    ref = None
    if reference is not None:
        refs, _ = as_rdm_set(reference, "reference")
        if refs.shape[0] != 1:
            raise ValueError(f"reference holds {refs.shape[0]} RDMs; an insertion curve compares with one")
        ref = refs[0]
        if n_items(ref.numel(), "reference") != n:
            raise ValueError(f"X has {n} items but the reference RDM has {n_items(ref.numel(), 'reference')}")
    ref_name = "given RDM" if ref is not None else "full-feature RDM"
    if method == "spearman":
        values, pairs = _spearman_curve(X[:, perm], counts, ref if ref is not None else rdm(X).double(), progress)
    else:
        moments = _pearson_curve(X, perm, counts, ref, block, progress)
        values, pairs = [], []
        for m in moments:
            r = pearson_from_moments(m)
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
    dtype = compute_dtype(X)
    dev = X.device
    stats = row_stats(X, warn=ref is None)
    # Work on the rows normalised over all features, in insertion order: Pearson over every feature prefix
    # is unchanged (a per-row shift and scale), the one-pass formula stops cancelling and nothing overflows.
    Z = torch.empty((n, d), dtype=dtype, device=dev)
    bounds = [0, *counts]
    k = torch.tensor(counts, dtype=torch.float64, device=dev)[:, None]
    s_steps = torch.empty(len(counts), n, dtype=torch.float64, device=dev)  # [step, row]: running row sums
    q_steps = torch.empty(len(counts), n, dtype=torch.float64, device=dev)  # and sums of squares
    perm = perm.to(dev)
    for lo, hi in row_chunks(n, d):
        rows = stats.scaled(X, lo, hi, dev)[:, perm]
        sq = _prefix_sums((rows * stats.inv_norm[lo:hi, None].to(dev)) ** 2, bounds)  # in z's units
        z = stats.normalise(rows, lo, hi)
        Z[lo:hi] = z
        s, q = _prefix_sums(z, bounds), _prefix_sums(z * z, bounds)
        # A prefix that is constant up to rounding has no pairs at that step: zero sums give v = 0, skipped.
        flat = constant(q - s * s / k, sq, dtype)
        s_steps[:, lo:hi] = s.masked_fill(flat, 0)
        q_steps[:, lo:hi] = q.masked_fill(flat, 0)
    bad = stats.bad.to(device=dev, dtype=torch.uint8)
    return rdm_tiles.curve_moments(Z, counts, s_steps, q_steps, bad, ref, block, progress)
