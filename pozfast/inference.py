"""Inference on RDM comparisons with the semantics of ``rsatoolbox.inference``: the noise ceiling
(``boot_noise_ceiling``), bootstrap evaluations of model RDMs over subjects, stimuli or both
(``eval_bootstrap_rdm``, ``eval_bootstrap_pattern``, ``eval_bootstrap``), and a permutation test of one
comparison (stimulus labels permuted, the RDM reindexed rather than rebuilt).

Data and models are sets of condensed RDMs of the same N stimuli (see :func:`pozfast.rdm_sets.as_rdm_stack`);
a pair that is NaN in any of them is dropped from all, as rsatoolbox's comparisons drop it. Comparison
methods as :func:`pozfast.compare_rdms`. Random draws come from ``numpy.random.default_rng(seed)``; the
samples drawn are returned and can be passed back (``samples=``) to replay them, for instance rsatoolbox's
own (it draws with ``np.random.randint``).

Work is shared across samples: each RDM is ranked once, a subject bootstrap reuses the subjects' model
comparisons (a sample only reweights them) and, for the rank methods, the pooled RDMs of the noise ceiling
(a sample of S subjects has few distinct pools); for Pearson, R^2 and cosine the noise ceiling of any
subject sample follows from one S x S matrix of the subjects' comparisons, and a stimulus sample's
comparisons from weighted sums over the original pairs, without building its RDMs. Stimulus samples for
Spearman and tau-a are built (each pair repeated once per pair of copies of its stimuli) and ranked.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from pozfast.ops import ranks
from pozfast.rdm_sets import (PreparedSet, as_rdm_stack, check_method, compare_prepared, drop_missing, kept_pairs,
                              matmul, unit_rows)
from pozfast.rows import n_items
from pozfast.validate import positive_int, real

BOOTS = ("rdm", "pattern", "both")
# Methods whose pooled RDMs are weighted sums of the prepared rows: every comparison with a pool, on any
# sample, follows from a matrix of comparisons between the RDMs (Spearman's pools must be ranked again).
GRAM_METHODS = ("pearson", "r2", "cosine")
ALTERNATIVES = ("greater", "less", "two-sided")
_MIN_PATTERNS = 3  # rsatoolbox evaluates a stimulus sample only with at least 3 distinct stimuli
_BATCH_ELEMENTS = 1 << 23  # elements of the per-batch index and gather arrays (64 MiB each)


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be None, an int or a numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(seed)


def _progress(iterable, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, disable=not enabled, desc=desc)


# Noise ceiling ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NoiseCeiling:
    """Bounds on the comparison that the true model could reach, given the subjects' disagreement.

    ``lower``: mean over subjects of the comparison of each subject's RDM with the pool of the others
    (leave one out); ``upper``: the same with the pool of all. The pool is the RDM that scores best under
    the method: the mean of z-scored RDMs (Pearson, R^2), of RMS-normalised RDMs (cosine), of ranks
    (Spearman, tau-a), as rsatoolbox's ``pool_rdm``. ``lower_per_rdm`` and ``upper_per_rdm`` hold the
    per-subject values (S,).
    """

    method: str
    lower: float
    upper: float
    lower_per_rdm: np.ndarray
    upper_per_rdm: np.ndarray


class _Ceiling:
    """The noise ceiling of a set of subject RDMs under subject weights (how many times each subject is in a
    bootstrap sample), as rsatoolbox's ``boot_noise_ceiling``: folds over the distinct subjects present, the
    pools weighted by the counts."""

    def __init__(self, data: PreparedSet):
        self.data, self.method = data, data.method
        if self.method in GRAM_METHODS:
            # Pools are weighted sums of the unit rows: every comparison with one follows from the Gram matrix.
            self.gram = matmul(data.unit, data.unit.T)
        else:
            self._pooled: dict[tuple[int, ...], Any] = {}
            self._ranks2 = np.stack([r.ranks2 for r in data.rankings]).astype(np.float64)  # pools: exact sums

    def per_rdm(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (B, S), for a (B, S) batch of subject weights; NaN where a weight is 0."""
        weights = np.asarray(weights, dtype=np.float64)
        if self.method in GRAM_METHODS:
            lower, upper = linear_ceiling(self.gram[None], weights)
        else:
            lower, upper = np.full(weights.shape, np.nan), np.full(weights.shape, np.nan)
            for b, w in enumerate(weights):
                for u in np.flatnonzero(w):
                    upper[b, u] = self._compare_pool(w, u)
                    left = w.copy()
                    left[u] = 0
                    lower[b, u] = self._compare_pool(left, u) if left.any() else upper[b, u]
        if self.method == "r2":
            lower, upper = lower * lower, upper * upper
        return lower, upper

    def bounds(self, weights: np.ndarray) -> np.ndarray:
        """(B, 2): the lower and upper bound for each row of subject weights."""
        return _mean_bounds(*self.per_rdm(weights))

    def _compare_pool(self, weights: np.ndarray, u: int) -> float:
        """The comparison of subject u with the rank pool of the weighted subjects (cached by pool)."""
        w = weights.astype(np.int64)
        key = tuple((w // math.gcd(*w.tolist())).tolist())  # a pool's ranks do not change with its scale
        pooled = self._pooled.get(key)
        if pooled is None:
            pool = ranks.rank(matmul(np.asarray(key, dtype=np.float64)[None], self._ranks2)[0])
            if self.method == "spearman":  # the pool's correlations with every subject
                pooled = matmul(self.data.unit, unit_rows(pool.centred()[None]).T)[:, 0]
            else:
                pooled = {"ranking": pool}
            self._pooled[key] = pooled
        if self.method == "spearman":
            return float(pooled[u])
        if u not in pooled:
            pooled[u] = ranks.tau_a_from_ranking(pooled["ranking"], self.data.values[u])
        return pooled[u]


def _mean_bounds(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(B, 2): the per-subject bounds averaged over the subjects present."""
    return np.stack([np.nanmean(lower, axis=1), np.nanmean(upper, axis=1)], axis=1)


def linear_ceiling(gram: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-subject (lower, upper), each (B, S), of the noise ceiling of a linear method, from the subjects'
    (B or 1, S, S) matrix of comparisons (inner products of unit rows) and (B, S) subject weights.

    A pool is the weighted sum of the subjects' unit rows, so its comparison with subject u is
    (sum_t w_t g_tu) / sqrt(w' g w), and leaving u out subtracts u's terms.
    """
    diag = np.diagonal(gram, axis1=1, axis2=2)
    num = np.einsum("bs,bst->bt", weights, np.broadcast_to(gram, (len(weights),) + gram.shape[1:]))
    total = np.einsum("bs,bs->b", num, weights)[:, None]  # squared norm of the pool
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = num / np.sqrt(total)
        loo_sq = total - 2 * weights * num + weights * weights * diag
        lower = (num - weights * diag) / np.sqrt(loo_sq)
    present = weights > 0
    single = present.sum(axis=1) == 1  # one distinct subject: rsatoolbox pools it with itself
    lower[single] = upper[single]
    lower[~present] = np.nan
    upper[~present] = np.nan
    return lower, upper

def noise_ceiling(rdms: Any, method: str = "pearson", *, kind: str = "dissimilarity") -> NoiseCeiling:
    """The noise ceiling of a set of subject RDMs, as ``rsatoolbox.inference.boot_noise_ceiling``.

    Args:
        rdms: the subjects' RDMs (an (S, P) stack of condensed vectors or an (S, N, N) stack of squares).
        method: comparison method (``"pearson"``, ``"r2"``, ``"spearman"``, ``"kendall_tau_a"``,
            ``"cosine"``).
        kind: ``"dissimilarity"`` or ``"similarity"``.
    With one subject both bounds are its comparison with itself, as rsatoolbox computes them.
    """
    check_method(method)
    (data,) = drop_missing(as_rdm_stack(rdms, "rdms", kind))
    lower, upper = _Ceiling(PreparedSet(data, method)).per_rdm(np.ones((1, len(data))))
    return NoiseCeiling(method, float(np.mean(lower)), float(np.mean(upper)), lower[0], upper[0])


# Bootstrap -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap evaluation of model RDMs against subject RDMs.

    ``evaluations`` (M,): each model's comparison with the data, averaged over subjects. ``samples``
    (n_samples, M): the same on each bootstrap sample (NaN rows: stimulus samples with fewer than 3
    distinct stimuli, which rsatoolbox skips too). ``noise_ceiling`` on the full data and
    ``noise_ceiling_samples`` (n_samples, 2: lower, upper) on each sample. ``mean`` and ``se`` are
    rsatoolbox's ``get_means`` and ``get_sem`` (the bootstrap standard deviation scaled by n / (n - 1) in
    variance, n the number of subjects, stimuli or the smaller of both); ``ci`` (2, M) the percentile
    interval at ``ci_level``; ``p_zero`` (M,) rsatoolbox's one-sided t-test of each model against 0 and
    ``p_pairwise`` (M, M) its two-sided t-tests of model differences, with ``dof`` degrees of freedom.
    ``rdm_samples`` (n_samples, S) and ``pattern_samples`` (n_samples, N) are the draws (None for the
    dimension not resampled).
    """

    method: str
    boot: str
    evaluations: np.ndarray
    samples: np.ndarray
    noise_ceiling: NoiseCeiling
    noise_ceiling_samples: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    ci: np.ndarray
    ci_level: float
    p_zero: np.ndarray
    p_pairwise: np.ndarray
    dof: int
    rdm_samples: np.ndarray | None
    pattern_samples: np.ndarray | None


def eval_bootstrap(models: Any, data: Any, method: str = "pearson", *, boot: str = "rdm", n_samples: int = 1000,
                   seed: Any = None, samples: Any = None, ci_level: float = 0.95, progress: bool = False,
                   models_kind: str = "dissimilarity", data_kind: str = "dissimilarity") -> BootstrapResult:
    """Evaluate fixed model RDMs against subject RDMs with a bootstrap: over subjects (``boot="rdm"``,
    rsatoolbox's ``eval_bootstrap_rdm``), over stimuli (``"pattern"``, ``eval_bootstrap_pattern``) or
    both (``"both"``, ``eval_bootstrap``), with the noise ceiling on every sample.

    Args:
        models: (M, P) stack of model RDMs (or one condensed vector, or (M, N, N) squares).
        data: (S, P) stack of the subjects' RDMs of the same N stimuli.
        method: comparison method (see :func:`pozfast.compare_rdms`).
        boot: what is resampled with replacement: ``"rdm"`` (subjects), ``"pattern"`` (stimuli: the RDMs
            are reindexed, pairs of a stimulus with its own copy dropped) or ``"both"``.
        n_samples: number of bootstrap samples.
        seed: None, an int or a numpy Generator.
        samples: the draws to use instead of random ones: an (n_samples, S) int array of subject indices
            for ``"rdm"``, (n_samples, N) stimulus indices for ``"pattern"``, a pair of both for ``"both"``.
        ci_level: coverage of the percentile interval ``ci``, in (0, 1).
        progress: tqdm bar over samples.
        models_kind, data_kind: ``"dissimilarity"`` or ``"similarity"``.
    """
    check_method(method)
    if boot not in BOOTS:
        raise ValueError(f"boot must be one of {BOOTS}, got {boot!r}")
    ci_level = real(ci_level, "ci_level", low=0, high=1, low_open=True, high_open=True)
    model_rdms, data_rdms = as_rdm_stack(models, "models", models_kind), as_rdm_stack(data, "data", data_kind)
    if model_rdms.shape[1] != data_rdms.shape[1]:
        raise ValueError(f"models and data are RDMs of different N: {n_items(model_rdms.shape[1], 'models')} vs "
                         f"{n_items(data_rdms.shape[1], 'data')} stimuli")
    n_stimuli, n_subjects = n_items(data_rdms.shape[1], "data"), len(data_rdms)
    rdm_samples, pattern_samples = _draws(boot, samples, n_samples, n_subjects, n_stimuli, _rng(seed))
    n_drawn = len(rdm_samples if rdm_samples is not None else pattern_samples)
    keep = kept_pairs(model_rdms, data_rdms)
    model_rdms, data_rdms = drop_missing(model_rdms, data_rdms)
    full = _Evaluation(model_rdms, data_rdms, method)
    ones = np.ones((1, n_subjects))
    if boot == "rdm":
        counts = _counts(rdm_samples, n_subjects)
        values = counts @ full.evaluations.T / n_subjects
        ceiling = full.ceiling.bounds(counts) if method in GRAM_METHODS else \
            np.concatenate([full.ceiling.bounds(c[None]) for c in
                            _progress(counts, n_drawn, progress, "bootstrap over subjects")])
    else:
        stimuli = _counts(pattern_samples, n_stimuli)
        usable = np.flatnonzero(np.count_nonzero(stimuli, axis=1) >= _MIN_PATTERNS)  # rsatoolbox skips the rest
        weights = np.ones((n_drawn, n_subjects)) if rdm_samples is None else _counts(rdm_samples, n_subjects)
        values = np.full((n_drawn, len(model_rdms)), np.nan)
        ceiling = np.full((n_drawn, 2), np.nan)
        pair_i, pair_j = _pair_items(n_stimuli, keep)
        if method in GRAM_METHODS:
            m = len(model_rdms)
            sims = _weighted_comparisons(np.concatenate([model_rdms, data_rdms]), stimuli[usable], pair_i, pair_j,
                                         method, progress)
            evals = sims[:, :m, m:] ** 2 if method == "r2" else sims[:, :m, m:]
            values[usable] = np.einsum("bs,bms->bm", weights[usable], evals) / n_subjects
            lower, upper = linear_ceiling(sims[:, m:, m:], weights[usable])
            ceiling[usable] = _mean_bounds(*((lower * lower, upper * upper) if method == "r2" else (lower, upper)))
        else:
            for b in _progress(usable, len(usable), progress, "bootstrap over stimuli"):
                repeats = (stimuli[b, pair_i] * stimuli[b, pair_j]).astype(np.int64)  # once per pair of copies
                sample = _Evaluation(np.repeat(model_rdms, repeats, axis=1), np.repeat(data_rdms, repeats, axis=1),
                                     method)
                values[b] = weights[b] @ sample.evaluations.T / n_subjects
                ceiling[b] = sample.ceiling.bounds(weights[b:b + 1])[0]
    lower, upper = full.ceiling.per_rdm(ones)
    nc = NoiseCeiling(method, float(np.mean(lower)), float(np.mean(upper)), lower[0], upper[0])
    n_scale = {"rdm": n_subjects, "pattern": n_stimuli, "both": min(n_subjects, n_stimuli)}[boot]
    return _result(method, boot, full.evaluations.mean(axis=1), values, nc, ceiling, n_scale, ci_level,
                   rdm_samples, pattern_samples)


class _Evaluation:
    """Models against subjects on one set of pairs: the (M, S) comparisons and the subjects' ceiling."""

    def __init__(self, models: np.ndarray, data: np.ndarray, method: str):
        prepared = PreparedSet(data, method)
        self.evaluations = compare_prepared(PreparedSet(models, method), prepared)
        self.ceiling = _Ceiling(prepared)


def _weighted_comparisons(rdms: np.ndarray, stimuli: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray,
                          method: str, progress: bool) -> np.ndarray:
    """(B, K, K) Pearson (for Pearson and R^2) or cosine comparisons between the K RDMs on each of B stimulus
    samples, without building the samples' RDMs.

    A stimulus sample holds pair (i, j) c_i c_j times (c: how many times each stimulus was drawn), so its
    comparisons follow from the weighted sums over the original pairs of every product of two RDMs, of
    every RDM and of the weights: one matrix product of the (B, P) weights with those (K^2 + K + 1, P) rows,
    in blocks of pairs and samples. Pearson rows are centred first, so that the centred sums do not cancel.
    """
    v = torch.from_numpy(rdms - rdms.mean(axis=1, keepdims=True) if method != "cosine" else rdms)
    k, n_pairs = v.shape
    counts = torch.from_numpy(stimuli)
    pi, pj = torch.from_numpy(pair_i), torch.from_numpy(pair_j)
    sums = torch.zeros((len(stimuli), k * k + k + 1), dtype=torch.float64)
    block = max(1, _BATCH_ELEMENTS // (k * k + k + 1))
    samples_block = max(1, _BATCH_ELEMENTS // block)
    starts = range(0, n_pairs, block)
    for lo in _progress(starts, len(starts), progress, "bootstrap over stimuli (pair blocks)"):
        hi = min(lo + block, n_pairs)
        part = v[:, lo:hi]
        rows = torch.cat([(part[:, None] * part[None]).reshape(k * k, -1), part, torch.ones((1, hi - lo),
                                                                                          dtype=torch.float64)])
        for b in range(0, len(stimuli), samples_block):
            c = counts[b:b + samples_block]
            sums[b:b + samples_block] += (c[:, pi[lo:hi]] * c[:, pj[lo:hi]]) @ rows.T
    sums = sums.numpy()
    gram = sums[:, :k * k].reshape(-1, k, k)
    if method != "cosine":
        totals = sums[:, k * k:k * k + k]
        gram = gram - totals[:, :, None] * totals[:, None, :] / sums[:, -1, None, None]
    norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=1, axis2=2), 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = gram / (norms[:, :, None] * norms[:, None, :])
    sims[~np.isfinite(sims)] = np.nan  # an RDM constant on the sample
    return np.clip(sims, -1.0, 1.0)


def _draws(boot: str, samples: Any, n_samples: int, n_subjects: int, n_stimuli: int,
           rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(subject draws, stimulus draws) for ``boot``, given or drawn; None for a dimension not resampled."""
    if samples is None:
        n_samples = positive_int(n_samples, "n_samples")
        rdm = rng.integers(0, n_subjects, (n_samples, n_subjects)) if boot in ("rdm", "both") else None
        pattern = rng.integers(0, n_stimuli, (n_samples, n_stimuli)) if boot in ("pattern", "both") else None
        return rdm, pattern
    if boot == "both":
        if not isinstance(samples, (tuple, list)) or len(samples) != 2:
            raise TypeError("samples for boot='both' must be a pair (subject draws, stimulus draws)")
        rdm, pattern = (_index_array(samples[0], "samples[0]", n_subjects),
                        _index_array(samples[1], "samples[1]", n_stimuli))
        if len(rdm) != len(pattern):
            raise ValueError(f"samples[0] and samples[1] differ in number of samples: {len(rdm)} vs {len(pattern)}")
        return rdm, pattern
    if boot == "rdm":
        return _index_array(samples, "samples", n_subjects), None
    return None, _index_array(samples, "samples", n_stimuli)


def _index_array(a: Any, name: str, size: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != size or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an (n_samples, {size}) array of integer indices, got "
                         f"{a.dtype} of shape {a.shape}")
    if a.min() < 0 or a.max() >= size:
        raise ValueError(f"{name} must hold indices in [0, {size}), got values in [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def _counts(draws: np.ndarray, size: int) -> np.ndarray:
    """(B, size) float64: how many times each index is in each row of draws."""
    counts = np.zeros((len(draws), size))
    np.add.at(counts, (np.repeat(np.arange(len(draws)), draws.shape[1]), draws.ravel()), 1)
    return counts


def _pair_items(n: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two stimuli of each kept pair, in condensed order."""
    i, j = np.triu_indices(n, 1)
    return i[keep], j[keep]


def _result(method: str, boot: str, evaluations: np.ndarray, values: np.ndarray, nc: NoiseCeiling,
            ceiling: np.ndarray, n_scale: int, ci_level: float, rdm_samples, pattern_samples) -> BootstrapResult:
    ok = ~np.isnan(values).any(axis=1)
    valid = values[ok]
    n_models = values.shape[1]
    correction = n_scale / (n_scale - 1) if n_scale > 1 else math.nan
    if len(valid) > 1:
        cov = np.atleast_2d(np.cov(valid, rowvar=False)) * correction
        mean = valid.mean(axis=0)
        tail = (1 - ci_level) / 2
        ci = np.quantile(valid, [tail, 1 - tail], axis=0)
    else:
        cov = np.full((n_models, n_models), np.nan)
        mean = valid.mean(axis=0) if len(valid) else np.full(n_models, np.nan)
        ci = np.full((2, n_models), np.nan)
    import scipy.stats  # here, not at the top: it takes most of a second to import, and only this needs it

    dof = n_scale - 1
    eps = np.finfo(float).eps
    se = np.sqrt(np.maximum(np.diag(cov), 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_zero = 1 - scipy.stats.t.cdf(mean / np.sqrt(np.maximum(np.diag(cov), eps)), dof)
        diff_var = np.diag(cov)[:, None] + np.diag(cov)[None, :] - 2 * cov
        t = (mean[:, None] - mean[None, :]) / np.sqrt(np.maximum(diff_var, eps))
        p_pairwise = 2 * (1 - scipy.stats.t.cdf(np.abs(t), dof))
    np.fill_diagonal(p_pairwise, 1.0)
    return BootstrapResult(method, boot, evaluations, values, nc, ceiling, mean, se, ci, ci_level, p_zero,
                           p_pairwise, dof, rdm_samples, pattern_samples)


# Permutation test ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PermutationTest:
    """A permutation test of one RDM comparison: ``value`` on the data, ``null`` (n_permutations,) with the
    stimulus labels of ``b`` permuted, and ``p_value`` = (1 + number of null values at least as extreme) /
    (1 + n_permutations) for the ``alternative`` hypothesis. ``n_pairs``: pairs compared (NaN pairs
    dropped)."""

    method: str
    value: float
    null: np.ndarray
    p_value: float
    alternative: str
    n_pairs: int


def permutation_test(a: Any, b: Any, method: str = "pearson", *, n_permutations: int = 1000, seed: Any = None,
                     alternative: str = "greater", progress: bool = False, a_kind: str = "dissimilarity",
                     b_kind: str = "dissimilarity") -> PermutationTest:
    """Test whether two RDMs of the same N stimuli agree more than chance: compare ``a`` with ``b`` whose
    stimulus labels are permuted at random (rows and columns of its square form together).

    Permuting labels only reorders ``b``'s pairs, so each permutation reindexes ``b`` (and its ranks) and
    takes an inner product, or for tau-a counts discordant pairs against ``a``'s ranking, which is made
    once. Pairs NaN in ``a`` or ``b`` are dropped for each permutation.
    """
    check_method(method)
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    n_permutations = positive_int(n_permutations, "n_permutations")
    va, vb = as_rdm_stack(a, "a", a_kind), as_rdm_stack(b, "b", b_kind)
    if len(va) != 1 or len(vb) != 1:
        raise ValueError(f"a and b must be single RDMs, got {len(va)} and {len(vb)}")
    va, vb = va[0], vb[0]
    if len(va) != len(vb):
        raise ValueError(f"a and b are RDMs of different N: {n_items(len(va), 'a')} vs {n_items(len(vb), 'b')} stimuli")
    n = n_items(len(va), "a")
    rng = _rng(seed)
    i, j = np.triu_indices(n, 1)
    observed = _compare_one(va, vb, method)
    null = np.empty(n_permutations)
    if np.isnan(va).any() or np.isnan(vb).any():
        for k in _progress(range(n_permutations), n_permutations, progress, "permutations"):
            null[k] = _compare_one(va, vb[_permuted_pairs(rng.permutation(n), i, j, n)], method)
    elif method == "kendall_tau_a":
        ranking = PreparedSet(va[None], method).rankings[0]
        for k in _progress(range(n_permutations), n_permutations, progress, "permutations"):
            null[k] = ranks.tau_a_from_ranking(ranking, vb[_permuted_pairs(rng.permutation(n), i, j, n)])
    else:  # batches of permutations: one gather and one matrix-vector product each
        unit_a = torch.from_numpy(PreparedSet(va[None], method).unit[0])
        unit_b = torch.from_numpy(PreparedSet(vb[None], method).unit[0])
        batch = max(1, _BATCH_ELEMENTS // len(va))
        starts = range(0, n_permutations, batch)
        for start in _progress(starts, len(starts), progress, "permutations"):
            stop = min(start + batch, n_permutations)
            index = np.stack([_permuted_pairs(rng.permutation(n), i, j, n) for _ in range(start, stop)])
            r = (unit_b[torch.from_numpy(index)] @ unit_a).numpy()
            null[start:stop] = r * r if method == "r2" else r
    if alternative == "greater":
        extreme = null >= observed
    elif alternative == "less":
        extreme = null <= observed
    else:
        extreme = np.abs(null) >= abs(observed)
    kept = int((~(np.isnan(va) | np.isnan(vb))).sum())
    return PermutationTest(method, observed, null, float((1 + extreme.sum()) / (1 + n_permutations)), alternative,
                           kept)


def _compare_one(a: np.ndarray, b: np.ndarray, method: str) -> float:
    keep = ~(np.isnan(a) | np.isnan(b))
    x, y = np.ascontiguousarray(a[keep])[None], np.ascontiguousarray(b[keep])[None]
    return float(compare_prepared(PreparedSet(x, method), PreparedSet(y, method))[0, 0])


def _permuted_pairs(perm: np.ndarray, i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """For each pair (i, j) in condensed order, the condensed index of pair (perm[i], perm[j])."""
    pi, pj = perm[i], perm[j]
    lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
    return lo * n - lo * (lo + 1) // 2 + (hi - lo - 1)
