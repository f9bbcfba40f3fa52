"""Inputs in the forms the field uses, results back in the caller's form, and rsatoolbox's method names.

Inputs (:func:`as_feature_set` for features, :func:`as_rdm_set` for RDMs):
- numpy arrays, torch tensors, nested lists of numbers, pandas DataFrames (their values; the index is kept as
  the condition labels);
- features: one (N, D) matrix, an (S, N, D) stack, or a list of matrices or datasets (a set of S);
- RDMs: a condensed vector (P,) or (1, P), a square (N, N) matrix, an (S, P) or (S, N, N) stack (a set);
- with rsatoolbox installed (never required): a ``Dataset`` (``descriptor=`` averages the observations of
  each condition, conditions in sorted order, exactly as ``rsatoolbox.rdm.calc_rdm(..., descriptor=...)``),
  and ``RDMs`` objects (always a set, as in rsatoolbox); a :class:`pozfast.rdm_files.StoredRDMs` from
  :func:`pozfast.load_rdm`.

Outputs (:func:`rdms_out` for RDMs, :func:`values_out` for numbers): numpy in gives numpy out, torch in
gives torch out on the input's device, rsatoolbox in gives an rsatoolbox ``RDMs`` object (descriptors and
measure kept) for RDMs and a numpy array for numbers (as ``rsatoolbox.rdm.compare``); a DataFrame, a list
of numbers or a stored file gives numpy. Results are float64 unless ``dtype=`` asks otherwise.

Method names: :func:`canonical_method` maps rsatoolbox's names onto pozfast's (one table, :data:`ALIASES`).
pozfast's RDM names are scipy's ``pdist`` names. One name differs in meaning: rsatoolbox's
``calc_rdm(method="euclidean")`` is the *squared* Euclidean distance divided by the number of channels, so
``"euclidean"`` here means scipy's (unsquared, unscaled) distance; :func:`pozfast.install_rsatoolbox_backend`
keeps rsatoolbox's meaning inside rsatoolbox.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.rows import as_condensed, as_features, as_tensor, n_items

COMPARE_METHODS = ("pearson", "r2", "spearman", "kendall_tau_a", "cosine")
RDM_METHODS = ("correlation", "euclidean", "sqeuclidean", "cosine", "crossnobis")

# name given -> pozfast name, per kind; pozfast's own names map onto themselves.
ALIASES: dict[str, dict[str, str]] = {
    "compare": {**{m: m for m in COMPARE_METHODS}, "corr": "pearson", "tau-a": "kendall_tau_a"},
    "rdm": {m: m for m in RDM_METHODS},
}
# rsatoolbox names pozfast does not compute, with what they are.
UNSUPPORTED: dict[str, dict[str, str]] = {
    "compare": {"kendall": "Kendall's tau-b", "tau-b": "Kendall's tau-b",
                "rho-a": "Spearman's rho-a (expected rho under random tie breaking)",
                "corr_cov": "whitened Pearson", "cosine_cov": "whitened cosine",
                "neg_riem_dist": "negative Riemannian distance", "bures": "Bures similarity",
                "bures_metric": "Bures metric"},
    "rdm": {"mahalanobis": "Mahalanobis distance", "poisson": "Poisson KL divergence",
            "poisson_cv": "cross-validated Poisson KL divergence"},
}


def canonical_method(name: Any, kind: str) -> str:
    """pozfast's name for ``name``, a pozfast or rsatoolbox method name (case and surrounding spaces ignored).

    Args:
        name: e.g. ``"corr"`` or ``"pearson"``, ``"tau-a"`` or ``"kendall_tau_a"``.
        kind: ``"compare"`` (RDM comparison methods) or ``"rdm"`` (dissimilarity measures).
    Raises:
        ValueError naming the valid names (with their aliases), or saying that an rsatoolbox method is not
        supported; TypeError when ``name`` is not a string.
    """
    if kind not in ALIASES:
        raise ValueError(f"kind must be one of {tuple(ALIASES)}, got {kind!r}")
    arg = "method"
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a string, got {type(name).__name__} {name!r}")
    key = name.strip().lower()
    if key in ALIASES[kind]:
        return ALIASES[kind][key]
    valid = ", ".join(_with_aliases(m, kind) for m in dict.fromkeys(ALIASES[kind].values()))
    if key in UNSUPPORTED[kind]:
        raise ValueError(f"{arg} {name!r} is rsatoolbox's {UNSUPPORTED[kind][key]}, which pozfast does not "
                         f"support; supported: {valid}")
    raise ValueError(f"{arg} must be one of {valid}; got {name!r}")


def _with_aliases(method: str, kind: str) -> str:
    others = [a for a, m in ALIASES[kind].items() if m == method and a != method]
    return f"{method!r}" + (f" (rsatoolbox {', '.join(repr(a) for a in others)})" if others else "")


@dataclasses.dataclass(frozen=True)
class Form:
    """How the caller gave an input, so that results go back in that form.

    kind: ``"numpy"``, ``"torch"``, ``"dataframe"`` or ``"rsatoolbox"``.
    device: the input's device (torch inputs).
    labels: the condition labels of the N items, in result order, or None.
    is_set: the input was a set (S RDMs or S datasets): results keep a leading S axis.
    rsa: rsatoolbox inputs only: what their RDMs objects need (one entry per dataset, or one for an RDMs).
    descriptor: the rsatoolbox obs descriptor that defined the conditions, or None.
    """

    kind: str
    device: torch.device | None = None
    labels: list | None = None
    is_set: bool = False
    rsa: tuple[dict, ...] = ()
    descriptor: str | None = None


def _module(name: str):
    """An optional library's module if it is already imported: an object of it cannot exist otherwise."""
    return sys.modules.get(name)


