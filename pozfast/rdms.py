"""Pearson RDMs ``1 - r`` between the rows of a feature matrix, blockwise over the upper triangle:
condensed, square, or written to a memory-mapped ``.npy`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pozfast.ops import rdm_tiles
from pozfast.rows import RowStats, as_features, compute_dtype, condensed_length, default_block, row_stats
from pozfast.validate import optional_positive_int


def rdm(X: Any, *, out: str | os.PathLike = "condensed", block: int | None = None,
        device: str | torch.device | None = None, progress: bool = False) -> Tensor | Path:
    """Pearson RDM ``1 - r`` between the rows of X, computed blockwise over the upper triangle.

    Args:
        X: (N, D) float tensor or numpy array, finite.
        out: ``"condensed"`` (N(N-1)/2 entries, scipy squareform order), ``"square"`` (N x N, zero
            diagonal), or a path ending in ``.npy``: the condensed RDM written blockwise to a memory-mapped
            file, complete or absent (written under a temporary name, then renamed).
        block: tile size (rows per GEMM block), a positive int; default about N / 8, between 256 and 1024 (on a
            GPU between 1024 and 4096).
        device: where the GEMMs run (default: X's device), also for ``.npy`` output, which receives the
            condensed RDM one block row at a time.
        progress: tqdm bar over tiles.
    Returns:
        float32 tensor (float64 when X is float64), or the path of the written ``.npy``. Pairs with a
        zero-variance row are NaN (a ZeroVarianceWarning counts the rows). NaN or inf in X is an error.
    """
    X = as_features(X)
    device = torch.device(device) if device is not None else X.device
    dtype = compute_dtype(X)
    n = X.shape[0]
    block = optional_positive_int(block, "block") or default_block(n, device)
    stats = row_stats(X)
    to_file = not (isinstance(out, str) and out in ("condensed", "square"))
    if to_file and not str(out).endswith(".npy"):
        raise ValueError(f"out must be 'condensed', 'square' or a path ending in .npy, got {out!r}")
    if to_file:
        return _rdm_to_file(X, Path(out), stats, dtype, block, device, progress)
    shape = (n, n) if out == "square" else (condensed_length(n),)
    result = torch.empty(shape, dtype=dtype, device=device)
    rdm_tiles.fill_rdm(X, result, stats, dtype, block, device, progress)
    return result


def _rdm_to_file(X: Tensor, path: Path, stats: RowStats, dtype, block: int, device: torch.device,
                 progress: bool) -> Path:
    from numpy.lib.format import open_memmap

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.npy")
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    try:
        mm = open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(condensed_length(X.shape[0]),))
        rdm_tiles.fill_rdm(X, torch.from_numpy(mm), stats, dtype, block, device, progress)
        mm.flush()
        del mm
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
