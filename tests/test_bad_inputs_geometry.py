"""Bad inputs to relu_count and the geometry functions, one case per line: the call, the exception it must
raise and what its message must say (the argument's name and what was wrong with it)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import squareform

import pozfast
from pozfast import geometry as R

X = np.random.default_rng(0).standard_normal((6, 4))  # 6 items, 4 features
RDM6 = R.rdm(X)  # condensed, 15 pairs (numpy in, numpy out)
POZ = np.linspace(0, 1, 4)
T = torch.randn(3, 4)


def put(a: np.ndarray, value: float, index: int = 1) -> np.ndarray:
    """A float64 copy of a with one entry replaced."""
    a = np.array(a, dtype=np.float64)
    a.flat[index] = value
    return a


def overlapping_out() -> None:
    flat = torch.randn(13)
    pozfast.relu_count(flat[:12].view(3, 4), out=flat[1:].view(3, 4))


CASES = [
    # relu_count
    (lambda: pozfast.relu_count(torch.ones(3, 4, dtype=torch.int64)), TypeError, "x must be a float32"),
    (lambda: pozfast.relu_count(np.ones((3, 4))), TypeError, "x must be a torch.Tensor"),
    (lambda: pozfast.relu_count(T, True), TypeError, "channel_dim must be an int, got bool"),
    (lambda: pozfast.relu_count(T, 1.0), TypeError, "channel_dim must be an int, got float"),
    (lambda: pozfast.relu_count(T, "1"), TypeError, "channel_dim must be an int, got str"),
    (lambda: pozfast.relu_count(T, 2), ValueError, "channel_dim must be an int in"),
    (lambda: pozfast.relu_count(T, out=np.empty((3, 4))), TypeError, "out must be a torch.Tensor"),
    (lambda: pozfast.relu_count(T, out=torch.empty(3, 4, dtype=torch.float64)), ValueError, "out must match x"),
    (overlapping_out, RuntimeError, "out overlaps x"),
    (lambda: pozfast.relu_count(T, out=torch.empty(3, 4, requires_grad=True)), RuntimeError, "out is a leaf Variable"),
    (lambda: pozfast.relu_count(torch.randn(3, 4, requires_grad=True), inplace=True), RuntimeError, "leaf Variable"),
    # rdm
    (lambda: R.rdm([["a", "b"], ["c", "d"]]), TypeError, "X must hold real numbers, got strings"),
    (lambda: R.rdm(np.array([["a", "b"], ["c", "d"]])), TypeError, "X must hold real numbers, got strings"),
    (lambda: R.rdm([[1.0, 2.0], [3.0]]), ValueError, "X must be a rectangular array"),
    (lambda: R.rdm(X.astype(np.complex128)), TypeError, "X must hold real numbers, got complex"),
    (lambda: R.rdm(np.ones(4)), ValueError, "X must be 2-D"),
    (lambda: R.rdm(np.ones((2, 3, 4, 5))), ValueError, "X must be 2-D"),
    (lambda: R.rdm(X, method="manhattan"), ValueError, "method must be one of 'correlation'"),
    (lambda: R.rdm(X, method="mahalanobis"), ValueError, "rsatoolbox's Mahalanobis distance"),
    (lambda: R.rdm(X, method=3), TypeError, "method must be a string"),
    (lambda: R.rdm([X, X[:5]]), ValueError, r"X\[1\] has 5 items \(rows\) but X\[0\] has 6"),
    (lambda: R.rdm(X, descriptor="conds"), ValueError, "descriptor='conds' averages rsatoolbox Datasets"),
    (lambda: R.rdm(X, dtype=torch.int64), TypeError, "dtype must be a floating dtype"),
    (lambda: R.rdm(np.empty((0, 3))), ValueError, "X needs at least 2 rows"),
    (lambda: R.rdm(np.empty((3, 0))), ValueError, "X has no features"),
    (lambda: R.rdm(put(X, np.inf)), ValueError, "X contains NaN or inf"),
    (lambda: R.rdm(X, block=0), ValueError, "block must be >= 1"),
    (lambda: R.rdm(X, block=True), TypeError, "block must be an int, got bool"),
    (lambda: R.rdm(X, block=2.5), TypeError, "block must be an int, got float"),
    (lambda: R.rdm(X, block="8"), TypeError, "block must be an int, got str"),
    (lambda: R.rdm(X, out="nope"), ValueError, "out must be 'condensed'"),
    # compare_rdms
    (lambda: R.compare_rdms(RDM6, RDM6, "kendall"), ValueError, "rsatoolbox's Kendall's tau-b"),
    (lambda: R.compare_rdms(RDM6, RDM6, "pearsn"), ValueError, "method must be one of 'pearson' \\(rsatoolbox 'corr'\\)"),
    (lambda: R.compare_rdms(1 - squareform(RDM6), RDM6), ValueError, "a is a square symmetric matrix with a unit diag"),
    (lambda: R.compare_rdms(RDM6, 1 - squareform(RDM6)), ValueError, "pass b_kind='similarity'"),
    (lambda: R.compare_rdms(RDM6, RDM6, a_kind="sim"), ValueError, "a kind must be"),
    (lambda: R.compare_rdms(RDM6, RDM6[:10]), ValueError, "a and b are RDMs of different N: 6 vs 5"),
    (lambda: R.compare_rdms(np.ones(5), np.ones(5)), ValueError, "a has 5 entries"),
    (lambda: R.compare_rdms(np.ones((2, 3, 4)), RDM6), ValueError, r"a\[0\] must be a condensed vector or a square"),
    (lambda: R.compare_rdms(put(RDM6, np.inf), RDM6), ValueError, "a contains inf"),
    (lambda: R.compare_rdms(RDM6, put(RDM6, -np.inf), "spearman"), ValueError, "b contains inf"),
    (lambda: R.compare_rdms(["a", "b", "c"], RDM6[:3]), TypeError, "a must hold real numbers"),
    # rdm_similarity
    (lambda: R.rdm_similarity(X, X[:5]), ValueError, "X and Y must have the same number of items"),
    (lambda: R.rdm_similarity(X, RDM6[:10], y_kind="rdm"), ValueError, "the RDM Y has 5"),
    (lambda: R.rdm_similarity(X, X, "spearman"), ValueError, "method must be 'pearson' or 'r2'"),
    (lambda: R.rdm_similarity(X, X, y_kind="square"), ValueError, "y_kind must be"),
    (lambda: R.rdm_similarity(X, np.corrcoef(X)), ValueError, "Y is a square symmetric matrix with a unit diagonal: a "
                                                             "similarity matrix.*y_kind='similarity'.*y_kind='features'"),
    (lambda: R.rdm_similarity(X, np.corrcoef(X), y_kind="rdm"), ValueError, "pass y_kind='similarity'"),
    (lambda: R.rdm_similarity(X, np.stack([RDM6, RDM6]), y_kind="rdm"), ValueError, "Y holds 2 RDMs"),
    (lambda: R.rdm_similarity(np.stack([X, X]), X), ValueError, r"X must be one \(N, D\) feature matrix, got a set"),
    (lambda: R.rdm_similarity(X, X, path="fast"), ValueError, "path must be"),
    (lambda: R.rdm_similarity(X, RDM6, path="features"), ValueError, "needs Y as features"),
    (lambda: R.rdm_similarity(X, X, path="tiled", block=0), ValueError, "block must be >= 1"),
    (lambda: R.rdm_similarity(X, X, path="tiled", block=2.5), TypeError, "block must be an int"),
    (lambda: R.rdm_similarity(X, put(RDM6, np.inf)), ValueError, "Y contains inf"),
    (lambda: R.rdm_similarity(X, put(X, np.nan)), ValueError, "Y contains NaN"),
    (lambda: R.rdm_similarity(X, np.ones((6, 3, 2))), ValueError, r"Y must be one \(N, D\) feature matrix"),
    # insertion_curve
    (lambda: R.insertion_curve(X[0], POZ), ValueError, "X must be 2-D"),
    (lambda: R.insertion_curve(X, POZ, steps=True), TypeError, "steps must be an int, got bool"),
    (lambda: R.insertion_curve(X, POZ, steps=2.5), TypeError, "steps must be an int, got float"),
    (lambda: R.insertion_curve(X, POZ, steps=0), ValueError, "steps must be >= 1"),
    (lambda: R.insertion_curve(X, POZ, order="up"), ValueError, "order must be"),
    (lambda: R.insertion_curve(X, POZ, method="kendall"), ValueError, "method must be"),
    (lambda: R.insertion_curve(X, POZ[:3]), ValueError, "poz must have one value per feature"),
    (lambda: R.insertion_curve(X, POZ.reshape(2, 2)), ValueError, "poz must have one value per feature"),
    (lambda: R.insertion_curve(X, put(POZ, np.nan)), ValueError, "poz contains NaN or inf"),
    (lambda: R.insertion_curve(X, put(POZ, np.inf)), ValueError, "poz contains NaN or inf"),
    (lambda: R.insertion_curve(X, ["a", "b", "c", "d"]), TypeError, "poz must hold real numbers"),
    (lambda: R.insertion_curve(X, POZ, reference=RDM6[:10]), ValueError, "the reference RDM has 5"),
    (lambda: R.insertion_curve(X, POZ, reference=put(RDM6, np.inf)), ValueError, "reference contains inf"),
    (lambda: R.insertion_curve(X, POZ, block=0), ValueError, "block must be >= 1"),
    (lambda: R.insertion_curve(X, POZ, block=True), TypeError, "block must be an int, got bool"),
    (lambda: R.insertion_curve(X, POZ, block=2.5), TypeError, "block must be an int, got float"),
]


@pytest.mark.parametrize("call, error, message", CASES)
def test_bad_input_is_refused_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()
