"""RDMs on disk with their condition labels and dissimilarity measure.

Formats, chosen by the file name's ending:
- ``.h5`` / ``.hdf5``: rsatoolbox's HDF5 layout (``RDMs.save``): ``rsatoolbox.rdm.load_rdm(path)`` reads
  pozfast's files, and :func:`load_rdm` reads rsatoolbox's. Needs h5py. Text is stored as ASCII there, as
  rsatoolbox does; labels with other characters need ``.npz``.
- ``.npz``: ``dissimilarities`` (S, P) float64, ``labels`` (N,) and ``measure`` (a string), when given.
- ``.npy``: the dissimilarities only, (P,) for one RDM or (S, P), as ``pozfast.rdm(out="x.npy")`` writes.
Files are written atomically (complete or absent) with the usual permissions (0666 less the umask).
"""

from __future__ import annotations

import dataclasses
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from pozfast._io import atomic_path, atomic_write
from pozfast.interop import labels_of, as_rdm_set, condensed_rows
from pozfast.rows import n_items

_FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".npz": "npz", ".npy": "npy"}


@dataclasses.dataclass(frozen=True)
class StoredRDMs:
    """RDMs read by :func:`load_rdm`, with rsatoolbox ``RDMs``' attribute names.

    dissimilarities: (S, P) float64, condensed (scipy squareform order); NaN marks a missing pair.
    dissimilarity_measure: e.g. ``"correlation"``, or None when the file does not say.
    descriptors, rdm_descriptors, pattern_descriptors: rsatoolbox's descriptor dicts (one value for all,
    one per RDM, one per condition); ``pattern_descriptors["index"]`` numbers the conditions.
    """

    dissimilarities: np.ndarray
    dissimilarity_measure: str | None = None
    descriptors: dict = dataclasses.field(default_factory=dict)
    rdm_descriptors: dict = dataclasses.field(default_factory=dict)
    pattern_descriptors: dict = dataclasses.field(default_factory=dict)

    @property
    def n_rdm(self) -> int:
        return self.dissimilarities.shape[0]

    @property
    def n_cond(self) -> int:
        return n_items(self.dissimilarities.shape[1], "dissimilarities")

    @property
    def labels(self) -> list | None:
        """The condition labels: pattern descriptor ``'conds'``, else the first other than ``'index'``."""
        return labels_of(self.pattern_descriptors)

    @property
    def measure(self) -> str | None:
        return self.dissimilarity_measure

    def rdm(self, i: int = 0) -> np.ndarray:
        """RDM ``i`` as a condensed (P,) float64 vector."""
        return self.dissimilarities[i]

    def to_rsatoolbox(self):
        """An rsatoolbox ``RDMs`` object (needs rsatoolbox)."""
        from rsatoolbox.rdm import RDMs

        return RDMs(self.dissimilarities.copy(), dissimilarity_measure=self.dissimilarity_measure,
                    descriptors=dict(self.descriptors), rdm_descriptors=dict(self.rdm_descriptors),
                    pattern_descriptors=dict(self.pattern_descriptors))


def _format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"path must end in one of {sorted(_FORMATS)} (the file format), got {str(path)!r}")
    return _FORMATS[suffix]


def save_rdm(path: str | os.PathLike, rdm: Any, labels: Any = None, measure: str | None = None, *,
             kind: str = "dissimilarity") -> Path:
    """Write one RDM or a set with its condition labels and measure; the format follows the ending of ``path``.

    Args:
        path: ``.h5``/``.hdf5`` (rsatoolbox's layout), ``.npz`` or ``.npy`` (dissimilarities only).
        rdm: a condensed vector, square matrix, (S, P) or (S, N, N) stack, numpy or torch, an rsatoolbox
            ``RDMs`` or a :class:`StoredRDMs` (their descriptors are kept), or a square DataFrame (its index
            gives the labels).
        labels: N condition labels (strings or numbers), stored as pattern descriptor ``'conds'``; default:
            the input's own.
        measure: the dissimilarity measure, e.g. ``"correlation"``; default: the input's own, else none
            (rsatoolbox reads it as None).
        kind: ``"dissimilarity"`` or ``"similarity"`` (stored as ``1 - s``).
    Returns:
        The path written (complete or absent; 0666 less the umask).
    """
    fmt = _format(path)
    if measure is not None and not isinstance(measure, str):
        raise TypeError(f"measure must be a string such as 'correlation', got {type(measure).__name__}")
    vectors, form = as_rdm_set(rdm, "rdm", kind=kind)
    info = form.rsa[0] if form.rsa else {}
    n = n_items(vectors.shape[1])
    patterns = dict(info.get("pattern_descriptors", {}))
    if labels is not None or (form.labels is not None and not patterns):  # other descriptors are kept
        patterns = {**patterns, "conds": _labels(labels if labels is not None else form.labels, n),
                    "index": patterns.get("index", list(range(n)))}
    measure = measure if measure is not None else info.get("measure")
    array = vectors.cpu().numpy()
    if fmt == "npy":
        if labels is not None or measure is not None:
            raise ValueError(f"{Path(path).name}: .npy holds the dissimilarities only; save labels and measure "
                             f"to .h5 or .npz")
        return atomic_write(path, lambda f: np.save(f, array if form.is_set else array[0]))
    if fmt == "npz":
        extra = {"labels": _label_array(labels_of(patterns), "labels")} if labels_of(patterns) else {}
        if measure is not None:
            extra["measure"] = np.array(measure)
        return atomic_write(path, lambda f: np.savez(f, dissimilarities=array, **extra))
    contents = {"dissimilarities": array, "descriptors": dict(info.get("descriptors", {})),
                "rdm_descriptors": dict(info.get("rdm_descriptors", {"index": list(range(len(array)))})),
                "pattern_descriptors": patterns or {"index": list(range(n))}, "dissimilarity_measure": measure}
    h5py = _h5py()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["pozfast_version"] = _version()
        _write_group(h5py, f, contents, "")
    return Path(path)


