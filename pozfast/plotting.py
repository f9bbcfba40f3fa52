"""Figures: matplotlib without a display, saved as PNG atomically; RDM heat maps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pozfast._io import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); a clear error without matplotlib."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'pozfast[plots]'") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (complete or absent) and close it."""
    fig.tight_layout()
    out = atomic_write(path, lambda f: fig.savefig(f, format="png"))
    pyplot().close(fig)
    return out


def plot_rdm(d: Any, labels: Sequence | None = None, path: str | os.PathLike | None = None, *,
             scale: str = "rank", kind: str = "dissimilarity", title: str | None = None, cmap: str = "viridis",
             max_labels: int = 40):
    """Heat map of one RDM with its condition labels and a colour bar.

    Args:
        d: one RDM: a condensed vector, square matrix, rsatoolbox ``RDMs`` or :class:`pozfast.StoredRDMs`
            holding one RDM, or a square DataFrame (numpy or torch). NaN pairs are left blank.
        labels: N condition labels; default: the input's own (DataFrame index, rsatoolbox pattern
            descriptor), else none. With more than ``max_labels`` items, every k-th label is shown.
        path: where to write a PNG (written atomically); None returns the open Figure instead.
        scale: ``"rank"`` (dissimilarities replaced by their ranks, ties averaged, scaled to (0, 1]: the
            usual view, robust to the measure's scale) or ``"raw"`` (the values).
        kind: ``"dissimilarity"`` or ``"similarity"`` (shown as ``1 - s``).
        title: figure title; default the measure when the input names one.
    Returns:
        The matplotlib Figure, or the Path written when ``path`` is given.
    """
    import numpy as np
    from scipy.stats import rankdata

    from pozfast.interop import as_rdm_set
    from pozfast.rows import n_items
    from pozfast.validate import positive_int

    if scale not in ("rank", "raw"):
        raise ValueError(f"scale must be 'rank' or 'raw', got {scale!r}")
    max_labels = positive_int(max_labels, "max_labels")
    vectors, form = as_rdm_set(d, "d", kind=kind, kind_arg="kind")
    if vectors.shape[0] != 1:
        raise ValueError(f"plot_rdm draws one RDM; d holds {vectors.shape[0]}: pass one of them")
    values = vectors[0].cpu().numpy().copy()
    n = n_items(values.size, "d")
    labels = list(labels) if labels is not None else form.labels
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels must hold {n} condition labels (one per item), got {len(labels)}")
    if scale == "rank":
        valid = ~np.isnan(values)
        values[valid] = rankdata(values[valid]) / max(int(valid.sum()), 1)
    square = np.zeros((n, n))
    upper = np.triu_indices(n, 1)
    square[upper] = square.T[upper] = values
    measure = form.rsa[0].get("measure") if form.rsa else None

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=110)
    image = ax.imshow(np.ma.masked_invalid(square), cmap=cmap, interpolation="nearest")
    what = "dissimilarity" + (f" ({measure})" if measure else "")
    fig.colorbar(image, ax=ax, label=f"{what}, rank scaled to (0, 1]" if scale == "rank" else what)
    if labels is not None:
        ticks = list(range(0, n, -(-n // max_labels)))
        names = [str(labels[i]) for i in ticks]
        ax.set_xticks(ticks, names, rotation=90, fontsize=7 if n > 20 else 9)
        ax.set_yticks(ticks, names, fontsize=7 if n > 20 else 9)
    else:
        ax.set_xlabel("item")
        ax.set_ylabel("item")
    if title is not None or measure:
        ax.set_title(title if title is not None else measure)
    return fig if path is None else save_figure(fig, path)
