"""Interop with the field's tools: inputs in every form, results back in the caller's form, rsatoolbox method
names, rsatoolbox Datasets (descriptor averaging) and RDMs objects, RDM files both ways, the RDM heat map and
the optional rsatoolbox backend. rsatoolbox, pandas, h5py and matplotlib are optional: their tests skip
without them."""

import os
import stat

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform
from scipy.stats import rankdata

import pozfast
from pozfast import interop
from pozfast.interop import ALIASES, UNSUPPORTED, as_feature_set, as_rdm_set, canonical_method, rdms_out, values_out

# rsatoolbox's own calc_rdm casts NaN into the integer descriptors of averaged conditions (its _build_rdms)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")


def _rsatoolbox():
    return pytest.importorskip("rsatoolbox", reason="rsatoolbox not installed (pip install 'pozfast[test]')")


def _pandas():
    return pytest.importorskip("pandas", reason="pandas not installed")


def _dataset(seed=0, n_cond=12, channels=9, repeats=(1, 2, 3, 4), numeric=False, subject=1):
    """An rsatoolbox Dataset with unbalanced repeats per condition, in shuffled order, a descriptor that is
    constant within each condition (category), one that varies (run) and a dataset-level descriptor."""
    rsa = _rsatoolbox()
    rng = np.random.default_rng(seed)
    names = np.arange(n_cond) * 7 % 11 if numeric else np.array([f"stim{i:02d}" for i in range(n_cond)])
    counts = [repeats[i % len(repeats)] for i in range(n_cond)]
    conds = np.repeat(names, counts)
    order = rng.permutation(len(conds))
    conds = conds[order]
    category = np.array([f"cat{hash(str(c)) % 3}" for c in conds])
    run = np.concatenate([np.arange(c) for c in counts])[order]
    return rsa.data.Dataset(rng.normal(size=(len(conds), channels)) + rng.normal(size=(1, channels)),
                            descriptors={"subj": subject},
                            obs_descriptors={"conds": conds, "category": category, "run": run})


# ---- method names ----

@pytest.mark.parametrize("kind", ["compare", "rdm"])
def test_every_alias_maps_to_a_pozfast_name(kind):
    names = {"compare": pozfast.geometry.METHODS, "rdm": interop.RDM_METHODS}[kind]
    for alias, method in ALIASES[kind].items():
        assert method in names
        assert canonical_method(alias, kind) == method
        assert canonical_method(f"  {alias.upper()} ", kind) == method
    assert canonical_method("corr", "compare") == "pearson"
    assert canonical_method("tau-a", "compare") == "kendall_tau_a"


@pytest.mark.parametrize("kind", ["compare", "rdm"])
def test_unsupported_rsatoolbox_names_say_so(kind):
    for name in UNSUPPORTED[kind]:
        with pytest.raises(ValueError, match=f"'{name}' is rsatoolbox's .* pozfast does not support; supported: "):
            canonical_method(name, kind)


def test_unknown_method_lists_valid_names_and_aliases():
    with pytest.raises(ValueError, match=r"'pearson' \(rsatoolbox 'corr'\).*'kendall_tau_a' \(rsatoolbox 'tau-a'\)"):
        canonical_method("pearsn", "compare")
    with pytest.raises(ValueError, match="'correlation', 'euclidean', 'sqeuclidean', 'cosine', 'crossnobis'"):
        canonical_method("manhattan", "rdm")
    with pytest.raises(TypeError, match="method must be a string, got int"):
        canonical_method(3, "rdm")
    with pytest.raises(ValueError, match="kind must be one of"):
        canonical_method("corr", "features")


# ---- features in ----

def test_features_from_numpy_torch_nested_lists_and_integers():
    x = np.random.default_rng(1).normal(size=(7, 5))
    (m,), form = as_feature_set(x)
    assert form == interop.Form("numpy", torch.device("cpu"))
    assert m.dtype == torch.float64 and np.shares_memory(m.numpy(), x)
    (m,), form = as_feature_set(x.tolist())
    assert form.kind == "numpy" and torch.equal(m, torch.from_numpy(x))
    (m,), form = as_feature_set(torch.from_numpy(x).float())
    assert form.kind == "torch" and m.dtype == torch.float32
    (m,), _ = as_feature_set(np.arange(12, dtype=np.int32).reshape(4, 3))
    assert m.dtype == torch.float64


