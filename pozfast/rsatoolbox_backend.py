"""One line for rsatoolbox users: ``pozfast.install_rsatoolbox_backend()`` makes rsatoolbox's own functions
compute with pozfast where pozfast has the method, keeping rsatoolbox's semantics and objects:

- ``rsatoolbox.rdm.calc_rdm(..., method="correlation")`` and ``"euclidean"`` (rsatoolbox's: squared
  distance over the channel count; without ``remove_mean``) for single Datasets, lists of them with the same
  conditions, ``descriptor=`` averaging, and what calls it: ``calc_rdm_movie``, searchlights;
- ``calc_rdm(..., method="crossnobis")`` of one Dataset (``noise`` one precision or one per fold,
  ``cv_descriptor``; without ``remove_mean``);
- ``rsatoolbox.rdm.compare`` with ``"corr"``, ``"spearman"``, ``"cosine"`` and ``"tau-a"`` (and everything
  built on it: ``eval_fixed``, ``eval_bootstrap_*``, noise ceilings, model fitting).

Other methods, Datasets with non-finite or non-2-D measurements, and rsatoolbox's edge conventions stay
rsatoolbox's own (a comparison that is undefined, e.g. against a constant RDM, is 0 as in rsatoolbox).
:func:`uninstall_rsatoolbox_backend` puts rsatoolbox's functions back. The switch replaces the functions
wherever a loaded module holds them under their own names (rsatoolbox's modules and ones that did
``from rsatoolbox.rdm import calc_rdm``), for the whole process: install from one thread, before use.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

# rsatoolbox calc_rdm method -> (pozfast RDM method, divided by the channel count, rsatoolbox's measure name)
_RDM_METHODS = {"correlation": ("correlation", False, "correlation"),
                "euclidean": ("sqeuclidean", True, "squared euclidean")}
# rsatoolbox compare function -> pozfast comparison method.
_COMPARE_FUNCTIONS = {"compare_correlation": "pearson", "compare_spearman": "spearman", "compare_cosine": "cosine",
                      "compare_kendall_tau_a": "kendall_tau_a"}
_installed: dict[tuple[str, str], Any] = {}  # (module, attribute) -> rsatoolbox's original


def install_rsatoolbox_backend() -> None:
    """Route rsatoolbox's correlation, euclidean and crossnobis RDMs and its corr / spearman / cosine / tau-a
    comparisons to pozfast (idempotent). Needs rsatoolbox 0.3."""
    try:
        importlib.import_module("rsatoolbox")
        calc = importlib.import_module("rsatoolbox.rdm.calc")
        compare = importlib.import_module("rsatoolbox.rdm.compare")  # the module; rsatoolbox.rdm.compare is a function
    except ImportError as exc:
        raise ImportError("install_rsatoolbox_backend needs rsatoolbox: pip install rsatoolbox") from exc
    missing = [f"{m.__name__}.{a}" for m, a in [(calc, "calc_rdm"), (compare, "_parse_input_rdms"),
                                               *((compare, name) for name in _COMPARE_FUNCTIONS)]
               if not hasattr(m, a)]
    if missing:
        raise RuntimeError(f"this rsatoolbox lacks {missing}; the pozfast backend supports rsatoolbox 0.3")
    if _installed:
        return
    _replace_everywhere(calc.calc_rdm, _calc_rdm(calc.calc_rdm))
    for name, method in _COMPARE_FUNCTIONS.items():
        original = getattr(compare, name)
        _replace_everywhere(original, _comparison(original, method, compare._parse_input_rdms))


def uninstall_rsatoolbox_backend() -> None:
    """Put rsatoolbox's own functions back (nothing happens when the backend is not installed)."""
    for (module, attribute), original in _installed.items():
        setattr(sys.modules[module], attribute, original)
    _installed.clear()


def _replace_everywhere(original, function) -> None:
    """Replace ``original`` in every loaded module that holds it under its name: rsatoolbox's own modules
    and the caller's (``from rsatoolbox.rdm import calc_rdm`` made copies); modules imported later copy the
    replacement."""
    attribute = original.__name__
    for name, module in list(sys.modules.items()):
        if vars(module).get(attribute) is original if hasattr(module, "__dict__") else False:
            _installed[(name, attribute)] = original
            setattr(module, attribute, function)


def _calc_rdm(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def calc_rdm(*args, **kwargs):
        given = signature.bind(*args, **kwargs)
        given.apply_defaults()
        rdms = _pozfast_rdms(**given.arguments)
        return rdms if rdms is not None else original(*args, **kwargs)

    return calc_rdm


def _pozfast_rdms(dataset, method="euclidean", descriptor=None, noise=None, cv_descriptor=None, remove_mean=False,
                  **_):
    """calc_rdm's result computed by pozfast, or None where rsatoolbox should do it: other methods,
    ``remove_mean`` (except for correlation, which it does not change), measurements that are not finite 2-D
    floats, and inputs pozfast does not take (e.g. datasets with different conditions, which rsatoolbox
    merges with missing pairs, or crossnobis of a list of datasets). The priors concern Poisson RDMs only."""
    import torch

    from pozfast.geometry import rdm
    from pozfast.interop import as_feature_set, rdms_out

    if method not in (*_RDM_METHODS, "crossnobis") or (remove_mean and method != "correlation"):
        return None
    members = list(dataset) if isinstance(dataset, Iterable) else [dataset]
    for ds in members:
        measurements = np.asarray(getattr(ds, "measurements", None))
        if measurements.ndim != 2 or measurements.dtype.kind != "f" or not np.isfinite(measurements).all():
            return None
    try:
        if method == "crossnobis":
            if isinstance(dataset, Iterable) or not isinstance(descriptor, str):
                return None
            return rdm(dataset, method="crossnobis", descriptor=descriptor, cv_descriptor=cv_descriptor, noise=noise)
        mats, form = as_feature_set(members if isinstance(dataset, Iterable) else dataset, "dataset",
                                    descriptor=descriptor)
    except (ValueError, KeyError, TypeError):
        return None
    ours, per_channel, measure = _RDM_METHODS[method]
    rdms = [rdm(X, method=ours) / (X.shape[1] if per_channel else 1) for X in mats]
    return rdms_out(torch.stack(rdms) if form.is_set else rdms[0], form, measure=measure)


def _comparison(original, method: str, parse_input):
    @functools.wraps(original)
    def compare(rdm1, rdm2):
        from pozfast.rdm_sets import compare_rdm_sets

        # rsatoolbox's NaN rules: a pair missing in any RDM of either set is left out of every comparison
        kept1, kept2, kept = parse_input(rdm1, rdm2)
        vectors1, vectors2 = (np.full((len(v), kept.size), np.nan) for v in (kept1, kept2))
        vectors1[:, kept], vectors2[:, kept] = kept1, kept2
        return np.nan_to_num(compare_rdm_sets(vectors1, vectors2, method), nan=0.0)  # each RDM ranked once

    return compare
