"""Rank statistics (pozfast.ops.ranks): native kernels and the numpy reference against scipy, with ties,
signed zeros, infinities, constant vectors and lengths that exercise every code path of the kernels (the
in-cache sort and inversion count below 2^14 entries, the parallel chunked splits above)."""

import warnings

import numpy as np
import pytest
import scipy.stats
import torch

import pozfast
from pozfast import use_backend
from pozfast.ops import ranks
from tests.conftest import available_backends

LENGTHS = [1, 2, 3, 7, 33, 1023, 20_011, 70_001]
KINDS = ["continuous", "ties", "heavy_ties", "constant", "float32", "specials"]


def make(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "continuous":
        return rng.standard_normal(n)
    if kind == "ties":
        return rng.integers(0, max(1, n // 5), n).astype(np.float64)
    if kind == "heavy_ties":
        return rng.integers(0, 3, n) * 0.5
    if kind == "constant":
        return np.full(n, 2.5)
    if kind == "float32":
        return rng.random(n).astype(np.float32).astype(np.float64)  # low mantissa bits all zero
    return rng.choice([-0.0, 0.0, -1.5, 2.0, np.inf, -np.inf, 5e-324, -5e-324, 1e300], n)


def tau_a_reference(x: np.ndarray, y: np.ndarray) -> float:
    """tau-a by brute force over all pairs (short vectors), or from scipy's tau-b and the tie counts."""
    if len(x) <= 2000:
        i, j = np.triu_indices(len(x), 1)
        return float((_sign(x[i], x[j]) * _sign(y[i], y[j])).sum() / len(i))
    pairs = len(x) * (len(x) - 1) / 2
    ties = [float((c * (c - 1) / 2).sum()) for c in (np.unique(v, return_counts=True)[1] for v in (x, y))]
    if pairs in ties:
        return 0.0
    return float(scipy.stats.kendalltau(x, y).statistic * np.sqrt((pairs - ties[0]) * (pairs - ties[1])) / pairs)


def _sign(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a > b).astype(np.int64) - (a < b)  # np.sign(a - b) is NaN for inf - inf


@pytest.fixture
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


# The native kernels on one and two threads, the numpy reference once.
BACKEND_THREADS = [pytest.param(*p.values, 1, marks=p.marks, id=f"{p.values[0]}-1") for p in
                   available_backends("cpu", triton=False)] + [
    pytest.param(*available_backends("cpu", triton=False)[0].values, 2,
                 marks=available_backends("cpu", triton=False)[0].marks, id="cpu-native-2")]


@pytest.mark.parametrize("backend,threads", BACKEND_THREADS, indirect=["threads"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", LENGTHS)
def test_ranks_and_correlations_match_scipy(backend, kind, n, threads):
    rng = np.random.default_rng([n, KINDS.index(kind)])
    x = make(kind, n, rng)
    y = make("continuous" if kind == "constant" else kind, n, rng)
    if kind not in ("constant", "specials"):
        y = y + x  # correlated, so that rho and tau-a are far from 0
    with use_backend(backend):
        r = ranks.rank(x)
        rho = ranks.spearman(x, y)
        tau = ranks.kendall_tau_a(x, y)
    np.testing.assert_array_equal(r.ranks, scipy.stats.rankdata(x))
    np.testing.assert_array_equal(r.order, np.argsort(x + 0.0, kind="stable"))
    _, counts = np.unique(x, return_counts=True)
    assert r.groups == len(counts) and r.tie_pairs == int((counts * (counts - 1) // 2).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input
        expected_rho = scipy.stats.spearmanr(x, y).statistic if n >= 2 else np.nan
    if np.isnan(expected_rho):
        assert np.isnan(rho)
    else:
        assert rho == pytest.approx(expected_rho, abs=1e-12)
    if n < 2:
        assert np.isnan(tau)
    else:
        assert tau == pytest.approx(tau_a_reference(x, y), abs=1e-12)


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("kind", ["continuous", "heavy_ties", "float32"])
def test_parallel_paths_match_the_reference(kind, threads):
    """Above 2^18 entries the kernels split work across threads: chunked radix splits, buckets sorted side
    by side, chunked inversion counts."""
    if not pozfast.backends()["cpu-native"].available:
        pytest.skip("cpu-native unavailable")
    rng = np.random.default_rng(KINDS.index(kind))
    x = make(kind, 300_001, rng)
    y = make(kind, 300_001, rng) + x
    with use_backend("cpu-native"):
        native = ranks.rank(x), ranks.spearman(x, y), ranks.kendall_counts(ranks.rank(x), y)
    with use_backend("torch"):
        reference = ranks.rank(x), ranks.spearman(x, y), ranks.kendall_counts(ranks.rank(x), y)
    np.testing.assert_array_equal(native[0].ranks2, reference[0].ranks2)
    np.testing.assert_array_equal(native[0].order, reference[0].order)
    assert native[1] == pytest.approx(reference[1], abs=1e-12)
    assert native[2] == reference[2]


def test_tau_a_counts_are_exact_integers_with_ties():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, 1501).astype(np.float64)
    y = rng.integers(0, 6, 1501).astype(np.float64)
    i, j = np.triu_indices(len(x), 1)
    dx, dy = _sign(x[i], x[j]), _sign(y[i], y[j])
    expected = (len(i), int((dx == 0).sum()), int((dy == 0).sum()), int(((dx == 0) & (dy == 0)).sum()),
                int((dx * dy < 0).sum()))
    for backend in [b for b in ("cpu-native", "torch") if pozfast.backends()[b].available]:
        with use_backend(backend):
            assert ranks.kendall_counts(ranks.rank(x), y) == expected


def test_one_ranking_serves_many_comparisons():
    rng = np.random.default_rng(6)
    x = rng.random(5000)
    rx = ranks.rank(x)
    for _ in range(3):
        y = x + rng.random(5000)
        assert ranks.tau_a_from_ranking(rx, y) == pytest.approx(tau_a_reference(x, y), abs=1e-12)
        assert ranks.spearman_from_rankings(rx, ranks.rank(y)) == pytest.approx(
            scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="NaN"):
        ranks.rank(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        ranks.rank(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="differ in length"):
        ranks.spearman(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="differ in length"):
        ranks.kendall_tau_a(np.zeros(3), np.zeros(4))


def test_empty_vector():
    r = ranks.rank(np.zeros(0))
    assert r.n == 0 and r.groups == 0 and r.tie_pairs == 0
    assert np.isnan(ranks.spearman(np.zeros(0), np.zeros(0)))
    assert np.isnan(ranks.kendall_tau_a(np.zeros(0), np.zeros(0)))