def test_feature_stacks_and_lists_are_sets():
    stack = torch.randn(3, 6, 4, dtype=torch.float64)
    mats, form = as_feature_set(stack)
    assert form.is_set and form.kind == "torch" and len(mats) == 3
    assert all(m.data_ptr() == stack[s].data_ptr() for s, m in enumerate(mats))  # views, no copies
    mats, form = as_feature_set([np.ones((6, 2)) + np.eye(6, 2), np.random.default_rng(0).normal(size=(6, 9))])
    assert form.is_set and [tuple(m.shape) for m in mats] == [(6, 2), (6, 9)]
    with pytest.raises(ValueError, match=r"X\[1\] has 5 items \(rows\) but X\[0\] has 6"):
        as_feature_set([np.zeros((6, 2)), np.zeros((5, 2))])
    with pytest.raises(ValueError, match=r"X must be 2-D \(N items x D features\), got shape \(0,\)"):
        as_feature_set([])


def test_feature_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"Y must be 2-D \(N items x D features\), got shape \(4,\)"):
        as_feature_set(np.zeros(4), "Y")
    with pytest.raises(ValueError, match="descriptor='conds' averages rsatoolbox Datasets"):
        as_feature_set(np.zeros((4, 2)), descriptor="conds")
    with pytest.raises(TypeError, match="descriptor must be the name"):
        as_feature_set(np.zeros((4, 2)), descriptor=1)


def test_dataframe_values_and_index_as_labels():
    pd = _pandas()
    rng = np.random.default_rng(2)
    df = pd.DataFrame(rng.normal(size=(5, 3)), index=list("abcde"), columns=["f0", "f1", "f2"])
    (m,), form = as_feature_set(df)
    assert form.kind == "dataframe" and form.labels == list("abcde")
    np.testing.assert_array_equal(m.numpy(), df.to_numpy())
    result = rdms_out(pozfast.rdm(m), form)
    assert isinstance(result, np.ndarray) and result.dtype == np.float64  # DataFrame in: numpy out
    np.testing.assert_allclose(result, pdist(df.to_numpy(), "correlation"), rtol=0, atol=1e-12)
    df["name"] = list("vwxyz")
    with pytest.raises(TypeError, match=r"X must hold numbers only; its columns \['name'\] are not numeric"):
        as_feature_set(df)


# ---- rsatoolbox Datasets ----

@pytest.mark.parametrize("numeric", [False, True], ids=["string-conditions", "numeric-conditions"])
def test_descriptor_averaging_matches_calc_rdm(numeric):
    rsa = _rsatoolbox()
    from rsatoolbox.util.descriptor_utils import desc_eq

    ds = _dataset(numeric=numeric)
    reference = rsa.rdm.calc_rdm(ds, method="correlation", descriptor="conds")
    (X,), form = as_feature_set(ds, descriptor="conds")
    # the averaged features in rsatoolbox's condition order (sorted), each the mean of its observations
    conds = np.asarray(ds.obs_descriptors["conds"])
    assert form.labels == list(reference.pattern_descriptors["conds"]) == np.unique(conds).tolist()
    for i, c in enumerate(form.labels):
        np.testing.assert_allclose(X[i].numpy(), ds.measurements[conds == c].mean(0), rtol=0, atol=1e-14)
    ours = rdms_out(pozfast.rdm(X), form, measure="correlation")
    assert isinstance(ours, rsa.rdm.RDMs)
    np.testing.assert_allclose(ours.dissimilarities, reference.dissimilarities, rtol=0, atol=1e-10)
    assert ours.dissimilarity_measure == reference.dissimilarity_measure == "correlation"
    assert desc_eq(ours.pattern_descriptors, reference.pattern_descriptors)
    assert "run" not in ours.pattern_descriptors and "category" in ours.pattern_descriptors
    assert desc_eq(ours.rdm_descriptors, reference.rdm_descriptors) and ours.descriptors == reference.descriptors


def test_dataset_without_descriptor_keeps_observations():
    rsa = _rsatoolbox()
    from rsatoolbox.util.descriptor_utils import desc_eq

    ds = _dataset(repeats=(1,))
    reference = rsa.rdm.calc_rdm(ds, method="correlation")
    (X,), form = as_feature_set(ds)
    assert np.shares_memory(X.numpy(), ds.measurements)
    ours = rdms_out(pozfast.rdm(X), form, measure="correlation")
    np.testing.assert_allclose(ours.dissimilarities, reference.dissimilarities, rtol=0, atol=1e-10)
    assert desc_eq(ours.pattern_descriptors, reference.pattern_descriptors)


