"""Figures: matplotlib without a display, saved as PNG atomically."""

from __future__ import annotations

import os
from pathlib import Path

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
