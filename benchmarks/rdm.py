"""Benchmark of pozfast's RDM functions against torch, rsatoolbox and scipy.

    python benchmarks/rdm.py [--reps 3] [--quick]

1. Pearson RDM, D = 4096 float32, N = 2000 and 8000: pozfast (condensed) vs torch centre-normalise-Z @ Z.T
   (square) vs rsatoolbox calc_rdm(method="correlation") and scipy pdist (N = 2000 only).
2. Insertion curve, N = 4000, D = 2048, 50 steps: pozfast vs the naive loop in torch (a partial RDM and a
   Pearson correlation per step).
3. Streaming RDM similarity at N = 20000, D = 1024 (an N x N float32 matrix would need 1.6 GB).
Peak memory: the rise of the process's resident high-water mark during the call (Linux clear_refs),
beyond what was resident before it; the input is allocated before.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, print_table  # noqa: E402

import pozfast  # noqa: E402

MiB = 1 << 20


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def measure(fn, reps: int) -> tuple[float, float, object]:
    """(median seconds, peak extra MiB, last result) after one warm-up call (BLAS allocates its buffers
    once); the result of each call is dropped before the next."""
    times, peaks, result = [], [], fn()
    for _ in range(reps):
        result = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident high-water mark
        base = _rss("VmRSS:")
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        peaks.append((_rss("VmHWM:") - base) / MiB)
    return float(np.median(times)), max(peaks), result


def torch_square_rdm(x: torch.Tensor) -> torch.Tensor:
    z = x - x.mean(1, keepdim=True)
    z = z / z.norm(dim=1, keepdim=True)
    return 1 - z @ z.T


def naive_curve(x: torch.Tensor, poz: torch.Tensor, steps: int) -> list[float]:
    n, d = x.shape
    iu = torch.triu_indices(n, n, offset=1)
    full = torch_square_rdm(x)[iu[0], iu[1]].double()
    order = torch.argsort(poz, stable=True)
    values = []
    for s in range(1, steps + 1):
        part = torch_square_rdm(x[:, order[:max(1, round(d * s / steps))]])[iu[0], iu[1]].double()
        keep = ~torch.isnan(part)  # pairs with a constant row are skipped, as pozfast does
        values.append(float(torch.corrcoef(torch.stack([part[keep], full[keep]]))[0, 1] ** 2))
    return values


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args(argv)
    scale = 8 if args.quick else 1
    print(f"machine: {machine_description()}")
    gen = torch.Generator().manual_seed(0)
    rows = []

    def row(task, impl, seconds, peak, base_seconds=None, note=""):
        rows.append([task, impl, f"{seconds:.3f}", f"{peak:.0f}",
                     f"{seconds / base_seconds:.2f}" if base_seconds else "", note])

    for n in (2000 // scale, 8000 // scale):
        x = torch.randn(n, 4096 // scale, generator=gen)
        io = (x.numel() * 4 + n * (n - 1) // 2 * 4) / MiB
        t_ours, p_ours, _ = measure(lambda: pozfast.rdm(x, dtype=torch.float32), args.reps)
        t_torch, p_torch, _ = measure(lambda: torch_square_rdm(x), args.reps)
        task = f"RDM N={n} D={x.shape[1]} f32"
        row(task, "torch square (baseline)", t_torch, p_torch, t_torch)
        row(task, "pozfast.rdm condensed", t_ours, p_ours, t_torch,
            f"peak incl. input = {(p_ours + x.numel() * 4 / MiB) / io:.2f}x (input + output)")
        if n == 2000 // scale:
            xn = x.double().numpy()
            try:
                from rsatoolbox.data import Dataset
                from rsatoolbox.rdm import calc_rdm

                t_rsa, p_rsa, _ = measure(lambda: calc_rdm(Dataset(xn), method="correlation"), 1)
                row(task, "rsatoolbox calc_rdm", t_rsa, p_rsa, t_torch, f"pozfast {t_rsa / t_ours:.0f}x faster")
            except ImportError:
                rows.append([task, "rsatoolbox calc_rdm", "not installed", "", "", ""])
            from scipy.spatial.distance import pdist

            t_sp, p_sp, _ = measure(lambda: pdist(xn, "correlation"), 1)
            row(task, "scipy pdist", t_sp, p_sp, t_torch, f"pozfast {t_sp / t_ours:.0f}x faster")
        del x

    n, d = 4000 // scale, 2048 // scale
    x = torch.relu(torch.randn(n, d, generator=gen) - 0.5)
    poz = (x == 0).float().mean(0)
    t_rdm, _, _ = measure(lambda: pozfast.rdm(x, dtype=torch.float32), args.reps)
    t_curve, p_curve, curve = measure(lambda: pozfast.insertion_curve(x, poz, steps=50), args.reps)
    t_naive, p_naive, naive = measure(lambda: naive_curve(x, poz, 50), 1)
    err = max(abs(a - b) for a, b in zip(curve.values, naive))
    task = f"insertion curve N={n} D={d} 50 steps"
    row(task, "naive torch loop (baseline)", t_naive, p_naive, t_naive)
    row(task, "pozfast.insertion_curve", t_curve, p_curve, t_naive,
        f"{t_naive / t_curve:.1f}x faster; {t_curve / t_rdm:.2f}x one pozfast.rdm; max |diff| {err:.1e}")
    del x

    n, d = 20000 // scale, 1024 // scale
    x, y = torch.randn(n, d, generator=gen), torch.randn(n, d // 2, generator=gen)
    task = f"RDM similarity N={n} D={d}+{d // 2}"
    for path in ("features", "tiled"):
        t, p, res = measure(lambda: pozfast.rdm_similarity(x, y, path=path), 1)
        row(task, f"pozfast.rdm_similarity ({path})", t, p, None,
            f"r={res.value:.5f}; an N x N f32 RDM is {n * n * 4 / MiB:.0f} MiB")

    print(f"medians of {args.reps} (1 for rsatoolbox, scipy, the naive loop and similarity)")
    return print_table(["task", "implementation", "seconds", "peak extra MiB", "time / baseline", "note"], rows)


if __name__ == "__main__":
    main()