def test_list_of_datasets_matches_calc_rdm():
    rsa = _rsatoolbox()
    from rsatoolbox.util.descriptor_utils import desc_eq

    datasets = [_dataset(seed=s, channels=5 + s, subject=s) for s in range(3)]
    reference = rsa.rdm.calc_rdm(datasets, method="correlation", descriptor="conds")
    mats, form = as_feature_set(datasets, descriptor="conds")
    assert form.is_set and form.kind == "rsatoolbox"
    ours = rdms_out(torch.stack([pozfast.rdm(m) for m in mats]), form, measure="correlation")
    np.testing.assert_allclose(ours.dissimilarities, reference.dissimilarities, rtol=0, atol=1e-10)
    assert desc_eq(ours.rdm_descriptors, reference.rdm_descriptors)
    assert desc_eq(ours.pattern_descriptors, reference.pattern_descriptors)
    assert ours.descriptors == reference.descriptors


def test_dataset_errors():
    rsa = _rsatoolbox()
    ds = _dataset()
    with pytest.raises(KeyError, match=r"descriptor 'cond' is not an obs descriptor of X; it has \['category'"):
        as_feature_set(ds, descriptor="cond")
    other = _dataset(n_cond=10)
    with pytest.raises(ValueError, match=r"X\[1\] has 10 items"):
        as_feature_set([ds, other], descriptor="conds")
    renamed = _dataset()
    renamed.obs_descriptors["conds"] = np.char.add("x", renamed.obs_descriptors["conds"].astype(str))
    with pytest.raises(ValueError, match=r"X\[1\] has other conditions than X\[0\]"):
        as_feature_set([ds, renamed], descriptor="conds")
    temporal = rsa.data.TemporalDataset(np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="TemporalDataset with 3-D measurements"):
        as_feature_set(temporal)
    with pytest.raises(TypeError, match="Dataset \\(features\\), not an RDM"):
        as_rdm_set(ds)


# ---- RDMs in ----

def test_rdm_forms():
    rng = np.random.default_rng(3)
    v = pdist(rng.normal(size=(6, 4)), "correlation")
    for given, is_set in [(v, False), (v[None], False), (squareform(v), False), (v.tolist(), False),
                          (np.stack([v, 2 * v]), True), (np.stack([squareform(v)] * 3), True), ([v, v], True)]:
        vectors, form = as_rdm_set(given)
        assert form.is_set == is_set and vectors.dtype == torch.float64 and vectors.shape[1] == len(v)
        np.testing.assert_array_equal(vectors[0].numpy(), v)
    vectors, form = as_rdm_set(np.array([[0.25]]))  # (1, P) with P = 1: two items
    assert not form.is_set and vectors.tolist() == [[0.25]]
    vectors, form = as_rdm_set(torch.from_numpy(v).float())
    assert form.kind == "torch" and form.device == torch.device("cpu")
    with pytest.raises(ValueError, match="different numbers of items"):
        as_rdm_set([v, v[:10]])
    with pytest.raises(ValueError, match="7 entries"):
        as_rdm_set(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="got shape"):
        as_rdm_set(np.zeros((2, 3, 3, 3)))


def test_similarity_matrix_refused_as_dissimilarities():
    x = np.random.default_rng(4).normal(size=(8, 5))
    similarity = np.corrcoef(x)
    with pytest.raises(ValueError, match="b is a square symmetric matrix with a unit diagonal: a similarity matrix.*"
                                         "pass b_kind='similarity'"):
        as_rdm_set(similarity, "b", kind_arg="b_kind")
    vectors, _ = as_rdm_set(similarity, "b", kind="similarity")
    np.testing.assert_allclose(vectors[0].numpy(), pdist(x, "correlation"), rtol=0, atol=1e-12)


