"""Crossnobis RDMs (pozfast.rdm(..., method="crossnobis")): against a float64 loop over the definition written
here, and against rsatoolbox's calc_rdm_crossnobis (skipped without rsatoolbox); every output form, sets,
per-fold precisions, default folds, and bad input."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import squareform

import pozfast

# rsatoolbox's own calc_rdm casts NaN into the integer descriptors of averaged conditions (its _build_rdms)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")


def _observations(seed=0, n_cond=13, n_fold=4, channels=11, shift=5.0, shuffle=True, extra=0):
    """Observations of n_cond conditions in n_fold runs (``extra`` conditions get a second observation in
    run 0), shuffled, off the origin."""
    rng = np.random.default_rng(seed)
    conds = np.repeat(np.arange(n_cond), n_fold)
    folds = np.tile(np.arange(n_fold), n_cond)
    conds, folds = np.concatenate([conds, np.arange(extra)]), np.concatenate([folds, np.zeros(extra, int)])
    patterns = rng.normal(size=(n_cond, channels))
    X = patterns[conds] + 0.7 * rng.normal(size=(len(conds), channels)) + shift
    order = rng.permutation(len(conds)) if shuffle else np.arange(len(conds))
    return X[order], conds[order], folds[order]


def _precision(channels, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3 * channels, channels))
    return np.linalg.inv(a.T @ a / len(a))


def _reference(X, conds, folds, noise=None):
    """The definition, pair by pair, in float64."""
    C, F, D = np.unique(conds), np.unique(folds), X.shape[1]

    def means(rows):
        return np.stack([X[rows & (conds == c)].mean(0) for c in C])

    terms = []
    if noise is None or not isinstance(noise, list):
        prec = np.eye(D) if noise is None else noise
        for f in F:
            terms.append((means(folds != f), means(folds == f), prec))
    else:
        for a in range(len(F)):
            for b in range(a + 1, len(F)):
                cov = (np.linalg.inv(noise[a]) + np.linalg.inv(noise[b])) / 2
                terms.append((means(folds == F[a]), means(folds == F[b]), np.linalg.inv(cov)))
    d = np.zeros((len(C), len(C)))
    for u, v, prec in terms:
        for i in range(len(C)):
            for j in range(len(C)):
                d[i, j] += (u[i] - u[j]) @ prec @ (v[i] - v[j]) / D
    return squareform(d / len(terms), checks=False)


@pytest.mark.parametrize("noise", ["identity", "precision", "per-fold"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_definition(noise, seed):
    X, conds, folds = _observations(seed, extra=3 * seed)
    prec = {"identity": None, "precision": _precision(X.shape[1]),
            "per-fold": [_precision(X.shape[1], s) for s in range(4)]}[noise]
    want = _reference(X, conds, folds, prec)
    got = pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=folds, noise=prec)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


def test_unbiased_distances_can_be_negative():
    _, conds, folds = _observations(7, n_cond=20)
    X = np.random.default_rng(8).normal(size=(len(conds), 11)) + 3  # noise alone: no condition differs
    got = pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=folds)
    assert np.abs(got - _reference(X, conds, folds)).max() <= 1e-12 * np.abs(got).max()
    assert 0.2 < (got < 0).mean() < 0.8  # kept as they are, not clamped


def test_forms_blocks_and_float32():
    X, conds, folds = _observations(2, n_cond=37, n_fold=3, channels=20)
    want = _reference(X, conds, folds)
    got = pozfast.rdm(torch.from_numpy(X), method="crossnobis", descriptor=conds, cv_descriptor=folds, block=5,
                      out="square")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert torch.equal(got, got.T) and bool((got.diagonal() == 0).all())
    assert np.abs(squareform(got.numpy(), checks=False) - want).max() <= 1e-12 * np.abs(want).max()
    single = pozfast.rdm(X.astype(np.float32), method="crossnobis", descriptor=conds.tolist(),
                         cv_descriptor=torch.from_numpy(folds), block=8)
    assert np.linalg.norm(single - want) <= 1e-5 * np.linalg.norm(want)


def test_npy_output_and_sets(tmp_path):
    X, conds, folds = _observations(3)
    stack = np.stack([X, X[:, ::-1] * 2])
    path = pozfast.rdm(stack, method="crossnobis", descriptor=conds, cv_descriptor=folds, out=tmp_path / "cn.npy")
    written = np.load(path)
    assert written.shape == (2, 13 * 12 // 2)
    for s in range(2):
        want = _reference(stack[s], conds, folds)
        assert np.abs(written[s] - want).max() <= 1e-12 * np.abs(want).max()


def test_default_folds_are_rsatoolbox_s():
    X, conds, folds = _observations(4, shuffle=False)  # in order: the k-th observation of a condition is fold k
    shuffled = np.random.default_rng(0).permutation(len(conds))
    X2, conds2 = X[shuffled], conds[shuffled]
    k_th = np.zeros(len(conds2), int)
    for c in np.unique(conds2):
        k_th[conds2 == c] = np.arange((conds2 == c).sum())
    want = _reference(X2, conds2, k_th)
    got = pozfast.rdm(X2, method="crossnobis", descriptor=conds2)
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


def test_matches_rsatoolbox():
    rsa = pytest.importorskip("rsatoolbox", reason="rsatoolbox not installed (pip install 'pozfast[test]')")
    X, conds, folds = _observations(5, n_cond=9)
    names = np.array([f"s{c:02d}" for c in conds])
    datasets = [rsa.data.Dataset(X * (1 + s), descriptors={"subj": s},
                                 obs_descriptors={"stim": names, "run": folds}) for s in range(2)]
    prec = _precision(X.shape[1])
    for noise in (None, prec, [_precision(X.shape[1], s) for s in range(4)]):
        for cv in ("run", None):
            want = rsa.rdm.calc_rdm(datasets[0], method="crossnobis", descriptor="stim", cv_descriptor=cv,
                                    noise=noise)
            got = pozfast.rdm(datasets[0], method="crossnobis", descriptor="stim", cv_descriptor=cv, noise=noise)
            assert isinstance(got, rsa.rdm.RDMs) and got.dissimilarity_measure == "crossnobis"
            assert np.abs(got.dissimilarities - want.dissimilarities).max() <= 1e-12 * np.abs(want.dissimilarities).max()
            assert got.pattern_descriptors["stim"] == list(want.pattern_descriptors["stim"])
            assert got.descriptors["cv_descriptor"] == want.descriptors["cv_descriptor"]
    both = pozfast.rdm(datasets, method="crossnobis", descriptor="stim", cv_descriptor="run")
    want = rsa.rdm.calc_rdm(datasets, method="crossnobis", descriptor="stim", cv_descriptor="run")
    assert both.n_rdm == 2
    assert np.abs(both.dissimilarities - want.dissimilarities).max() <= 1e-12 * np.abs(want.dissimilarities).max()
    assert pozfast.rdm(datasets[0], method="crossnobis", descriptor="stim", cv_descriptor="run").rdm_descriptors["subj"] == [0]


def test_bad_input():
    X, conds, folds = _observations(6)
    with pytest.raises(ValueError, match="needs descriptor="):
        pozfast.rdm(X, method="crossnobis")
    with pytest.raises(ValueError, match="options of method='crossnobis'"):
        pozfast.rdm(X, cv_descriptor=folds)
    with pytest.raises(ValueError, match="options of method='crossnobis'"):
        pozfast.rdm(X, method="euclidean", noise=np.eye(X.shape[1]))
    with pytest.raises(ValueError, match="one label per observation"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds[:-1])
    with pytest.raises(TypeError, match="one label per observation"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=3)
    with pytest.raises(ValueError, match=r"\(11, 11\) noise precision"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=folds, noise=np.eye(3))
    with pytest.raises(ValueError, match="one precision matrix per fold: 4 folds, got 2"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=folds, noise=[np.eye(11)] * 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=folds, noise=np.full((11, 11), np.nan))
    with pytest.raises(ValueError, match="at least 2 folds"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=np.zeros(len(conds)))
    holes = folds.copy()
    holes[(conds == 2) & (folds == 1)] = 0
    with pytest.raises(ValueError, match="condition 2 has no observation in fold 1"):
        pozfast.rdm(X, method="crossnobis", descriptor=conds, cv_descriptor=holes)
    X2, conds2, _ = _observations(6, extra=2)
    with pytest.raises(ValueError, match="folds cannot be inferred; pass cv_descriptor"):
        pozfast.rdm(X2, method="crossnobis", descriptor=conds2)
    with pytest.raises(ValueError, match="contains NaN or inf"):
        bad = X.copy()
        bad[3, 2] = np.inf
        pozfast.rdm(bad, method="crossnobis", descriptor=conds, cv_descriptor=folds)


def test_cli(tmp_path):
    import contextlib
    import io
    import json

    from pozfast.cli import main

    X, conds, folds = _observations(9, n_cond=7)
    names = [f"stim{c}" for c in conds]
    np.save(tmp_path / "obs.npy", X)
    (tmp_path / "conds.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "runs.txt").write_text("\n".join(map(str, folds)) + "\n")
    prec = _precision(X.shape[1])
    np.save(tmp_path / "prec.npy", prec)

    def run(*args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["rdm", str(tmp_path / "obs.npy"), *map(str, args), "--no-progress"])
        return status, err.getvalue()

    status, err = run("--method", "crossnobis", "--conditions", tmp_path / "conds.txt", "--folds",
                      tmp_path / "runs.txt", "--noise", tmp_path / "prec.npy", "--plot", "--out", tmp_path / "cn")
    assert status == 0, err
    want = _reference(X, np.array(names), folds, prec)
    assert np.abs(np.load(tmp_path / "cn" / "rdm.npy") - want).max() <= 1e-12 * np.abs(want).max()
    assert json.loads((tmp_path / "cn" / "result.json").read_text())["n_items"] == 7
    assert (tmp_path / "cn" / "rdm.png").is_file()
    assert run("--method", "crossnobis", "--out", tmp_path / "x")[0] == 2  # no --conditions
    status, err = run("--folds", tmp_path / "runs.txt", "--out", tmp_path / "y")
    assert status == 2 and "--folds needs --method crossnobis" in err
