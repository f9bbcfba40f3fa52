"""One line for rsatoolbox users: ``pozfast.install_rsatoolbox_backend()`` makes rsatoolbox's own functions
compute with pozfast where pozfast has the method, keeping rsatoolbox's semantics and objects:

- ``rsatoolbox.rdm.calc_rdm(..., method="correlation")`` (single Datasets, lists of them, ``descriptor=``
  averaging, and everything built on it: ``calc_rdm_movie``, searchlights);
- ``rsatoolbox.rdm.compare`` with ``"corr"``, ``"spearman"``, ``"cosine"`` and ``"tau-a"`` (and everything
  built on it: ``eval_fixed``, ``eval_bootstrap_*``, noise ceilings, model fitting).

Other methods, Datasets with non-finite or non-2-D measurements, and rsatoolbox's edge conventions stay
rsatoolbox's own (a comparison that is undefined, e.g. against a constant RDM, is 0 as in rsatoolbox).
:func:`uninstall_rsatoolbox_backend` puts rsatoolbox's functions back. Install from one thread, before use:
the switch replaces module attributes of rsatoolbox for the whole process.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np

# rsatoolbox calc_rdm method -> pozfast RDM method (rsatoolbox's "euclidean" is the squared distance over
# the channel count: it joins this table when pozfast.rdm computes it).
_RDM_METHODS = {"correlation": "correlation"}
# rsatoolbox compare function -> pozfast comparison method.
_COMPARE_FUNCTIONS = {"compare_correlation": "pearson", "compare_spearman": "spearman", "compare_cosine": "cosine",
                      "compare_kendall_tau_a": "kendall_tau_a"}
_installed: dict[tuple[str, str], Any] = {}  # (module, attribute) -> rsatoolbox's original


def install_rsatoolbox_backend() -> None:
    """Route rsatoolbox's correlation RDMs and its corr / spearman / cosine / tau-a comparisons to pozfast
    (idempotent). Needs rsatoolbox 0.3 (it replaces ``rsatoolbox.rdm.calc._calc_rdm_single``)."""
    try:
        calc = importlib.import_module("rsatoolbox.rdm.calc")
        compare = importlib.import_module("rsatoolbox.rdm.compare")
        package = importlib.import_module("rsatoolbox.rdm")
    except ImportError as exc:
        raise ImportError("install_rsatoolbox_backend needs rsatoolbox: pip install rsatoolbox") from exc
    missing = [f"rsatoolbox.rdm.{m.__name__.rsplit('.', 1)[-1]}.{a}" for m, a in
               [(calc, "_calc_rdm_single"), (compare, "_parse_input_rdms"),
                *((compare, name) for name in _COMPARE_FUNCTIONS)] if not hasattr(m, a)]
    if missing:
        raise RuntimeError(f"this rsatoolbox lacks {missing}; the pozfast backend supports rsatoolbox 0.3")
    if _installed:
        return
    _replace(calc, "_calc_rdm_single", _calc_rdm_single(calc._calc_rdm_single))
    for name, method in _COMPARE_FUNCTIONS.items():
        ours = _comparison(getattr(compare, name), method, compare._parse_input_rdms)
        _replace(compare, name, ours)
        if getattr(package, name, None) is _installed[(compare.__name__, name)]:
            _replace(package, name, ours)


def uninstall_rsatoolbox_backend() -> None:
    """Put rsatoolbox's own functions back (nothing happens when the backend is not installed)."""
    for (module, attribute), original in _installed.items():
        setattr(importlib.import_module(module), attribute, original)
    _installed.clear()


def _replace(module, attribute: str, function) -> None:
    _installed[(module.__name__, attribute)] = getattr(module, attribute)
    setattr(module, attribute, function)


def _calc_rdm_single(original):
    @functools.wraps(original)
    def calc_rdm_single(dataset, method, descriptor, *args, **kwargs):
        measurements = np.asarray(dataset.measurements)
        if (method not in _RDM_METHODS or measurements.ndim != 2 or measurements.dtype.kind != "f"
                or not np.isfinite(measurements).all()):
            return original(dataset, method, descriptor, *args, **kwargs)
        from pozfast.geometry import rdm
        from pozfast.interop import as_feature_set, rdms_out

        # noise, cv_descriptor, priors and remove_mean do not change a correlation RDM (as in rsatoolbox)
        (X,), form = as_feature_set(dataset, "dataset", descriptor=descriptor)
        return rdms_out(rdm(X), form, measure=method)

    return calc_rdm_single


def _comparison(original, method: str, parse_input):
    @functools.wraps(original)
    def compare(rdm1, rdm2):
        from pozfast.geometry import compare_rdms

        vectors1, vectors2, _ = parse_input(rdm1, rdm2)  # rsatoolbox's NaN rules: a pair missing anywhere is out
        values = np.array([[compare_rdms(a, b, method).value for b in vectors2] for a in vectors1], dtype=np.float64)
        return np.nan_to_num(values, nan=0.0)

    return compare