def _is_dataframe(x: Any) -> bool:
    pd = _module("pandas")
    return pd is not None and isinstance(x, (pd.DataFrame, pd.Series))


def is_dataset(x: Any) -> bool:
    base = _module("rsatoolbox.data.base")
    return base is not None and isinstance(x, base.DatasetBase)


def _is_rdms(x: Any) -> bool:
    rdms = _module("rsatoolbox.rdm.rdms")
    return rdms is not None and isinstance(x, rdms.RDMs)


def _is_stored(x: Any) -> bool:
    files = _module("pozfast.rdm_files")
    return files is not None and isinstance(x, files.StoredRDMs)


def is_rdm_object(x: Any) -> bool:
    """Whether ``x`` is an rsatoolbox ``RDMs`` or a :class:`StoredRDMs`: RDMs by type, never features."""
    return _is_rdms(x) or _is_stored(x)


def _is_object(x: Any) -> bool:
    """An array-like object (not a nested list of numbers): one member of a set."""
    return isinstance(x, (np.ndarray, Tensor)) or _is_dataframe(x) or is_dataset(x) or is_rdm_object(x)


def _kind(x: Any) -> str:
    if isinstance(x, Tensor):
        return "torch"
    if _is_dataframe(x):
        return "dataframe"
    if is_dataset(x) or _is_rdms(x):
        return "rsatoolbox"
    return "numpy"


def _frame_values(df: Any, name: str) -> tuple[np.ndarray, list]:
    """A DataFrame's (or Series') numbers and its index as labels; non-numeric columns are named."""
    pd = _module("pandas")
    if isinstance(df, pd.DataFrame):
        types = pd.api.types
        bad = [c for c, t in df.dtypes.items() if not (types.is_numeric_dtype(t) or types.is_bool_dtype(t))]
        if bad:
            raise TypeError(f"{name} must hold numbers only; its columns {bad[:5]!r} are not numeric")
    values = df.to_numpy()
    # pandas may hand out a read-only view; torch tensors over it would warn on every conversion
    return (values if values.flags.writeable else values.copy()), df.index.tolist()


# ---- features ----

