"""pozfast.rdm, compare_rdms, rdm_similarity and insertion_curve against float64 references
(numpy corrcoef, scipy pdist / scipy.stats, rsatoolbox, naive loops)."""

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, spearmanr

import pozfast
from pozfast import geometry as R
from pozfast.curves import _step_counts
from pozfast.ops import rdm_tiles
from pozfast.ops.rdm_tiles import RefMode, pack_condensed, pair_moments
from pozfast.rows import row_stats
from tests.conftest import available_backends


def data(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, d))
    if kind == "low_rank":
        return rng.standard_normal((n, 2)) @ rng.standard_normal((2, d)) + 0.01 * rng.standard_normal((n, d))
    x = rng.standard_normal((n, d)) + 0.3  # sparse ReLU-like features with a large mean
    x[x < 0.8] = 0
    x[:, 0] = 1 + rng.random(n)  # no all-zero row
    return x + 100.0


@pytest.mark.parametrize("kind", ["random", "low_rank", "sparse"])
@pytest.mark.parametrize("n", [2, 3, 37, 1000])
@pytest.mark.parametrize("block", [37, 1024])
def test_rdm_matches_scipy(kind, n, block):
    x = data(kind, n, 23, seed=n)
    ref = pdist(x, "correlation")
    d64 = R.rdm(x, block=block)
    assert isinstance(d64, np.ndarray) and d64.dtype == np.float64 and d64.shape == (n * (n - 1) // 2,)
    np.testing.assert_allclose(d64, ref, rtol=0, atol=1e-12)
    d32 = R.rdm(torch.from_numpy(x).float(), block=block, dtype=torch.float32)
    assert d32.dtype == torch.float32
    np.testing.assert_allclose(d32.numpy(), ref, rtol=0, atol=2e-5 if kind != "low_rank" else 1e-4)
    default = R.rdm(torch.from_numpy(x).float(), block=block)  # torch in, torch out, float64 unless asked
    assert isinstance(default, torch.Tensor) and default.dtype == torch.float64
    torch.testing.assert_close(default, d32.double(), rtol=0, atol=0)
    sq = R.rdm(x, out="square", block=block)
    np.testing.assert_allclose(sq, squareform(ref), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sq, 1 - np.corrcoef(x), rtol=0, atol=1e-12)


def test_file_output_equals_memory_and_is_atomic(tmp_path, monkeypatch):
    x = data("random", 53, 9)
    path = R.rdm(x, out=str(tmp_path / "d.npy"), block=8)
    np.testing.assert_array_equal(np.load(path), R.rdm(x, block=8))

    calls = {"n": 0}
    real = rdm_tiles.pack_condensed

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(rdm_tiles, "pack_condensed", failing)
    with pytest.raises(KeyboardInterrupt):
        R.rdm(x, out=str(tmp_path / "e.npy"), block=8)
    assert not (tmp_path / "e.npy").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d.npy"]


def test_worked_example_from_the_deck():
    a = [0.91, 0.76, 0.3, 0.7, 0.9, 0]
    b = [0.4, 0.7, 0.6, 0.3, 0.7, 0]
    c = [0.02, 0.4, 0.9, 0.2, 0.2, 0]
    x = np.array([a, b, c])
    r = 1 - squareform(R.rdm(x))
    assert (round(r[0, 1], 3), round(r[1, 2], 3), round(r[0, 2], 3)) == (0.617, 0.556, -0.182)
    r5 = 1 - squareform(R.rdm(x[:, :5]))
    assert (round(r5[0, 1], 3), round(r5[1, 2], 3), round(r5[0, 2], 3)) == (-0.065, 0.403, -0.939)


def test_zero_variance_rows_are_nan_with_a_warning():
    x = data("random", 10, 6)
    x[3] = 2.5
    x[7] = 0
    with pytest.warns(R.ZeroVarianceWarning, match="2 of 10 rows"):
        d = squareform(R.rdm(x), checks=False)
    nan_rows = {i for i in range(10) if np.isnan(np.delete(d[i], i)).all()}
    assert nan_rows == {3, 7}
    assert not np.isnan(d[np.ix_([0, 1, 2], [4, 5, 6])]).any()
    with pytest.warns(R.ZeroVarianceWarning):
        sq = R.rdm(x, out="square")
    assert np.isnan(sq[3]).all() and np.isnan(sq[:, 7]).all()


EPS64 = np.finfo(np.float64).eps


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 8), d=st.integers(2, 12), seed=st.integers(0, 2**32 - 1),
       mean_bound=st.sampled_from([0.0, 1.0, 1e3, 1e6]), log_spread=st.floats(-3, 3))
def test_rdm_matches_scipy_for_large_means_and_small_spreads(n, d, seed, mean_bound, log_spread):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-mean_bound, mean_bound, n)
    spreads = 10.0 ** (log_spread + rng.uniform(-0.5, 0.5, n))
    x = means[:, None] + spreads[:, None] * rng.standard_normal((n, d))
    with warnings.catch_warnings():
        warnings.simplefilter("error", R.ZeroVarianceWarning)  # a spread far above rounding is not constant
        got = R.rdm(x)
    # Rounding moves each centred row by about eps * max|x|, so r is known to eps * kappa, kappa being a
    # row's max |x| over its rms spread: scipy and pozfast each stay within a few times that.
    c = x - x.mean(1, keepdims=True)
    kappa = np.abs(x).max(1) / np.sqrt((c * c).mean(1))
    i, j = np.triu_indices(n, 1)
    assert (np.abs(got - pdist(x, "correlation")) <= 4 * EPS64 * (kappa[i] + kappa[j]) + 1e-14).all()