def _labels(labels: Any, n: int) -> list:
    array = _label_array(labels, "labels")
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"labels must be {n} condition labels (one per item), got shape {array.shape}")
    return array.tolist()


def _label_array(labels: Any, name: str) -> np.ndarray:
    if isinstance(labels, str):
        raise TypeError(f"{name} must be a list of labels, got the string {labels!r}")
    array = np.asarray(labels)
    if array.dtype.kind not in "biufU":
        raise TypeError(f"{name} must be strings or numbers, got {array.dtype}")
    return array


def _write_group(h5py, group, contents: dict, where: str) -> None:
    """rsatoolbox's ``write_dict_hdf5`` layout: dicts are groups, strings attributes, None an empty
    dataset, lists and arrays datasets (text as ASCII bytes)."""
    for key, value in contents.items():
        name = f"{where}/{key}"
        if isinstance(value, str):
            group.attrs[key] = str(value)
        elif value is None:
            group[key] = h5py.Empty("f")
        elif isinstance(value, dict):
            _write_group(h5py, group.create_group(key), value, name)
        else:
            array = np.asarray(value)
            if array.dtype.kind == "U":
                try:
                    array = array.astype("S")
                except UnicodeEncodeError:
                    raise ValueError(f"{name} holds text that is not ASCII, which rsatoolbox's HDF5 format cannot "
                                     f"store; save to .npz instead") from None
            elif array.dtype.kind not in "biufS":
                raise TypeError(f"{name} must hold numbers or text to be stored in HDF5, got {array.dtype}")
            group[key] = array


def load_rdm(path: str | os.PathLike) -> StoredRDMs:
    """Read RDMs written by :func:`save_rdm`, by rsatoolbox's ``RDMs.save`` (HDF5), or a condensed / square
    / stacked ``.npy`` (as ``pozfast.rdm(out=...)`` writes)."""
    fmt = _format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no RDM file {str(path)!r}")
    if fmt == "npy":
        vectors, _ = as_rdm_set(np.load(path, allow_pickle=False), str(path))
        stored = StoredRDMs(vectors.numpy())
    elif fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            _require(z.files, path)
            stored = StoredRDMs(z["dissimilarities"], str(z["measure"]) if "measure" in z.files else None,
                                pattern_descriptors={"conds": z["labels"].tolist()} if "labels" in z.files else {})
    else:
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            contents = _read_group(h5py, f)
        _require(contents, path)
        stored = StoredRDMs(contents["dissimilarities"], contents.get("dissimilarity_measure"),
                            contents.get("descriptors", {}), _lists(contents.get("rdm_descriptors", {})),
                            _lists(contents.get("pattern_descriptors", {})))
    vectors = condensed_rows(stored.dissimilarities, str(path))
    n, s = n_items(vectors.shape[1]), vectors.shape[0]
    patterns = {**stored.pattern_descriptors}
    patterns.setdefault("index", list(range(n)))
    rdm_desc = {**stored.rdm_descriptors}
    rdm_desc.setdefault("index", list(range(s)))
    for what, table, count in (("pattern", patterns, n), ("rdm", rdm_desc, s)):
        for key, values in table.items():
            if len(values) != count:
                raise ValueError(f"{path}: {what} descriptor {key!r} has {len(values)} values for {count} "
                                 f"{'conditions' if what == 'pattern' else 'RDMs'}")
    return dataclasses.replace(stored, dissimilarities=vectors.numpy(), rdm_descriptors=rdm_desc,
                               pattern_descriptors=patterns)


def _require(keys, path) -> None:
    if "dissimilarities" not in keys:
        raise ValueError(f"{path} is not an RDM file: it has no 'dissimilarities' (it has {sorted(keys)})")


def _read_group(h5py, group) -> dict:
    """Mirror of rsatoolbox's ``read_dict_hdf5``: groups to dicts, empty datasets to None, bytes to str."""
    out = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_group(h5py, item)
        elif item.shape is None:
            out[key] = None
        else:
            out[key] = _text(item[()])
    for key, value in group.attrs.items():
        out[key] = _text(value)
    return out


def _text(value: Any) -> Any:
    """ASCII bytes (rsatoolbox's text) as str, element-wise in arrays."""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return value.astype(str)
    return value


def _lists(descriptors: dict) -> dict:
    """Per-RDM and per-condition descriptors as lists of Python values (rsatoolbox's ``dict_to_list``)."""
    return {k: (np.atleast_1d(v).tolist() if not isinstance(v, dict) else [v[str(i)] for i in range(len(v))])
            for k, v in descriptors.items()}


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("RDM files in HDF5 (.h5, .hdf5) need h5py: pip install h5py (or use .npz)") from exc
    return h5py


def _version() -> str:
    try:
        return version("pozfast")
    except PackageNotFoundError:
        return "unknown"