def as_feature_set(X: Any, name: str = "X", *, descriptor: str | None = None) -> tuple[list[Tensor], Form]:
    """Features in any accepted form as a list of (N, D_s) float tensors and the caller's :class:`Form`.

    Args:
        X: one (N, D) matrix (numpy, torch, DataFrame, nested list, rsatoolbox Dataset), an (S, N, D)
            stack, or a list of matrices or Datasets with the same N items (D may differ).
        descriptor: rsatoolbox Datasets only: the obs descriptor whose values are the conditions; the
            observations of each condition are averaged (float64) and the conditions sorted, exactly as
            ``rsatoolbox.rdm.calc_rdm(dataset, descriptor=descriptor)``.
    Returns:
        (matrices, form): one matrix for a single input (``form.is_set`` False), S for a set. Matrices are
        float32 or float64 tensors (others converted as :func:`pozfast.rows.as_features`), views where
        possible.
    """
    if descriptor is not None and not isinstance(descriptor, str):
        raise TypeError(f"descriptor must be the name of an rsatoolbox obs descriptor, got "
                        f"{type(descriptor).__name__}")
    given = members = _members(X)
    is_set = members is not None
    if members is None:
        t = X if _is_object(X) else as_tensor(X, name)
        if isinstance(t, (np.ndarray, Tensor)) and t.ndim == 3:
            members, is_set = list(t), True
        else:
            members = [t]
    if descriptor is not None and not all(is_dataset(m) for m in members):
        raise ValueError(f"descriptor={descriptor!r} averages rsatoolbox Datasets by condition, but {name} is "
                         f"{type(members[0]).__name__}; give a Dataset or drop descriptor")
    mats, labels, rsa = [], [], []
    for s, m in enumerate(members):
        label = f"{name}[{s}]" if is_set else name
        if is_dataset(m):
            mat, lab, info = _dataset_features(m, descriptor, label)
            rsa.append(info)
        elif _is_dataframe(m):
            mat, lab = _frame_values(m, label)
        elif is_rdm_object(m):
            raise TypeError(f"{label} is an RDM set, not features; compare RDMs with compare_rdms")
        else:
            mat, lab = m, None
        mats.append(as_features(mat, label))
        labels.append(lab)
    _same_items(mats, labels, name)
    form = Form(_kind(given[0] if given else X), mats[0].device, labels[0], is_set, tuple(rsa), descriptor)
    return mats, form


def one_feature_matrix(X: Any, name: str = "X") -> Tensor:
    """One (N, D) feature matrix in any form :func:`as_feature_set` takes, but not a set."""
    mats, form = as_feature_set(X, name)
    if form.is_set:
        raise ValueError(f"{name} must be one (N, D) feature matrix, got a set of {len(mats)}")
    return mats[0]


def _members(X: Any) -> list | None:
    """The members of a list or tuple of matrices or Datasets; None for anything else (a nested list of
    numbers is one array)."""
    if isinstance(X, (list, tuple)) and X and all(_is_object(m) for m in X):
        return list(X)
    return None


def _same_items(mats: list[Tensor], labels: list, name: str) -> None:
    n = mats[0].shape[0]
    for s, (m, lab) in enumerate(zip(mats, labels)):
        if m.shape[0] != n:
            raise ValueError(f"{name}[{s}] has {m.shape[0]} items (rows) but {name}[0] has {n}; a set needs the "
                             f"same items in every member")
        if lab is not None and labels[0] is not None and list(lab) != list(labels[0]):
            raise ValueError(f"{name}[{s}] has other conditions than {name}[0] (labels {lab[:5]!r}... vs "
                             f"{labels[0][:5]!r}...); a set needs the same conditions in the same order")


