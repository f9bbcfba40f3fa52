"""RDM sets and inference against rsatoolbox 0.3.2: set comparisons for every method, the noise ceiling,
bootstraps over subjects, stimuli and both replayed on rsatoolbox's own draws, and permutation tests
replayed on the same permutations with the RDM rebuilt from its square form."""

import warnings

import numpy as np
import pytest
import torch

from pozfast.inference import eval_bootstrap, noise_ceiling, permutation_test
from pozfast.rdm_sets import PreparedSet, compare_prepared, compare_rdm_sets
from pozfast.rdms import rdm

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.inference import boot_noise_ceiling  # noqa: E402
from rsatoolbox.inference import eval_bootstrap as rsa_eval_bootstrap  # noqa: E402
from rsatoolbox.inference import eval_bootstrap_pattern, eval_bootstrap_rdm  # noqa: E402
from rsatoolbox.model import ModelFixed  # noqa: E402
from rsatoolbox.rdm import RDMs, compare  # noqa: E402
from rsatoolbox.util.inference_util import pool_rdm  # noqa: E402

# pozfast method -> rsatoolbox method
METHODS = {"pearson": "corr", "cosine": "cosine", "spearman": "spearman", "kendall_tau_a": "tau-a"}
N, S = 14, 5
P = N * (N - 1) // 2


@pytest.fixture(autouse=True)
def quiet_rsatoolbox():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rsatoolbox warns about tau noise ceilings and deprecated numpy use
        yield