def test_looks_like_similarity_matrix():
    x = np.random.default_rng(5).normal(size=(6, 4))
    s = np.corrcoef(x)
    assert interop.looks_like_similarity_matrix(s)
    assert interop.looks_like_similarity_matrix(torch.from_numpy(s).float())
    with_nan = s.copy()
    with_nan[0, 1] = with_nan[1, 0] = np.nan
    assert interop.looks_like_similarity_matrix(with_nan)
    with_nan[1, 0] = 0.3
    assert not interop.looks_like_similarity_matrix(with_nan)
    assert not interop.looks_like_similarity_matrix(1 - s)  # an RDM: zero diagonal
    assert not interop.looks_like_similarity_matrix(s[:, :5])
    assert not interop.looks_like_similarity_matrix(np.ones((1, 1)))
    asym = s.copy()
    asym[0, 2] += 0.1
    assert not interop.looks_like_similarity_matrix(asym)
    diag = s.copy()
    diag[3, 3] = 1.001
    assert not interop.looks_like_similarity_matrix(diag)
    assert not interop.looks_like_similarity_matrix(x)


def test_square_dataframe_rdm_keeps_labels():
    pd = _pandas()
    x = np.random.default_rng(6).normal(size=(5, 4))
    df = pd.DataFrame(squareform(pdist(x, "correlation")), index=list("pqrst"), columns=list("pqrst"))
    vectors, form = as_rdm_set(df)
    assert form.labels == list("pqrst") and not form.is_set
    np.testing.assert_allclose(vectors[0].numpy(), pdist(x, "correlation"), rtol=0, atol=1e-15)


def test_rsatoolbox_rdms_round_trip():
    rsa = _rsatoolbox()
    from rsatoolbox.util.descriptor_utils import desc_eq

    rdms = rsa.rdm.calc_rdm([_dataset(seed=s, subject=s) for s in range(2)], method="correlation", descriptor="conds")
    rdms.descriptors["study"] = "demo"
    vectors, form = as_rdm_set(rdms)
    assert form.kind == "rsatoolbox" and form.is_set and form.labels == list(rdms.pattern_descriptors["conds"])
    back = rdms_out(vectors, form)
    assert isinstance(back, rsa.rdm.RDMs) and back.dissimilarity_measure == "correlation"
    np.testing.assert_array_equal(back.dissimilarities, rdms.dissimilarities)
    assert desc_eq(back.pattern_descriptors, rdms.pattern_descriptors)
    assert desc_eq(back.rdm_descriptors, rdms.rdm_descriptors) and back.descriptors == rdms.descriptors
    # one RDMs object is a set, as in rsatoolbox: one value per pair of RDMs
    assert values_out(torch.ones(2, 2), form).shape == (2, 2)
    # square results and a new measure
    squares = torch.from_numpy(rdms.get_matrices())
    assert rdms_out(squares, form, measure="other").dissimilarity_measure == "other"


# ---- results out ----