def _dataset_features(ds: Any, descriptor: str | None, name: str) -> tuple[Any, list | None, dict]:
    """An rsatoolbox Dataset's measurements (averaged per condition when ``descriptor`` is given), its
    labels and what its RDMs object needs (mirrors rsatoolbox's ``_build_rdms``)."""
    measurements = np.asarray(ds.measurements)
    if measurements.ndim != 2:
        raise ValueError(f"{name} is a {type(ds).__name__} with {measurements.ndim}-D measurements; pozfast "
                         f"takes (observations x channels) Datasets (split a TemporalDataset by time first)")
    obs = {k: np.asarray(v) for k, v in ds.obs_descriptors.items()}
    info = {"descriptors": {}, "rdm_descriptors": copy.deepcopy(ds.descriptors)}
    if descriptor is None:
        info["pattern_descriptors"] = copy.deepcopy(ds.obs_descriptors)
        return measurements, labels_of(info["pattern_descriptors"]), info
    if descriptor not in obs:
        raise KeyError(f"descriptor {descriptor!r} is not an obs descriptor of {name}; it has "
                       f"{sorted(obs)!r}")
    conditions, first, inverse = np.unique(obs[descriptor], return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Mean per condition in float64, as one sparse (conditions x observations) indicator product: each
    # condition's rows summed in observation order, 5-10x faster than a scatter-add or a loop over conditions.
    from scipy.sparse import csr_matrix

    n_obs = len(inverse)
    indicator = csr_matrix((np.ones(n_obs), (inverse, np.arange(n_obs))), shape=(len(conditions), n_obs))
    means = np.asarray(indicator @ measurements.astype(np.float64, copy=False))
    means /= np.bincount(inverse, minlength=len(conditions))[:, None]
    # A descriptor constant within every condition is kept per condition; one that varies is dropped.
    patterns = {}
    for key, values in obs.items():
        per_condition = values[first]
        if len(conditions) == len(values) or bool(np.all(values == per_condition[inverse])):
            patterns[key] = per_condition.tolist()
    patterns["index"] = list(range(len(conditions)))
    info["pattern_descriptors"] = patterns
    return means, conditions.tolist(), info


def labels_of(patterns: dict) -> list | None:
    """Condition labels from rsatoolbox pattern descriptors: ``'conds'`` if present, else the first
    descriptor other than ``'index'`` in name order, else None."""
    keys = ["conds"] if "conds" in patterns else sorted(k for k in patterns if k != "index")
    return np.asarray(patterns[keys[0]]).tolist() if keys else None


# ---- RDMs ----

def as_rdm_set(rdms: Any, name: str = "rdm", *, kind: str = "dissimilarity",
               kind_arg: str = "kind") -> tuple[Tensor, Form]:
    """RDMs in any accepted form as an (S, P) float64 tensor of condensed dissimilarities and the caller's Form.

    Args:
        rdms: a condensed vector (P,) or (1, P), a square symmetric (N, N) matrix, an (S, P) or (S, N, N)
            stack, a list of those, an rsatoolbox ``RDMs`` object (a set), a :class:`StoredRDMs`, or a
            DataFrame (square: its index gives the labels). NaN marks a missing pair; inf is an error.
        kind: ``"dissimilarity"`` or ``"similarity"`` (turned into ``1 - s``). A square matrix with a unit
            diagonal given as dissimilarities is refused: it is a similarity matrix.
        kind_arg: the caller's name of the ``kind`` argument, for that error (e.g. ``"b_kind"``).
    Returns:
        (vectors, form): S = 1 and ``form.is_set`` False for one RDM.
    """
    if is_rdm_object(rdms):
        return _rsa_rdm_set(rdms, name, kind)
    if is_dataset(rdms):
        raise TypeError(f"{name} is an rsatoolbox Dataset (features), not an RDM; compute its RDM with "
                        f"pozfast.rdm first")
    given = members = _members(rdms)
    is_set, labels = members is not None, None
    if members is None:
        if _is_dataframe(rdms):
            values, labels = _frame_values(rdms, name)
            t = as_tensor(values, name)
        else:
            t = as_tensor(rdms, name)
        members, is_set = _split_rdms(t, name)
    vectors = []
    for s, m in enumerate(members):
        label = f"{name}[{s}]" if is_set else name
        t = as_tensor(_frame_values(m, label)[0] if _is_dataframe(m) else m, label)
        if kind == "dissimilarity" and looks_like_similarity_matrix(t):
            raise ValueError(f"{label} is a square symmetric matrix with a unit diagonal: a similarity matrix, not "
                             f"dissimilarities; pass {kind_arg}='similarity' to use it as similarities (1 - s)")
        vectors.append(as_condensed(t, label, kind))
    if len({v.numel() for v in vectors}) > 1:
        raise ValueError(f"the RDMs in {name} have different numbers of items: "
                         f"{sorted({n_items(v.numel()) for v in vectors})}")
    if labels is not None and len(labels) != n_items(vectors[0].numel()):
        labels = None  # a DataFrame of condensed rows: its index names RDMs, not items
    first = given[0] if given else rdms
    form = Form(_kind(first), first.device if isinstance(first, Tensor) else None, labels, is_set)
    return torch.stack(vectors), form


def _split_rdms(t: Tensor, name: str) -> tuple[list[Tensor], bool]:
    """One array as (members, is_set): (P,), (1, P) and square (N, N) are one RDM; (S, P) and (S, N, N) a set."""
    if t.dim() == 1 or (t.dim() == 2 and t.shape[0] == t.shape[1] >= 2):
        return [t], False
    if t.dim() == 2 and t.shape[0] == 1:
        return [t[0]], False
    if t.dim() in (2, 3):
        return list(t), True
    raise ValueError(f"{name} must be a condensed vector, a square matrix or a stack of them, got shape "
                     f"{tuple(t.shape)}")


def condensed_rows(array: Any, name: str, kind: str = "dissimilarity") -> Tensor:
    """An (S, P) array of condensed RDMs (rsatoolbox's ``dissimilarities``) as a checked float64 tensor."""
    t = torch.from_numpy(np.array(array, dtype=np.float64, ndmin=2))
    if t.dim() != 2:
        raise ValueError(f"{name} must be (S, P) condensed RDMs, got shape {tuple(t.shape)}")
    return torch.stack([as_condensed(v, f"{name}[{s}]", kind) for s, v in enumerate(t)])


def _rsa_rdm_set(rdms: Any, name: str, kind: str) -> tuple[Tensor, Form]:
    vectors = condensed_rows(rdms.dissimilarities, name, kind)
    info = {"descriptors": copy.deepcopy(rdms.descriptors), "rdm_descriptors": copy.deepcopy(rdms.rdm_descriptors),
            "pattern_descriptors": copy.deepcopy(rdms.pattern_descriptors), "measure": rdms.dissimilarity_measure}
    # rsatoolbox RDMs objects are sets, as in rsatoolbox; a stored file with one RDM is one RDM.
    is_set = _is_rdms(rdms) or len(vectors) > 1
    return vectors, Form(_kind(rdms), None, labels_of(rdms.pattern_descriptors), is_set, (info,))


def looks_like_similarity_matrix(t: Any, atol: float = 1e-5) -> bool:
    """Whether ``t`` is a square (N >= 2), symmetric matrix with ones on its diagonal: a similarity
    (e.g. correlation) matrix, which must not be read as features or as dissimilarities.

    ``atol`` bounds |diagonal - 1| and the asymmetry (relative to the largest entry); NaN entries must be
    symmetric.
    """
    if not isinstance(t, Tensor):
        t = as_tensor(np.asarray(t), "t")
    if t.dim() != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2:
        return False
    t = t.detach().double()
    diagonal = t.diagonal()
    if not bool(torch.isfinite(diagonal).all()) or bool(((diagonal - 1).abs() > atol).any()):
        return False
    nan = torch.isnan(t)
    if not torch.equal(nan, nan.T):
        return False
    scale = 1 + float(t.nan_to_num().abs().max())
    return not bool(((t - t.T).nan_to_num().abs() > atol * scale).any())


# ---- outputs ----

def result_dtype(dtype: Any) -> torch.dtype:
    """The floating torch dtype of results: float64 for None; torch or numpy dtypes and their names."""
    if dtype is None:
        return torch.float64
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        try:
            out = torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
        except TypeError:
            raise TypeError(f"dtype must be a floating torch or numpy dtype, got {dtype!r}") from None
    if not out.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}")
    return out