def subjects(seed: int, n_subjects: int = S, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(models (2, P), data (n_subjects, P)): noisy copies of one geometry, one subject with tied values."""
    rng = np.random.default_rng(seed)
    base = rng.random(P)
    data = base + 0.8 * rng.random((n_subjects, P))
    if ties:
        data[min(2, n_subjects - 1)] = np.round(data[min(2, n_subjects - 1)], 1)
    models = np.stack([base + rng.random(P), np.round(rng.random(P) * 4)])  # the second with heavy ties
    return models, data


def fixed_models(models: np.ndarray) -> list:
    return [ModelFixed(f"m{k}", RDMs(m[None])) for k, m in enumerate(models)]


# Sets --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_set_comparison_matches_rsatoolbox(method):
    rng = np.random.default_rng(1)
    a = rng.random((3, P))
    b = np.concatenate([a[:2] + rng.random((2, P)), rng.integers(0, 4, (2, P)).astype(float)])
    for x, y in [(a, b), (b, a), (a[0], b)]:
        ours = compare_rdm_sets(x, y, method)
        expected = compare(RDMs(np.atleast_2d(x)), RDMs(y), METHODS[method])
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(compare_rdm_sets(a, b, "r2"), compare(RDMs(a), RDMs(b), "corr") ** 2, atol=1e-12)


@pytest.mark.parametrize("method", list(METHODS))
def test_set_comparison_drops_pairs_nan_anywhere(method):
    rng = np.random.default_rng(2)
    a, b = rng.random((2, P)), rng.random((3, P))
    a[0, [3, 17]] = np.nan
    b[2, 40] = np.nan
    ours = compare_rdm_sets(a, b, method)
    keep = ~np.isnan(np.concatenate([a, b])).any(axis=0)
    expected = compare(RDMs(a[:, keep]), RDMs(b[:, keep]), METHODS[method])
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    # rsatoolbox itself gives the same when both sets miss the same pairs
    a[:, [40]] = b[:, [3, 17]] = np.nan
    np.testing.assert_allclose(compare_rdm_sets(a, b, method), compare(RDMs(a), RDMs(b), METHODS[method]), atol=1e-12)


def test_set_comparison_inputs():
    rng = np.random.default_rng(3)
    x = rng.random((6, 8))
    squares = np.stack([rdm(x + rng.random((6, 8)), out="square") for _ in range(2)])
    condensed = np.stack([s[np.triu_indices(6, 1)] for s in squares])
    np.testing.assert_allclose(compare_rdm_sets(squares, condensed, "spearman"), compare_rdm_sets(condensed, condensed,
                                                                                                  "spearman"))
    sims = compare_rdm_sets(1 - condensed, torch.from_numpy(condensed), "pearson", a_kind="similarity")
    np.testing.assert_allclose(np.diag(sims), 1.0)
    constant = np.ones((1, 15))
    for method in ("pearson", "spearman", "cosine"):  # no spread: undefined (rsatoolbox reports 0)
        assert np.isnan(compare_rdm_sets(constant - (method == "cosine"), condensed, method)).all()
    assert (compare_rdm_sets(constant, condensed, "kendall_tau_a") == 0).all()
    with pytest.raises(ValueError, match="different N"):
        compare_rdm_sets(condensed, np.ones((2, 10)))
    with pytest.raises(ValueError, match="method must be one of"):
        compare_rdm_sets(condensed, condensed, "corr2")
    with pytest.raises(ValueError, match="not symmetric"):
        compare_rdm_sets(rng.random((2, 6, 6)), condensed)
    with pytest.raises(ValueError, match=r"one RDM in square form.*\[None\]"):
        compare_rdm_sets(squares[0], condensed)


def test_rdm_of_a_set_gives_one_rdm_per_subject():
    rng = np.random.default_rng(4)
    stack = rng.standard_normal((3, 20, 7))
    out = rdm(stack)
    assert out.shape == (3, 190) and out.dtype == np.float64
    for s in range(3):
        np.testing.assert_array_equal(out[s], rdm(stack[s]))
    ragged = [rng.standard_normal((20, d)).astype(np.float32) for d in (5, 9)]
    out = rdm(ragged)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[1], rdm(ragged[1]))
    with pytest.raises(ValueError, match="same items in every member"):
        rdm([np.ones((4, 3)), np.ones((5, 3))])


# Noise ceiling -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_noise_ceiling_matches_rsatoolbox(method):
    _, data = subjects(5)
    nc = noise_ceiling(data, method)
    lower, upper = boot_noise_ceiling(RDMs(data), method=METHODS[method])
    assert nc.lower == pytest.approx(lower, abs=1e-12) and nc.upper == pytest.approx(upper, abs=1e-12)
    assert nc.lower_per_rdm.shape == (S,) and nc.lower <= nc.upper
    one = noise_ceiling(data[:1], method)  # one subject: rsatoolbox compares it with itself
    assert one.lower == one.upper == pytest.approx(boot_noise_ceiling(RDMs(data[:1]), METHODS[method])[0], abs=1e-12)


def test_noise_ceiling_r2_is_the_mean_squared_correlation():
    _, data = subjects(6)
    pooled_all = pool_rdm(RDMs(data), "corr")
    upper = [compare(pooled_all, RDMs(d[None]), "corr")[0, 0] ** 2 for d in data]
    lower = [compare(pool_rdm(RDMs(np.delete(data, s, 0)), "corr"), RDMs(data[s][None]), "corr")[0, 0] ** 2
             for s in range(S)]
    nc = noise_ceiling(data, "r2")
    assert nc.lower == pytest.approx(np.mean(lower), abs=1e-12)
    assert nc.upper == pytest.approx(np.mean(upper), abs=1e-12)


# Bootstrap ---------------------------------------------------------------------------------------------------

def _assert_same_result(ours, theirs):
    np.testing.assert_allclose(ours.samples, theirs.evaluations, atol=1e-12)
    np.testing.assert_allclose(ours.noise_ceiling_samples.T, theirs.noise_ceiling, atol=1e-12)
    np.testing.assert_allclose(ours.mean, theirs.get_means(), atol=1e-12)
    np.testing.assert_allclose(ours.se, theirs.get_sem(), atol=1e-12)
    np.testing.assert_allclose(ours.p_zero, theirs.test_zero(), atol=1e-10)
    np.testing.assert_allclose(ours.p_pairwise, theirs.test_pairwise(), atol=1e-10)
    assert ours.dof == theirs.dof


@pytest.mark.parametrize("method", list(METHODS))
def test_bootstrap_over_subjects_replays_rsatoolbox(method):
    models, data = subjects(7)
    np.random.seed(11)
    theirs = eval_bootstrap_rdm(fixed_models(models), RDMs(data), method=METHODS[method], N=25)
    np.random.seed(11)
    draws = np.stack([np.random.randint(0, S, size=S) for _ in range(25)])
    ours = eval_bootstrap(models, data, method, boot="rdm", samples=draws)
    _assert_same_result(ours, theirs)
    assert ours.noise_ceiling.lower == pytest.approx(boot_noise_ceiling(RDMs(data), METHODS[method])[0], abs=1e-12)
    np.testing.assert_allclose(ours.evaluations, compare(RDMs(models), RDMs(data), METHODS[method]).mean(1),
                               atol=1e-12)


@pytest.mark.parametrize("method", list(METHODS))
def test_bootstrap_over_stimuli_replays_rsatoolbox(method):
    models, data = subjects(8)
    np.random.seed(12)
    theirs = eval_bootstrap_pattern(fixed_models(models), RDMs(data), method=METHODS[method], N=12)
    np.random.seed(12)
    draws = np.stack([np.random.randint(0, N, size=N) for _ in range(12)])
    draws[3] = [0] * (N - 2) + [1, 1]  # two distinct stimuli: skipped (NaN), as rsatoolbox skips it
    ours = eval_bootstrap(models, data, method, boot="pattern", samples=draws)
    assert np.isnan(ours.samples[3]).all() and np.isnan(ours.noise_ceiling_samples[3]).all()
    ours_rest = eval_bootstrap(models, data, method, boot="pattern", samples=np.delete(draws, 3, 0))
    theirs_rest = np.delete(theirs.evaluations, 3, 0), np.delete(theirs.noise_ceiling, 3, 1)
    np.testing.assert_allclose(ours_rest.samples, theirs_rest[0], atol=1e-12)
    np.testing.assert_allclose(ours_rest.noise_ceiling_samples.T, theirs_rest[1], atol=1e-12)
    np.random.seed(12)
    _assert_same_result(eval_bootstrap(models, data, method, boot="pattern",
                                       samples=np.stack([np.random.randint(0, N, size=N) for _ in range(12)])), theirs)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_bootstrap_over_both_replays_rsatoolbox(method):
    models, data = subjects(9)
    np.random.seed(13)
    theirs = rsa_eval_bootstrap(fixed_models(models), RDMs(data), method=METHODS[method], N=10)
    np.random.seed(13)
    draws = [(np.random.randint(0, S, size=S), np.random.randint(0, N, size=N)) for _ in range(10)]
    ours = eval_bootstrap(models, data, method, boot="both",
                          samples=(np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])))
    _assert_same_result(ours, theirs)


@pytest.mark.parametrize("method", ["pearson", "r2", "cosine"])
def test_linear_stimulus_bootstrap_equals_the_rebuilt_samples(method):
    """Pearson, R^2 and cosine samples come from weighted sums over the original pairs; rebuilding each
    sample's RDMs (a pair once per pair of copies of its stimuli) gives the same values."""
    models, data = subjects(15)
    result = eval_bootstrap(models, data, method, boot="both", n_samples=6, seed=4)
    i, j = np.triu_indices(N, 1)
    for b in range(6):
        counts = np.bincount(result.pattern_samples[b], minlength=N)
        repeats = counts[i] * counts[j]
        subjects_drawn = data[result.rdm_samples[b]]
        sample = compare_prepared(PreparedSet(np.repeat(models, repeats, 1), method),
                                  PreparedSet(np.repeat(subjects_drawn, repeats, 1), method))
        np.testing.assert_allclose(result.samples[b], sample.mean(axis=1), atol=1e-12)


def test_bootstrap_seeded_and_within_monte_carlo_error():
    models, data = subjects(10, n_subjects=8, ties=False)
    a = eval_bootstrap(models, data, "pearson", boot="rdm", n_samples=200, seed=1)
    b = eval_bootstrap(models, data, "pearson", boot="rdm", n_samples=200, seed=1)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.random.seed(2)
    theirs = eval_bootstrap_rdm(fixed_models(models), RDMs(data), method="corr", N=200)
    # Independent draws: means agree within a few Monte Carlo errors, SEs within 25 %.
    assert np.all(np.abs(a.mean - theirs.get_means()) < 4 * a.se / np.sqrt(200) + 1e-12)
    np.testing.assert_allclose(a.se, theirs.get_sem(), rtol=0.25)
    assert a.ci.shape == (2, 2) and np.all(a.ci[0] <= a.mean) and np.all(a.mean <= a.ci[1])
    assert a.rdm_samples.shape == (200, 8) and a.pattern_samples is None


def test_bootstrap_inputs():
    models, data = subjects(11)
    with pytest.raises(ValueError, match="boot must be one of"):
        eval_bootstrap(models, data, boot="subjects")
    with pytest.raises(ValueError, match=r"\(n_samples, 5\) array of integer indices"):
        eval_bootstrap(models, data, samples=np.zeros((3, 4), int))
    with pytest.raises(ValueError, match=r"indices in \[0, 5\)"):
        eval_bootstrap(models, data, samples=np.full((3, 5), 5))
    with pytest.raises(ValueError, match="different N"):
        eval_bootstrap(models[:, :10], data)
    with pytest.raises(TypeError, match="seed must be"):
        eval_bootstrap(models, data, seed=1.5)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        eval_bootstrap(models, data, n_samples=0)


# Permutation test --------------------------------------------------------------------------------------------

def _rebuilt_null(a: np.ndarray, b: np.ndarray, method: str, n_perm: int, seed: int) -> np.ndarray:
    """The null distribution by permuting b's square form and comparing with rsatoolbox (NaN pairs dropped)."""
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(seed)
    square = squareform(np.nan_to_num(b, nan=-1.0))
    square[square == -1.0] = np.nan
    np.fill_diagonal(square, 0)
    null = []
    for _ in range(n_perm):
        perm = rng.permutation(N)
        permuted = square[np.ix_(perm, perm)][np.triu_indices(N, 1)]
        keep = ~(np.isnan(a) | np.isnan(permuted))
        null.append(compare(RDMs(a[keep][None]), RDMs(permuted[keep][None]), METHODS[method])[0, 0])
    return np.array(null)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("with_nan", [False, True])
def test_permutation_test_replays_rebuilt_rdms(method, with_nan):
    models, data = subjects(12)
    a, b = models[0].copy(), data[0].copy()
    if with_nan:
        a[[2, 30]] = b[[5]] = np.nan
    test = permutation_test(a, b, method, n_permutations=40, seed=3)
    np.testing.assert_allclose(test.null, _rebuilt_null(a, b, method, 40, 3), atol=1e-12)
    keep = ~(np.isnan(a) | np.isnan(b))
    assert test.value == pytest.approx(compare(RDMs(a[keep][None]), RDMs(b[keep][None]), METHODS[method])[0, 0],
                                       abs=1e-12)
    assert test.p_value == (1 + (test.null >= test.value).sum()) / 41 and test.n_pairs == keep.sum()


def test_permutation_p_values_within_monte_carlo_error():
    rng = np.random.default_rng(14)
    a = rng.random(P)
    related = permutation_test(a, a + 0.5 * rng.random(P), "spearman", n_permutations=200, seed=0)
    assert related.p_value == 1 / 201
    # Unrelated RDMs: over repeated tests the p-values are uniform, so their mean is near 1/2.
    p = [permutation_test(rng.random(P), rng.random(P), "pearson", n_permutations=99, seed=k).p_value
         for k in range(40)]
    assert abs(np.mean(p) - 0.5) < 4 * np.sqrt(1 / 12 / 40)
    two = permutation_test(a, -a, "pearson", n_permutations=50, seed=0, alternative="two-sided")
    assert two.p_value == 1 / 51
    with pytest.raises(ValueError, match="alternative"):
        permutation_test(a, a, alternative="bigger")
    with pytest.raises(ValueError, match="single RDMs"):
        permutation_test(np.stack([a, a]), a)