def test_huge_mean_with_unit_spread_is_not_zero_variance():
    x = 1e5 + data("random", 6, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", R.ZeroVarianceWarning)
        np.testing.assert_allclose(R.rdm(x), pdist(x, "correlation"), rtol=0, atol=1e-9)


def test_rows_constant_up_to_rounding_are_zero_variance():
    x = data("random", 5, 10)
    x[1] = 0.1
    x[1, 3] = np.nextafter(0.1, 1)  # one ulp apart: rounding, not signal
    x[2] = 3e5 + np.arange(10) * 1e-6  # a tiny spread on a huge value, still far above rounding
    with pytest.warns(R.ZeroVarianceWarning, match="1 of 5 rows"):
        d = squareform(R.rdm(x), checks=False)
    assert np.isnan(np.delete(d[1], 1)).all()
    assert not np.isnan(np.delete(d[2], [1, 2])).any()
    # The insertion curve's last step (all features) skips the same pairs as the RDM.
    with pytest.warns(R.ZeroVarianceWarning):
        curve = R.insertion_curve(x, np.linspace(0, 1, 10), steps=3, method="pearson")
    assert curve.n_pairs[-1] == 6


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_float32_rows_at_the_ends_of_the_range(backend):
    rng = np.random.default_rng(5)
    huge = rng.choice([-3e38, 3e38], size=(7, 9)).astype(np.float32)  # squares overflow float32
    huge[:, 0] = rng.uniform(-1e38, 1e38, 7)
    tiny = (huge / 3e38 * 1e-30).astype(np.float32)  # squares underflow float32
    y = rng.standard_normal((7, 4)).astype(np.float32)
    poz = np.linspace(0, 1, 9)
    for x in (huge, tiny):
        ref = pdist(x.astype(np.float64), "correlation")
        with pozfast.use_backend(backend):
            got = R.rdm(torch.from_numpy(x))
            sim = R.rdm_similarity(torch.from_numpy(x), y, path="tiled", block=4)
            curve = R.insertion_curve(torch.from_numpy(x), poz, steps=3, method="pearson", block=4)
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=2e-6)
        assert sim.value == pytest.approx(pearsonr(ref, pdist(y, "correlation")).statistic, abs=1e-5)
        want = naive_curve(x.astype(np.float64), poz, "low_to_high", 3, None, "pearson")
        np.testing.assert_allclose(curve.values, [v for _, v, _ in want], rtol=0, atol=1e-5)
    with pozfast.use_backend(backend):
        square = R.rdm(torch.from_numpy(huge), out="square", block=4).numpy()
    np.testing.assert_allclose(square, squareform(pdist(huge.astype(np.float64), "correlation")), rtol=0, atol=2e-6)


def test_float64_rows_at_the_ends_of_the_range():
    x = data("random", 6, 8)
    for scale in (1e307, 1e-310):  # squares overflow / underflow even in float64
        np.testing.assert_allclose(R.rdm(x * scale), pdist(x, "correlation"), rtol=0, atol=1e-12)


def test_inf_in_a_given_rdm_is_refused_where_nan_is_skipped():
    x = data("random", 6, 4)
    d = pdist(x, "correlation")
    with_nan, with_inf = d.copy(), d.copy()
    with_nan[2] = np.nan
    with_inf[2] = np.inf
    assert R.compare_rdms(with_nan, d).n_pairs == 14
    assert R.rdm_similarity(x, with_nan).n_pairs == 14
    assert R.insertion_curve(x, np.arange(4), steps=2, reference=with_nan).n_pairs[-1] == 14
    for call in (lambda: R.compare_rdms(with_inf, d), lambda: R.compare_rdms(d, squareform(with_inf), "spearman"),
                 lambda: R.rdm_similarity(x, with_inf), lambda: R.rdm_similarity(x, -with_inf, path="tiled"),
                 lambda: R.insertion_curve(x, np.arange(4), reference=with_inf)):
        with pytest.raises(ValueError, match="contains inf"):
            call()


def test_numpy_integers_are_accepted_where_ints_are_expected():
    x = data("random", 9, 5)
    np.testing.assert_array_equal(R.rdm(x, block=np.int64(4)), R.rdm(x, block=4))
    curve = R.insertion_curve(x, np.arange(5), steps=np.int32(2), block=np.int64(3))
    assert curve.n_features == [2, 5]