def rdms_out(rdms: Tensor, form: Form, *, measure: str | None = None, dtype: Any = None) -> Any:
    """RDM results in the caller's form.

    Args:
        rdms: (P,) condensed or (N, N) square for one RDM; (S, P) or (S, N, N) when ``form.is_set``.
        form: from :func:`as_feature_set` or :func:`as_rdm_set`.
        measure: the dissimilarity measure (stored in rsatoolbox ``RDMs``; default: the input's own).
        dtype: floating dtype of numpy and torch results (default float64); rsatoolbox RDMs are float64.
    Returns:
        numpy array (numpy, DataFrame, list or stored inputs), torch tensor on the input's device, or an
        rsatoolbox ``RDMs`` (S RDMs for a set, else one).
    """
    if form.kind != "rsatoolbox":
        return values_out(rdms, form, dtype=dtype)
    from rsatoolbox.rdm import RDMs

    vectors = rdms.detach().to("cpu", torch.float64).numpy()
    vectors = vectors.reshape((-1, *vectors.shape[-1:]) if _condensed(rdms, form) else (-1, *vectors.shape[-2:]))
    if len(form.rsa) <= 1:
        info = form.rsa[0] if form.rsa else {}
        return _rdms_object(RDMs, vectors, info, measure)
    if form.descriptor is None:  # as calc_rdm does for a list of datasets
        from rsatoolbox.rdm import concat

        return concat([_rdms_object(RDMs, v[None], info, measure) for v, info in zip(vectors, form.rsa)])
    # calc_rdm merges per-dataset RDMs with from_partials, whose Python loops over all pairs cost 0.3 s per
    # dataset at N = 2000. The datasets here share their conditions, so only its descriptor merging matters:
    # run it on two-condition stand-ins and give the result the real dissimilarities and conditions.
    from rsatoolbox.rdm.combine import from_partials

    stand_ins = [_rdms_object(RDMs, np.zeros((1, 1)), {**info, "pattern_descriptors": {form.descriptor: [0, 1]}},
                              measure) for info in form.rsa]
    merged = from_partials(stand_ins, descriptor=form.descriptor)
    return RDMs(vectors, dissimilarity_measure=merged.dissimilarity_measure, descriptors=merged.descriptors,
                rdm_descriptors=merged.rdm_descriptors,
                pattern_descriptors={form.descriptor: list(form.labels), "index": list(range(len(form.labels)))})