def test_results_come_back_in_the_callers_form():
    x32 = np.random.default_rng(7).normal(size=(9, 4)).astype(np.float32)
    (X,), form = as_feature_set(x32)
    d = pozfast.rdm(X, dtype=torch.float32)
    assert d.dtype == torch.float32
    out = rdms_out(d, form)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert rdms_out(d, form, dtype=np.float32).dtype == np.float32
    assert rdms_out(d, form, dtype="float32").dtype == np.float32
    (X,), form = as_feature_set(torch.from_numpy(x32))
    out = rdms_out(pozfast.rdm(X), form)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert rdms_out(pozfast.rdm(X), form, dtype=torch.float32).dtype == torch.float32
    value = values_out(torch.tensor(0.5), interop.Form("numpy"))
    assert isinstance(value, np.float64) and value == 0.5
    assert values_out(0.25, interop.Form("torch", torch.device("cpu"))).dtype == torch.float64
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        rdms_out(d, form, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a floating torch or numpy dtype"):
        rdms_out(d, form, dtype="float128x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_torch_results_stay_on_the_inputs_device():
    x = torch.randn(20, 6, device="cuda")
    (X,), form = as_feature_set(x)
    assert form.device == x.device
    out = rdms_out(pozfast.rdm(X), form)
    assert out.device == x.device and out.dtype == torch.float64
    vectors, form = as_rdm_set(out)
    assert form.device == x.device and values_out(vectors.sum(), form).device == x.device


# ---- files ----

def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def normal_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_our_hdf5_file_loads_in_rsatoolbox_and_back(tmp_path, normal_umask):
    rsa = _rsatoolbox()
    pytest.importorskip("h5py")
    x = np.random.default_rng(8).normal(size=(7, 5))
    d = pozfast.rdm(x)
    labels = [f"item {i}" for i in range(7)]
    path = pozfast.save_rdm(tmp_path / "m.h5", d, labels=labels, measure="correlation")
    assert _mode(path) == 0o644
    theirs = rsa.rdm.load_rdm(str(path))
    np.testing.assert_array_equal(theirs.dissimilarities[0], d)
    assert list(theirs.pattern_descriptors["conds"]) == labels and theirs.dissimilarity_measure == "correlation"
    ours = pozfast.load_rdm(path)
    assert ours.labels == labels and ours.measure == "correlation" and ours.n_rdm == 1 and ours.n_cond == 7
    np.testing.assert_array_equal(ours.rdm(), d)
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]  # no temporary left behind


def _assert_same_rdms(a, b):
    """RDMs.__eq__ without its NaN blind spot (NaN != NaN): dissimilarities equal with NaN in the same places."""
    from rsatoolbox.util.descriptor_utils import desc_eq

    np.testing.assert_array_equal(a.dissimilarities, b.dissimilarities)
    assert a.dissimilarity_measure == b.dissimilarity_measure and a.descriptors == b.descriptors
    assert desc_eq(a.rdm_descriptors, b.rdm_descriptors) and desc_eq(a.pattern_descriptors, b.pattern_descriptors)


def test_rsatoolbox_hdf5_file_loads_in_pozfast(tmp_path):
    rsa = _rsatoolbox()
    pytest.importorskip("h5py")
    from rsatoolbox.util.descriptor_utils import desc_eq

    rdms = rsa.rdm.calc_rdm([_dataset(seed=s, subject=s, numeric=True) for s in range(3)], method="correlation",
                            descriptor="conds")
    rdms.dissimilarities[1, 4] = np.nan  # a missing pair
    rdms.save(str(tmp_path / "theirs.hdf5"))
    ours = pozfast.load_rdm(tmp_path / "theirs.hdf5")
    np.testing.assert_array_equal(ours.dissimilarities, rdms.dissimilarities)
    assert ours.labels == list(rdms.pattern_descriptors["conds"]) and ours.measure == "correlation"
    assert desc_eq(ours.rdm_descriptors, rdms.rdm_descriptors)
    _assert_same_rdms(ours.to_rsatoolbox(), rdms)
    # and back through our writer: rsatoolbox reads what it reads from its own file
    pozfast.save_rdm(tmp_path / "again.h5", ours)
    _assert_same_rdms(rsa.rdm.load_rdm(str(tmp_path / "again.h5")), rsa.rdm.load_rdm(str(tmp_path / "theirs.hdf5")))
    pozfast.save_rdm(tmp_path / "object.h5", rdms)
    _assert_same_rdms(rsa.rdm.load_rdm(str(tmp_path / "object.h5")), rsa.rdm.load_rdm(str(tmp_path / "theirs.hdf5")))
    # a stored set goes into the comparison functions as RDMs
    vectors, form = as_rdm_set(ours)
    assert form.is_set and form.kind == "numpy" and vectors.shape == (3, rdms.dissimilarities.shape[1])
    assert interop.is_rdm_object(ours) and interop.is_rdm_object(rdms)
    assert not interop.is_rdm_object(rdms.dissimilarities)
    with pytest.raises(TypeError, match=r"X is an RDM set, not features"):
        as_feature_set(ours)


def test_labels_given_join_the_inputs_descriptors(tmp_path):
    rsa = _rsatoolbox()
    pytest.importorskip("h5py")
    rdms = rsa.rdm.RDMs(pdist(np.random.default_rng(15).normal(size=(4, 3)))[None], dissimilarity_measure="euclidean",
                        pattern_descriptors={"stim": ["w", "x", "y", "z"]})
    pozfast.save_rdm(tmp_path / "r.h5", rdms, labels=["a", "b", "c", "d"])
    theirs = rsa.rdm.load_rdm(str(tmp_path / "r.h5"))
    assert list(theirs.pattern_descriptors["stim"]) == ["w", "x", "y", "z"]
    assert list(theirs.pattern_descriptors["conds"]) == ["a", "b", "c", "d"]
    assert theirs.dissimilarity_measure == "euclidean"
    assert pozfast.load_rdm(tmp_path / "r.h5").labels == ["a", "b", "c", "d"]


def test_npz_and_npy_files(tmp_path, normal_umask):
    rng = np.random.default_rng(9)
    d = pdist(rng.normal(size=(6, 3)), "correlation")
    labels = ["été", "hiver", "β", "d", "e", "f"]
    path = pozfast.save_rdm(tmp_path / "r.npz", squareform(d), labels=labels, measure="correlation")
    loaded = pozfast.load_rdm(path)
    assert loaded.labels == labels and loaded.measure == "correlation" and _mode(path) == 0o644
    np.testing.assert_array_equal(loaded.rdm(), d)
    path = pozfast.save_rdm(tmp_path / "r.npy", torch.from_numpy(d).float())
    assert np.load(path).shape == d.shape and _mode(path) == 0o644
    loaded = pozfast.load_rdm(path)
    assert loaded.labels is None and loaded.measure is None
    np.testing.assert_array_equal(loaded.rdm(), d.astype(np.float32).astype(np.float64))
    pozfast.save_rdm(tmp_path / "set.npy", np.stack([d, d]))
    assert pozfast.load_rdm(tmp_path / "set.npy").n_rdm == 2
    pozfast.rdm(rng.normal(size=(6, 3)), out=str(tmp_path / "from_rdm.npy"))
    assert pozfast.load_rdm(tmp_path / "from_rdm.npy").n_cond == 6


def test_file_errors(tmp_path):
    pytest.importorskip("h5py")
    d = pdist(np.random.default_rng(10).normal(size=(4, 3)))
    with pytest.raises(ValueError, match=r"\.npy holds the dissimilarities only"):
        pozfast.save_rdm(tmp_path / "r.npy", d, labels=list("abcd"))
    with pytest.raises(ValueError, match="path must end in one of"):
        pozfast.save_rdm(tmp_path / "r.csv", d)
    with pytest.raises(ValueError, match="labels must be 4 condition labels"):
        pozfast.save_rdm(tmp_path / "r.h5", d, labels=list("abc"))
    with pytest.raises(TypeError, match="labels must be a list of labels, got the string"):
        pozfast.save_rdm(tmp_path / "r.h5", d, labels="abcd")
    with pytest.raises(ValueError, match="not ASCII.*save to .npz"):
        pozfast.save_rdm(tmp_path / "r.h5", d, labels=["é", "b", "c", "d"])
    with pytest.raises(TypeError, match="measure must be a string"):
        pozfast.save_rdm(tmp_path / "r.h5", d, measure=3)
    assert os.listdir(tmp_path) == []  # nothing half written
    with pytest.raises(FileNotFoundError, match="no RDM file"):
        pozfast.load_rdm(tmp_path / "absent.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="is not an RDM file: it has no 'dissimilarities'"):
        pozfast.load_rdm(tmp_path / "other.h5")


def test_failed_hdf5_write_leaves_no_file(tmp_path):
    rsa = _rsatoolbox()
    pytest.importorskip("h5py")
    rdms = rsa.rdm.RDMs(pdist(np.random.default_rng(11).normal(size=(4, 3)))[None],
                        descriptors={"model": object()})
    with pytest.raises(TypeError, match="/descriptors/model must hold numbers or text"):
        pozfast.save_rdm(tmp_path / "r.h5", rdms)
    assert os.listdir(tmp_path) == []


# ---- the heat map ----

def _tick_labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def test_plot_rdm_writes_a_png_with_labels(tmp_path, normal_umask):
    pytest.importorskip("matplotlib")
    x = np.random.default_rng(12).normal(size=(8, 5))
    labels = [f"cond{i}" for i in range(8)]
    fig = pozfast.plot_rdm(pozfast.rdm(x), labels=labels)
    ax = fig.axes[0]
    assert _tick_labels(ax.xaxis) == labels and _tick_labels(ax.yaxis) == labels
    shown = ax.images[0].get_array()
    ranks = rankdata(pdist(x, "correlation")) / 28
    np.testing.assert_allclose(squareform(np.asarray(shown), checks=False), ranks, rtol=0, atol=1e-12)
    assert "rank" in fig.axes[1].get_ylabel()
    raw = pozfast.plot_rdm(pozfast.rdm(x), scale="raw").axes[0]
    np.testing.assert_allclose(squareform(np.asarray(raw.images[0].get_array()), checks=False),
                               pdist(x, "correlation"), rtol=0, atol=1e-6)
    path = pozfast.plot_rdm(pozfast.rdm(x), labels=labels, path=tmp_path / "rdm.png")
    assert path == tmp_path / "rdm.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and _mode(path) == 0o644


def test_plot_rdm_thins_labels_and_blanks_missing_pairs():
    pytest.importorskip("matplotlib")
    d = pdist(np.random.default_rng(13).normal(size=(100, 4)))
    d[5] = np.nan
    fig = pozfast.plot_rdm(d, labels=[f"s{i}" for i in range(100)], max_labels=40)
    ticks = _tick_labels(fig.axes[0].xaxis)
    assert ticks == [f"s{i}" for i in range(0, 100, 3)]
    shown = fig.axes[0].images[0].get_array()
    assert shown.mask[0, 6] and shown.mask[6, 0] and shown.mask.sum() == 2


def test_plot_rdm_labels_and_measure_from_rsatoolbox():
    rsa = _rsatoolbox()
    pytest.importorskip("matplotlib")
    rdms = rsa.rdm.calc_rdm(_dataset(), method="correlation", descriptor="conds")
    fig = pozfast.plot_rdm(rdms)
    assert _tick_labels(fig.axes[0].xaxis) == list(rdms.pattern_descriptors["conds"])
    assert fig.axes[0].get_title() == "correlation"


def test_plot_rdm_errors():
    pytest.importorskip("matplotlib")
    d = pdist(np.random.default_rng(14).normal(size=(5, 3)))
    with pytest.raises(ValueError, match="scale must be 'rank' or 'raw'"):
        pozfast.plot_rdm(d, scale="log")
    with pytest.raises(ValueError, match="labels must hold 5 condition labels"):
        pozfast.plot_rdm(d, labels=list("abc"))
    with pytest.raises(ValueError, match="plot_rdm draws one RDM; d holds 2"):
        pozfast.plot_rdm(np.stack([d, d]))
    with pytest.raises(ValueError, match="kind='similarity'"):
        pozfast.plot_rdm(1 - squareform(d) / d.max())


# ---- the rsatoolbox backend ----

@pytest.fixture
def backend():
    _rsatoolbox()
    pozfast.install_rsatoolbox_backend()
    yield
    pozfast.uninstall_rsatoolbox_backend()


def test_backend_calc_rdm_equals_rsatoolbox(backend, monkeypatch):
    import rsatoolbox.rdm as rdm_package
    from rsatoolbox.util.descriptor_utils import desc_eq

    calls = []
    real = pozfast.geometry.rdm
    monkeypatch.setattr(pozfast.geometry, "rdm", lambda X, **kw: calls.append(X.shape) or real(X, **kw))
    datasets = [_dataset(seed=s, subject=s) for s in range(3)]
    cases = [(datasets[0], "conds"), (datasets[0], None), (datasets, "conds")]
    ours = [rdm_package.calc_rdm(ds, method="correlation", descriptor=desc) for ds, desc in cases]
    assert len(calls) == 5
    # rsatoolbox's own: another method, datasets with different conditions (merged with missing pairs), NaN
    mahalanobis = rdm_package.calc_rdm(datasets[0], method="mahalanobis", descriptor="conds")
    with_nan = _dataset(seed=9)
    with_nan.measurements[0, 0] = np.nan
    own = [([datasets[0], _dataset(seed=8, n_cond=10)], "conds"), (with_nan, "conds")]
    ours += [rdm_package.calc_rdm(ds, method="correlation", descriptor=desc) for ds, desc in own]
    assert len(calls) == 5
    pozfast.uninstall_rsatoolbox_backend()
    theirs = [rdm_package.calc_rdm(ds, method="correlation", descriptor=desc) for ds, desc in cases + own]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.dissimilarities, b.dissimilarities, rtol=0, atol=1e-10)
        assert a.dissimilarity_measure == b.dissimilarity_measure
        assert desc_eq(a.pattern_descriptors, b.pattern_descriptors) and desc_eq(a.rdm_descriptors, b.rdm_descriptors)
    assert mahalanobis == rdm_package.calc_rdm(datasets[0], method="mahalanobis", descriptor="conds")


def test_backend_euclidean_and_crossnobis_equal_rsatoolbox(backend, monkeypatch):
    import rsatoolbox.rdm as rdm_package
    from rsatoolbox.util.descriptor_utils import desc_eq

    calls = []
    real = pozfast.geometry.rdm
    monkeypatch.setattr(pozfast.geometry, "rdm", lambda X, **kw: calls.append(kw["method"]) or real(X, **kw))
    datasets = [_dataset(seed=s, subject=s, repeats=(3,)) for s in range(2)]
    precision = np.linalg.inv(np.cov(np.random.default_rng(5).normal(size=(40, 9)).T))
    cases = [dict(dataset=datasets[0], method="euclidean", descriptor="conds"),
             dict(dataset=datasets, method="euclidean", descriptor="conds"),
             dict(dataset=datasets[1], method="euclidean", descriptor=None),
             dict(dataset=datasets[0], method="crossnobis", descriptor="conds", cv_descriptor="run"),
             dict(dataset=datasets[0], method="crossnobis", descriptor="conds", noise=precision),
             dict(dataset=datasets[0], method="crossnobis", descriptor="conds", cv_descriptor="run",
                  noise=[precision, 2 * precision, precision / 2])]
    ours = [rdm_package.calc_rdm(**case) for case in cases]
    assert calls == ["sqeuclidean"] * 4 + ["crossnobis"] * 3
    own = rdm_package.calc_rdm(datasets[0], method="euclidean", descriptor="conds", remove_mean=True)
    assert len(calls) == 7  # remove_mean: rsatoolbox's own
    pozfast.uninstall_rsatoolbox_backend()
    assert own == rdm_package.calc_rdm(datasets[0], method="euclidean", descriptor="conds", remove_mean=True)
    for case, a in zip(cases, ours):
        b = rdm_package.calc_rdm(**case)
        np.testing.assert_allclose(a.dissimilarities, b.dissimilarities, rtol=1e-10, atol=1e-12)
        assert a.dissimilarity_measure == b.dissimilarity_measure
        assert desc_eq(a.pattern_descriptors, b.pattern_descriptors) and desc_eq(a.rdm_descriptors, b.rdm_descriptors)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # the constant RDM, on purpose
def test_backend_compare_equals_rsatoolbox(backend):
    import rsatoolbox
    from rsatoolbox.rdm import compare

    rdms = rsatoolbox.rdm.calc_rdm([_dataset(seed=s, subject=s) for s in range(3)], method="correlation",
                                   descriptor="conds")
    rounded = rsatoolbox.rdm.RDMs(np.round(rdms.dissimilarities, 1))  # many ties
    rounded.dissimilarities[:, 3] = np.nan  # a pair missing in both sets
    rdms.dissimilarities[:, 3] = np.nan
    constant = rsatoolbox.rdm.RDMs(np.ones((1, rdms.dissimilarities.shape[1])))
    constant.dissimilarities[:, 3] = np.nan
    methods = ["corr", "spearman", "cosine", "tau-a"]
    ours = {(m, i): compare(rdms, other, method=m) for m in methods for i, other in enumerate([rounded, constant])}
    pozfast.uninstall_rsatoolbox_backend()
    for (m, i), value in ours.items():
        other = [rounded, constant][i]
        np.testing.assert_allclose(value, compare(rdms, other, method=m), rtol=0, atol=1e-12, err_msg=m)


def test_backend_install_is_idempotent_and_reversible():
    import importlib

    rsa = _rsatoolbox()
    # importlib: `import rsatoolbox.rdm.compare as m` binds the function rsatoolbox.rdm.compare, not the module
    calc = importlib.import_module("rsatoolbox.rdm.calc")
    compare = importlib.import_module("rsatoolbox.rdm.compare")
    searchlight = importlib.import_module("rsatoolbox.util.searchlight")  # holds its own copy of calc_rdm

    def current():
        return (calc.calc_rdm, rsa.rdm.calc_rdm, searchlight.calc_rdm, compare.compare_spearman,
                rsa.rdm.compare_spearman)

    originals = current()
    pozfast.install_rsatoolbox_backend()
    try:
        patched = current()
        assert all(p is not o for p, o in zip(patched, originals))
        assert patched[0] is patched[1] is patched[2] and patched[3] is patched[4]
        pozfast.install_rsatoolbox_backend()
        assert current() == patched
    finally:
        pozfast.uninstall_rsatoolbox_backend()
    assert current() == originals