def test_int64_condensed_index_beyond_46341_items(tmp_path):
    # A sparse memory-mapped file of N(N-1)/2 float32 for N = 70,000 (indices past 2^31): only the touched pages exist.
    from numpy.lib.format import open_memmap

    n = 70_000
    out = open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(n * (n - 1) // 2,))
    tile = torch.tensor([[0.25, 0.5, 0.75], [0.1, 0.2, 0.3]], dtype=torch.float32)
    bad = torch.zeros(n, dtype=torch.uint8)
    i0, j0 = n - 5, n - 3
    pack_condensed(tile, i0, j0, n, bad, torch.from_numpy(out))
    for r in range(2):
        for c in range(3):
            i, j = i0 + r, j0 + c
            k = i * n - i * (i + 1) // 2 + (j - i - 1)  # Python ints: exact
            assert k > 2**31
            assert out[k] == pytest.approx(1 - tile[r, c].item())


@pytest.mark.parametrize("backend", available_backends("cpu", triton=False))  # Triton fuses these into its tiles
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tile_kernels_match_torch(backend, dtype):
    rng = np.random.default_rng(1)
    n, i0, j0, rows, cols = 40, 5, 3, 9, 13
    tile = torch.from_numpy(rng.standard_normal((rows, cols))).to(dtype)
    bad = torch.zeros(n, dtype=torch.uint8)
    bad[[6, 10]] = 1
    expected = torch.full((n * (n - 1) // 2,), -7.0, dtype=dtype)
    with pozfast.use_backend("torch"):
        pack_condensed(tile, i0, j0, n, bad, expected)
    got = torch.full_like(expected, -7.0)
    with pozfast.use_backend(backend):
        pack_condensed(tile, i0, j0, n, bad, got)
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    torch.testing.assert_close(got.nan_to_num(), expected.nan_to_num(), rtol=0, atol=0)

    s_r, s_c = torch.from_numpy(rng.standard_normal(rows)), torch.from_numpy(rng.standard_normal(cols))
    q_r, q_c = s_r ** 2 / 4 + torch.from_numpy(rng.random(rows)), s_c ** 2 / 4 + torch.from_numpy(rng.random(cols))
    q_r[2] = s_r[2] ** 2 / 4  # zero variance: skipped
    cond = torch.from_numpy(rng.random(n * (n - 1) // 2)).to(dtype)
    cond[::7] = float("nan")
    for ref, mode in [(tile.flip(0).contiguous(), RefMode.DISSIMILARITY), (tile.flip(1).contiguous(), RefMode.GRAM),
                      (cond, RefMode.CONDENSED)]:
        start = torch.arange(6, dtype=torch.float64)  # the sums are added to what is there
        want, have = start.clone(), start.clone()
        with pozfast.use_backend("torch"):
            pair_moments(tile, i0, j0, n, s_r, q_r, s_c, q_c, 4.0, 1e-10, ref, mode, want)
        with pozfast.use_backend(backend):
            pair_moments(tile, i0, j0, n, s_r, q_r, s_c, q_c, 4.0, 1e-10, ref, mode, have)
        torch.testing.assert_close(have, want, rtol=1e-9, atol=1e-9)  # float64 pair arithmetic everywhere
        assert have[0] == want[0] and have[0] > start[0]


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        R.rdm(np.ones((1, 4)))
    with pytest.raises(ValueError, match="2-D"):
        R.rdm(np.ones(4))
    x = data("random", 5, 3)
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        R.rdm(x)
    with pytest.raises(ValueError, match="out must be"):
        R.rdm(np.random.rand(4, 3), out="d.txt")
    with pytest.raises(ValueError, match="not such a length"):
        R.compare_rdms(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="different N"):
        R.compare_rdms(np.ones(6), np.ones(10))
    asym = np.random.rand(4, 4)
    with pytest.raises(ValueError, match="not symmetric"):
        R.compare_rdms(asym, asym)
    with pytest.raises(ValueError, match="same number of items"):
        R.rdm_similarity(np.random.rand(5, 3), np.random.rand(6, 3))
    with pytest.raises(ValueError, match="the RDM Y has 4"):
        R.rdm_similarity(np.random.rand(5, 3), np.random.rand(6), y_kind="rdm")
    with pytest.raises(ValueError, match="one value per feature"):
        R.insertion_curve(np.random.rand(5, 3), np.random.rand(4))
    with pytest.raises(ValueError, match="Kendall's tau-b, which pozfast does not support"):
        R.compare_rdms(np.ones(6), np.ones(6), "kendall")


def _tau_a_bruteforce(x, y):
    n = len(x)
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def test_compare_rdms_against_scipy():
    rng = np.random.default_rng(3)
    a, b = pdist(rng.random((20, 4)), "correlation"), pdist(rng.random((20, 4)), "correlation")
    a[[3, 50]] = np.nan
    b[7] = np.nan
    keep = ~(np.isnan(a) | np.isnan(b))
    c = R.compare_rdms(a, b)
    assert c.n_pairs == keep.sum() == 190 - 3
    assert c.value == pytest.approx(pearsonr(a[keep], b[keep]).statistic, abs=1e-12)
    assert R.compare_rdms(a, b, "r2").value == pytest.approx(c.value ** 2, abs=1e-12)
    assert R.compare_rdms(a, b, "spearman").value == pytest.approx(spearmanr(a[keep], b[keep]).statistic, abs=1e-12)
    # ties: rounded values
    ar, br = np.round(a, 1), np.round(b, 1)
    assert R.compare_rdms(ar, br, "kendall_tau_a").value == pytest.approx(_tau_a_bruteforce(ar[keep], br[keep]), abs=1e-12)
    cos = a[keep] @ b[keep] / np.linalg.norm(a[keep]) / np.linalg.norm(b[keep])
    assert R.compare_rdms(a, b, "cosine").value == pytest.approx(cos, abs=1e-12)
    # square input and similarity input give the same answers
    sq = squareform(np.nan_to_num(a, nan=0.5))
    assert R.compare_rdms(sq, b).value == pytest.approx(R.compare_rdms(np.nan_to_num(a, nan=0.5), b).value, abs=1e-12)
    sim = 1 - b
    assert R.compare_rdms(a, sim, "spearman", b_kind="similarity").value == pytest.approx(
        R.compare_rdms(a, b, "spearman").value, abs=1e-12)


def test_parity_with_rsatoolbox():
    rsa = pytest.importorskip("rsatoolbox", reason="rsatoolbox not installed (pip install 'pozfast[test]')")
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare

    rng = np.random.default_rng(4)
    x, y = rng.random((25, 7)), rng.random((25, 5))
    ra, rb = calc_rdm(Dataset(x), method="correlation"), calc_rdm(Dataset(y), method="correlation")
    np.testing.assert_allclose(R.rdm(x), ra.get_vectors()[0], atol=1e-12)
    for ours, theirs in [("pearson", "corr"), ("spearman", "spearman"), ("kendall_tau_a", "tau-a"), ("cosine", "cosine")]:
        want = float(compare(ra, rb, method=theirs)[0, 0])
        assert R.compare_rdms(R.rdm(x), R.rdm(y), ours).value == pytest.approx(want, abs=1e-10), ours
    del rsa


@pytest.mark.parametrize("path", ["features", "tiled"])
def test_streaming_similarity_equals_materialised(path):
    x, y = data("sparse", 61, 9, 5), data("low_rank", 61, 4, 6)
    want = R.compare_rdms(R.rdm(x), R.rdm(y))
    got = R.rdm_similarity(x, y, path=path, block=16)
    assert got.path == path and got.n_pairs == want.n_pairs
    assert got.value == pytest.approx(want.value, abs=1e-10)
    assert R.rdm_similarity(x, y, "r2", path=path, block=16).value == pytest.approx(want.value ** 2, abs=1e-10)


def test_streaming_against_a_given_rdm_with_nan_and_zero_variance():
    x = data("random", 40, 6, 7)
    x[5] = 1.0
    human = pdist(data("random", 40, 3, 8), "correlation")
    human[::11] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        want = R.compare_rdms(R.rdm(x), human)
        got = R.rdm_similarity(x, human, block=9)
        got_square = R.rdm_similarity(x, squareform(np.nan_to_num(human)), block=9)
        assert R.rdm_similarity(x, np.random.rand(40, 100)).path == "tiled"  # D_A + D_B >= N / 2
    assert got.path == "tiled" and got.n_pairs == want.n_pairs < 780
    assert got.value == pytest.approx(want.value, abs=1e-10)
    assert np.isfinite(got_square.value)
    assert R.rdm_similarity(np.random.rand(400, 5), np.random.rand(400, 6)).path == "features"


def naive_curve(x, poz, order, steps, reference, method):
    perm = np.argsort(poz if order == "low_to_high" else -poz, kind="stable")
    ref = pdist(x, "correlation") if reference is None else reference
    out = []
    for k in _step_counts(x.shape[1], steps):
        with np.errstate(all="ignore"):
            d = pdist(x[:, perm[:k]], "correlation")
        keep = ~(np.isnan(d) | np.isnan(ref))
        if method == "spearman":
            v = spearmanr(np.round(d[keep], 10), ref[keep]).statistic
        else:
            v = pearsonr(d[keep], ref[keep]).statistic
            v = v * v if method == "r2" else v
        out.append((k, v, int(keep.sum())))
    return out


@pytest.mark.parametrize("order", ["low_to_high", "high_to_low"])
@pytest.mark.parametrize("method,with_ref", [("r2", False), ("pearson", True), ("spearman", True)])
def test_insertion_curve_equals_naive_loop(order, method, with_ref):
    x = data("sparse", 45, 30, 9) - 100
    x[:, 0] = 0  # so that early steps over high-PoZ features have constant rows
    poz = (x == 0).mean(0) + np.linspace(0, 1e-3, 30)
    reference = pdist(data("random", 45, 5, 10), "correlation") if with_ref else None
    if reference is not None:
        reference[::13] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        curve = R.insertion_curve(x, poz, order=order, steps=7, reference=reference, method=method, block=16)
    want = naive_curve(x, poz, order, 7, reference, method)
    assert curve.n_features == [k for k, _, _ in want]
    assert curve.n_pairs == [p for _, _, p in want]
    np.testing.assert_allclose(curve.values, [v for _, v, _ in want], rtol=0, atol=1e-6)
    assert curve.fractions[-1] == 1.0


def test_curve_plot_and_poz_from_a_report(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU())
    xs = torch.randn(30, 6)
    report = pozfast.apoz(model, [xs], progress=False)
    with torch.no_grad():
        feats = model(xs)
    keep = feats.std(0) > 0  # features that vary
    feats = feats[:, keep]
    entry = report["1"]
    entry_apoz = entry.apoz[keep]
    low = R.insertion_curve(feats, entry_apoz, steps=4)
    high = R.insertion_curve(feats, entry_apoz, order="high_to_low", steps=4)
    png = low.plot(tmp_path / "c.png", others=[high])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert low.value_at(1.0) == pytest.approx(1.0)
    assert set(low.to_dict()) >= {"fractions", "values", "n_pairs", "n_features"}


def _distributed_worker(rank, world, init_file, out_dir):
    import json
    from pathlib import Path

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = data("sparse", 50, 12, 1), data("random", 50, 4, 2)
        poz = np.linspace(0, 1, 12)
        result = {
            "features": R.rdm_similarity(x, y, path="features").value,
            "tiled": R.rdm_similarity(x, y, path="tiled", block=8).value,
            "curve": R.insertion_curve(x, poz, steps=5, block=8).values,
            "pairs": R.insertion_curve(x, poz, steps=5, block=8).n_pairs,
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_equals_single_process(tmp_path):
    import json

    torch.multiprocessing.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    x, y = data("sparse", 50, 12, 1), data("random", 50, 4, 2)
    poz = np.linspace(0, 1, 12)
    single = R.insertion_curve(x, poz, steps=5, block=8)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["features"] == pytest.approx(R.rdm_similarity(x, y, path="features").value, abs=1e-12)
        assert got["tiled"] == pytest.approx(R.rdm_similarity(x, y, path="tiled", block=8).value, abs=1e-12)
        np.testing.assert_allclose(got["curve"], single.values, atol=1e-12)
        assert got["pairs"] == single.n_pairs


def test_cli(tmp_path):
    import json
    import subprocess
    import sys

    x, y = data("sparse", 30, 8, 3), data("random", 30, 3, 4)
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(y), tmp_path / "y.pt")
    np.save(tmp_path / "poz.npy", np.linspace(0, 1, 8))
    run = lambda *a: subprocess.run([sys.executable, "-m", "pozfast.cli", "rdm", *map(str, a), "--no-progress"],  # noqa: E731
                                    capture_output=True, text=True, check=False)
    res = run(tmp_path / "x.npy", "--out", tmp_path / "a")
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(np.load(tmp_path / "a" / "rdm.npy"), pdist(x, "correlation"), atol=1e-12)
    res = run(tmp_path / "x.npy", "--compare", tmp_path / "y.pt", "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    got = json.loads((tmp_path / "b" / "result.json").read_text())
    assert got["value"] == pytest.approx(pearsonr(pdist(x, "correlation"), pdist(y, "correlation")).statistic, abs=1e-10)
    res = run(tmp_path / "x.npy", "--curve", tmp_path / "poz.npy", "--steps", 4, "--out", tmp_path / "c")
    assert res.returncode == 0, res.stderr
    curves = json.loads((tmp_path / "c" / "result.json").read_text())
    assert set(curves) == {"low_to_high", "high_to_low"} and (tmp_path / "c" / "curve.png").exists()
    bad = run(tmp_path / "missing.npy", "--out", tmp_path / "never")
    assert bad.returncode != 0 and "no file" in bad.stderr and not (tmp_path / "never").exists()


# These run Triton on CPU tensors, interpreted; on a GPU machine tests/test_gpu_paths.py runs it on CUDA tensors.
triton_forced = pytest.mark.skipif(not pozfast.backends()["triton"].available or os.environ.get("TRITON_INTERPRET") != "1",
                                   reason=f"triton not interpreted here: {pozfast.backends()['triton'].reason}")


@triton_forced
@pytest.mark.parametrize("n,d", [(2, 3), (37, 19), (70, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_triton_tiles_match_references(n, d, dtype):
    x = torch.from_numpy(data("sparse", n, d, n)).to(dtype)
    if n > 2:
        x[1] = 3.0  # a zero-variance row: NaN pairs, skipped in comparisons
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        want = R.rdm(x)
        with pozfast.use_backend("triton"):
            got = R.rdm(x)
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0, atol=tol)
        y = torch.from_numpy(data("random", n, 5, n + 1)).to(dtype)
        human = torch.from_numpy(pdist(data("random", n, 4, n + 2), "correlation"))
        human[::5] = float("nan")
        for other in (y, human):
            want_c = R.rdm_similarity(x, other, path="tiled", block=8)
            with pozfast.use_backend("triton"):
                got_c = R.rdm_similarity(x, other, path="tiled")
            assert got_c.n_pairs == want_c.n_pairs
            if n > 2:
                assert got_c.value == pytest.approx(want_c.value, abs=1e-10 if dtype == torch.float64 else 1e-5)


@triton_forced
@pytest.mark.parametrize("block", [5, 16, 37, 100])
def test_triton_condensed_rdm_by_block_rows_as_written_to_a_file_from_the_gpu(block):
    # A condensed result off the GEMMs' device (a .npy file of GPU features) is written a block row at a
    # time; the interpreter has no second device, so the staged path is called directly.
    x = torch.from_numpy(data("sparse", 70, 9, 3)).float()
    x[4] = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        want = R.rdm(x, dtype=torch.float32)
        stats = row_stats(x, centre=True)
    got = torch.full_like(want, 7.0)
    with pozfast.use_backend("triton"):
        rdm_tiles._triton_condensed(x, got, stats, torch.float32, block, x.device, staged=True, progress=False)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", ["cuda-native", "triton"])
@pytest.mark.parametrize("method", ["spearman", "kendall_tau_a"])
def test_ranking_follows_the_default_rule_when_a_gpu_backend_is_forced(backend, method):
    # Ranks run on host arrays, also within a comparison of GPU RDMs: a backend forced for the GPU is not theirs.
    a, b = pdist(data("random", 40, 6, 1), "correlation"), pdist(data("random", 40, 3, 2), "correlation")
    want = R.compare_rdms(a, b, method)
    with pozfast.use_backend(backend):
        got = R.compare_rdms(a, b, method)
    assert (got.value, got.n_pairs) == (want.value, want.n_pairs)


def test_a_device_is_taken_as_tensors_made_there_report_it():
    from pozfast.validate import device

    assert device("cpu:0") == torch.device("cpu") == torch.empty(0, device="cpu:0").device
    if torch.cuda.is_available():
        assert device("cuda") == torch.device("cuda", torch.cuda.current_device())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("backend", ["cuda-native", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gpu_rdm_and_similarity_match_cpu(backend, dtype):
    if not pozfast.backends()[backend].available:
        pytest.skip(f"{backend} unavailable: {pozfast.backends()[backend].reason}")
    x = torch.from_numpy(data("sparse", 300, 70, 1)).to(dtype)
    y = torch.from_numpy(data("random", 300, 20, 2)).to(dtype)
    want = R.rdm(x)
    with pozfast.use_backend(backend):
        got = R.rdm(x.cuda(), block=64)
        sim = R.rdm_similarity(x.cuda(), y.cuda(), path="tiled")
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-12 if dtype == torch.float64 else 3e-5)
    assert sim.value == pytest.approx(R.rdm_similarity(x, y, path="features").value, abs=1e-6)


@triton_forced
@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_triton_curve_matches_cpu(with_ref, dtype):
    x = torch.from_numpy(data("sparse", 40, 21, 11) - 100).to(dtype)
    x[:, 0] = 0
    poz = (x == 0).double().mean(0) + torch.linspace(0, 1e-3, 21, dtype=torch.float64)
    reference = None
    if with_ref:
        reference = torch.from_numpy(pdist(data("random", 40, 5, 12), "correlation"))
        reference[::7] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        for order in ("low_to_high", "high_to_low"):
            want = R.insertion_curve(x, poz, order=order, steps=6, reference=reference, method="pearson")
            with pozfast.use_backend("triton"):
                got = R.insertion_curve(x, poz, order=order, steps=6, reference=reference, method="pearson")
            assert got.n_pairs == want.n_pairs
            np.testing.assert_allclose(got.values, want.values, rtol=0,
                                       atol=1e-9 if dtype == torch.float64 else 2e-5)


# ---- dissimilarities, forms, sets, similarity matrices ----

def _scaled_error(got, ref, method="euclidean") -> float:
    """Largest |got - ref| over the RDM's scale: its largest |value| for (squared) distances; 1 for cosine and
    correlation, which are 1 - (a dot product of unit vectors), known to rounding in absolute terms (as scipy's)."""
    scale = max(np.abs(ref).max(), 1e-300) if "euclidean" in method else 1.0
    return float(np.nanmax(np.abs(np.asarray(got, dtype=np.float64) - ref)) / scale)


@pytest.mark.parametrize("method", ["correlation", "euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("kind", ["random", "sparse"])
@pytest.mark.parametrize("n,d", [(2, 1), (3, 5), (37, 23), (301, 17)])
@pytest.mark.parametrize("block", [16, 1024])
def test_dissimilarities_match_scipy_in_every_output_form(tmp_path, method, kind, n, d, block):
    x = data(kind, n, d, seed=n + d)
    if method == "correlation" and d == 1:
        pytest.skip("correlation needs at least 2 features per row")
    ref = pdist(x, method)
    got = R.rdm(x, method=method, block=block)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == ref.shape
    assert _scaled_error(got, ref, method) <= 1e-12
    assert _scaled_error(R.rdm(x, method=method, out="square", block=block), squareform(ref), method) <= 1e-12
    path = R.rdm(x, method=method, out=tmp_path / "d.npy", block=block)
    np.testing.assert_array_equal(np.load(path), got)
    strided = np.asfortranarray(x)  # non-contiguous rows
    assert _scaled_error(R.rdm(strided, method=method, block=block), ref, method) <= 1e-12
    # float32 GEMMs: 1e-6 of the RDM's scale where the values are of order one (zero-mean data); cosine and
    # correlation of rows far from the origin are 1 - (a float32 dot product), known to about sqrt(D) 6e-8.
    x32 = x.astype(np.float32)
    ref32 = pdist(x32.astype(np.float64), method)  # of the float32 values: their rounding is the input's
    got32 = R.rdm(torch.from_numpy(x32), method=method, block=block, dtype=torch.float32)
    assert got32.dtype == torch.float32
    if kind == "random":
        assert _scaled_error(got32.numpy(), ref32, method) <= 1e-6
    else:
        np.testing.assert_allclose(got32.numpy(), ref32, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(ref32).max()))


def test_cosine_zero_rows_are_nan_with_a_warning_and_euclidean_has_none():
    x = data("random", 9, 4)
    x[2] = 0
    x[5] = 3.0  # constant but not zero: a valid cosine row
    with pytest.warns(R.ZeroVarianceWarning, match="1 of 9 rows have zero norm"):
        d = squareform(R.rdm(x, method="cosine"), checks=False)
    assert np.isnan(np.delete(d[2], 2)).all() and not np.isnan(np.delete(d[5], [2, 5])).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", R.ZeroVarianceWarning)
        np.testing.assert_allclose(R.rdm(x, method="euclidean"), pdist(x), rtol=1e-12)
    dup = np.repeat(data("random", 4, 6), 2, axis=0)  # identical rows: distance exactly 0, never negative
    got = R.rdm(dup, method="sqeuclidean")
    assert (got >= 0).all() and np.allclose(squareform(got)[::2, 1::2].diagonal(), 0, atol=1e-12)


def test_results_come_back_in_the_callers_form(tmp_path):
    pd = pytest.importorskip("pandas")
    x = data("random", 12, 5)
    ref = pdist(x, "cosine")
    t = torch.from_numpy(x).float()
    default = R.rdm(t, method="cosine")
    assert isinstance(default, torch.Tensor) and default.dtype == torch.float64 and default.device == t.device
    assert R.rdm(t, method="cosine", dtype=torch.float32).dtype == torch.float32
    assert R.rdm(x, dtype=np.float32).dtype == np.float32
    frame = R.rdm(pd.DataFrame(x, index=[f"c{i}" for i in range(12)]), method="cosine")
    assert isinstance(frame, np.ndarray) and _scaled_error(frame, ref) <= 1e-12
    stack = np.stack([x, 2 * x + 1])  # (S, N, D): S RDMs in one call
    both = R.rdm(stack, method="euclidean")
    assert both.shape == (2, 66)
    np.testing.assert_allclose(both, [pdist(x), pdist(2 * x + 1)], rtol=1e-12)
    listed = R.rdm([t, t[:, :3]], out="square")
    assert isinstance(listed, torch.Tensor) and listed.shape == (2, 12, 12)
    path = R.rdm(stack, method="sqeuclidean", out=tmp_path / "set.npy")
    np.testing.assert_allclose(np.load(path), [pdist(x, "sqeuclidean"), pdist(2 * x + 1, "sqeuclidean")], rtol=1e-12)
    assert pozfast.load_rdm(path).n_rdm == 2 and (os.stat(path).st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_rsatoolbox_datasets_give_rdms_objects_for_every_method():
    rsa = pytest.importorskip("rsatoolbox", reason="rsatoolbox not installed (pip install 'pozfast[test]')")
    rng = np.random.default_rng(9)
    ds = rsa.data.Dataset(rng.standard_normal((30, 6)), obs_descriptors={"conds": np.repeat(np.arange(10), 3)})
    for method, theirs, factor in [("correlation", "correlation", 1), ("sqeuclidean", "euclidean", 1 / 6)]:
        ours = R.rdm(ds, method=method, descriptor="conds")
        want = rsa.rdm.calc_rdm(ds, method=theirs, descriptor="conds")
        assert isinstance(ours, rsa.rdm.RDMs) and ours.dissimilarity_measure == method
        np.testing.assert_allclose(ours.dissimilarities * factor, want.dissimilarities, rtol=1e-10)
        assert list(ours.pattern_descriptors["conds"]) == list(want.pattern_descriptors["conds"])


def test_a_similarity_matrix_is_refused_as_features_and_used_when_named():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 6))
    y = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 40)) + rng.standard_normal((40, 40))
    s = np.corrcoef(y)  # a square similarity matrix with a unit diagonal
    with pytest.raises(ValueError, match="similarity matrix.*y_kind='similarity'.*y_kind='features'"):
        R.rdm_similarity(x, s)
    right = R.rdm_similarity(x, s, y_kind="similarity")
    want = pearsonr(pdist(x, "correlation"), pdist(y, "correlation")).statistic
    assert right.value == pytest.approx(want, abs=1e-10)
    wrong = R.rdm_similarity(x, s, y_kind="features")  # what auto mode used to return silently
    assert abs(wrong.value - right.value) > 1e-4
    assert R.compare_rdms(pdist(x, "correlation"), s, b_kind="similarity").value == pytest.approx(want, abs=1e-10)


def test_compare_rdms_aliases_and_sets():
    rng = np.random.default_rng(12)
    A = np.stack([pdist(rng.random((15, 4)), "correlation") for _ in range(3)])
    B = np.stack([pdist(rng.random((15, 4)), "euclidean") for _ in range(2)])
    for alias, name in [("corr", "pearson"), ("tau-a", "kendall_tau_a"), ("Spearman ", "spearman"),
                        ("cosine", "cosine"), ("r2", "r2")]:
        one = R.compare_rdms(A[0], B[0], alias)
        assert isinstance(one, R.Comparison) and one.method == name
        assert one.value == pytest.approx(R.compare_rdms(A[0], B[0], name).value, abs=0)
        matrix = R.compare_rdms(A, B, alias)
        assert isinstance(matrix, np.ndarray) and matrix.shape == (3, 2) and matrix.dtype == np.float64
        want = [[R.compare_rdms(a, b, name).value for b in B] for a in A]
        np.testing.assert_allclose(matrix, want, rtol=0, atol=1e-15)
    as_torch = R.compare_rdms(torch.from_numpy(A), B[:1], "spearman", dtype=torch.float32)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (3, 1) and as_torch.dtype == torch.float32


def test_compare_rsatoolbox_rdms_sets_as_rsatoolbox():
    rsa = pytest.importorskip("rsatoolbox", reason="rsatoolbox not installed (pip install 'pozfast[test]')")
    rng = np.random.default_rng(13)
    a = rsa.rdm.RDMs(np.stack([pdist(rng.random((12, 5)), "correlation") for _ in range(3)]))
    b = rsa.rdm.RDMs(np.stack([pdist(rng.random((12, 5)), "correlation") for _ in range(2)]))
    for method in ("corr", "spearman", "tau-a", "cosine"):
        np.testing.assert_allclose(R.compare_rdms(a, b, method), rsa.rdm.compare(a, b, method=method), atol=1e-10)


def test_cli_methods_saved_rdms_plots_and_exit_codes(tmp_path, monkeypatch):
    import contextlib
    import io
    import json
    import subprocess
    import sys

    from pozfast.cli import main

    x, y = data("random", 25, 6, 21), data("random", 25, 4, 22)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "a.npy", pdist(x, "euclidean"))
    pozfast.save_rdm(tmp_path / "b.npz", pdist(y, "cosine"), labels=[f"c{i}" for i in range(25)], measure="cosine")
    np.save(tmp_path / "sim.npy", np.corrcoef(y))
    (tmp_path / "labels.txt").write_text("\n".join(f"item {i}" for i in range(25)) + "\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "pozfast.cli", "rdm", *map(str, a), "--no-progress"],  # noqa: E731
                                    capture_output=True, text=True, check=False)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    usual = 0o666 & ~_umask()

    res = run(tmp_path / "x.npy", "--method", "euclidean", "--plot", "--labels", tmp_path / "labels.txt",
              "--out", tmp_path / "e")
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(np.load(tmp_path / "e" / "rdm.npy"), pdist(x), rtol=1e-12)
    assert {mode(tmp_path / "e" / f) for f in ("rdm.npy", "rdm.png", "result.json")} == {usual}
    # two saved RDMs, every comparison method by its rsatoolbox name
    for name, method in [("corr", "pearson"), ("tau-a", "kendall_tau_a"), ("spearman", "spearman"), ("cosine", "cosine")]:
        res = run(tmp_path / "a.npy", "--compare", tmp_path / "b.npz", "--compare-method", name, "--out", tmp_path / name)
        assert res.returncode == 0, res.stderr
        got = json.loads((tmp_path / name / "result.json").read_text())
        want = R.compare_rdms(pdist(x), pdist(y, "cosine"), method)
        assert got["method"] == method and got["value"] == pytest.approx(want.value, abs=1e-12)
    # features with features under another dissimilarity; a similarity matrix named as one
    res = run(tmp_path / "x.npy", "--compare", tmp_path / "y.npy", "--method", "cosine", "--compare-method", "spearman",
              "--out", tmp_path / "f")
    assert res.returncode == 0, res.stderr
    want = spearmanr(pdist(x, "cosine"), pdist(y, "cosine")).statistic
    assert json.loads((tmp_path / "f" / "result.json").read_text())["value"] == pytest.approx(want, abs=1e-12)
    res = run(tmp_path / "x.npy", "--compare", tmp_path / "sim.npy", "--y-kind", "similarity", "--out", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    want = pearsonr(pdist(x, "correlation"), pdist(y, "correlation")).statistic
    assert json.loads((tmp_path / "s" / "result.json").read_text())["value"] == pytest.approx(want, abs=1e-10)
    # usage errors: exit 2, one line
    def in_process(features, *args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = main(["rdm", str(tmp_path / features), *map(str, args), "--out", str(tmp_path / "bad"),
                           "--no-progress"])
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return status, next((m for m in messages if m in lines[0]), lines[0])

    cases = [(["--reference", tmp_path / "a.npy"], "--reference needs --curve"),
                          (["--steps", 5], "--steps needs --curve"),
                          (["--labels", tmp_path / "labels.txt"], "--labels needs --plot"),
                          (["--compare-method", "spearman"], "--compare-method needs --compare or --curve"),
                          (["--y-kind", "rdm"], "--y-kind needs --compare"),
                          (["--method", "manhattan"], "--method: method must be one of"),
                          (["--compare", tmp_path / "sim.npy"], "similarity matrix; pass --y-kind similarity"),
                          (["--curve", tmp_path / "a.npy", "--plot"], "--plot does not apply to --curve")]
    messages = [m for _, m in cases] + ["both inputs are RDMs"]
    for args, message in cases:
        assert in_process("x.npy", *args) == (2, message), args
    assert in_process("a.npy", "--method", "cosine", "--compare", tmp_path / "b.npz") == (2, "both inputs are RDMs")

    # a failure while running: exit 1, one line
    def failing(*args, **kwargs):
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(pozfast, "rdm", failing)
    messages.append("RuntimeError: out of device memory")
    assert in_process("x.npy") == (1, "RuntimeError: out of device memory")