def _condensed(rdms: Tensor, form: Form) -> bool:
    return rdms.dim() == (2 if form.is_set else 1)


def _rdms_object(RDMs, vectors: np.ndarray, info: dict, measure: str | None):
    n_rdm, n_cond = len(vectors), (vectors.shape[-1] if vectors.ndim == 3 else n_items(vectors.shape[-1]))
    patterns = copy.deepcopy(info.get("pattern_descriptors", {}))
    rdm_desc = copy.deepcopy(info.get("rdm_descriptors", {}))
    if any(len(_as_list(v)) != n_cond for v in patterns.values()):
        patterns = {}
    if any(len(_as_list(v)) != n_rdm for v in rdm_desc.values()):
        rdm_desc = {}
    out = RDMs(vectors, dissimilarity_measure=measure if measure is not None else info.get("measure"),
               descriptors=copy.deepcopy(info.get("descriptors", {})), rdm_descriptors=rdm_desc)
    if patterns:
        out.pattern_descriptors = patterns  # as given: rsatoolbox's calc_rdm without a descriptor adds no 'index'
    return out


def _as_list(v: Any) -> list:
    return [v] if isinstance(v, str) or not isinstance(v, Sequence | np.ndarray) else list(v)


def values_out(values: Tensor | float, form: Form, *, dtype: Any = None) -> Any:
    """Numbers (a comparison value, a matrix of them) in the caller's form: a torch tensor on the input's
    device for torch inputs, else numpy (a numpy float64 scalar for a 0-d result); ``dtype`` as in
    :func:`rdms_out`."""
    dt = result_dtype(dtype)
    t = values if isinstance(values, Tensor) else torch.tensor(values, dtype=torch.float64)
    if form.kind == "torch":
        return t.detach().to(device=form.device, dtype=dt)
    out = t.detach().to("cpu", dt).numpy()
    return out[()] if out.ndim == 0 else out
