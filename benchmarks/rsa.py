"""Benchmark of an RSA study end to end, pozfast against rsatoolbox, and of rank comparisons against scipy.

    python benchmarks/rsa.py [--reps 3] [--quick] [--rsatoolbox-samples 2]

1. A study: 5 subjects x 2000 stimuli x 512 features, two observations per stimulus averaged per
   stimulus (rsatoolbox: ``calc_rdm(..., descriptor=...)``; pozfast: a torch mean per stimulus, then
   ``pozfast.rdm`` of the stack), the 5 x 5 Spearman comparison of the subjects' RDMs, the noise ceiling, and a
   1000-sample bootstrap over subjects of two model RDMs with the noise ceiling on every sample
   (``eval_bootstrap_rdm``). rsatoolbox's bootstrap would take hours: its time per sample is measured on
   ``--rsatoolbox-samples`` samples and multiplied by 1000 (marked "extrapolated").
2. Spearman's rho and Kendall's tau-a of two vectors of 12.5 M pairs (the RDMs of 5000 stimuli): pozfast's
   native kernels against scipy's ``spearmanr`` and tau-a from scipy's ``kendalltau`` and the tie counts
   (what ``pozfast.compare_rdms`` computed so far), and rsatoolbox's tau-a.
3. Under load: ``pozfast.rdm`` of 2000 x 512 float32 features and ``torch.mm`` of the same features by
   their transpose, idle and while another process runs ``pozfast.rdm`` in a loop (both at torch's default
   thread count): each one's slowdown, and pozfast's slowdown over torch's (target at most 1.3).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402

import pozfast  # noqa: E402
from pozfast.inference import eval_bootstrap, noise_ceiling  # noqa: E402
from pozfast.ops import ranks  # noqa: E402
from pozfast.rdm_sets import compare_rdm_sets  # noqa: E402


def study_data(n_subjects: int, n_stimuli: int, n_features: int, repeats: int, seed: int = 0):
    """(observations (S, n_stimuli * repeats, D) float32, stimulus label of each observation, two model
    feature sets): subjects share a geometry, each observation adds noise."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_stimuli, n_features)).astype(np.float32)
    labels = np.tile(np.arange(n_stimuli), repeats)
    obs = np.stack([shared[labels] + 2.0 * rng.standard_normal((len(labels), n_features)).astype(np.float32)
                    for _ in range(n_subjects)])
    models = [shared[:, : n_features // 2] + rng.standard_normal((n_stimuli, n_features // 2)).astype(np.float32),
              rng.standard_normal((n_stimuli, n_features // 2)).astype(np.float32)]
    return obs, labels, models


def average_per_stimulus(obs: np.ndarray, labels: np.ndarray, n_stimuli: int) -> torch.Tensor:
    """The mean observation of each stimulus, per subject: (S, n_stimuli, D) float32 (sums in float64)."""
    index = torch.from_numpy(labels)
    sums = torch.zeros((obs.shape[0], n_stimuli, obs.shape[2]), dtype=torch.float64)
    sums.index_add_(1, index, torch.from_numpy(obs).double())
    return (sums / torch.bincount(index, minlength=n_stimuli)[None, :, None]).float()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def study(args, rows) -> None:
    scale = 8 if args.quick else 1
    n_subjects, n_stimuli, n_features, repeats = 5, 2000 // scale, 512 // scale, 2
    n_boot = 1000 // scale
    obs, labels, model_features = study_data(n_subjects, n_stimuli, n_features, repeats)
    task = f"{n_subjects} subjects x {n_stimuli} stimuli x {n_features} features"

    def ours():
        steps = {}
        steps["RDMs (descriptor averaging)"], data = timed(
            lambda: pozfast.rdm(average_per_stimulus(obs, labels, n_stimuli)).numpy())
        models = pozfast.rdm(model_features)  # a list of numpy arrays: numpy out
        steps["5 x 5 Spearman"], _ = timed(lambda: compare_rdm_sets(data, data, "spearman"))
        steps["noise ceiling"], nc = timed(lambda: noise_ceiling(data, "spearman"))
        steps[f"bootstrap {n_boot} + ceiling"], boot = timed(
            lambda: eval_bootstrap(models, data, "spearman", n_samples=n_boot, seed=0))
        return steps, nc, boot

    steps, nc, boot = ours()
    try:
        theirs, their_nc = rsatoolbox_study(obs, labels, model_features, n_boot, args.rsatoolbox_samples)
    except ImportError:
        theirs, their_nc = None, None
    total_ours = sum(steps.values())
    for step, seconds in steps.items():
        base = theirs[step] if theirs else None
        rows.append([task, step, f"{seconds:.2f}", f"{base[0]:.2f}{' (extrapolated)' if base[1] else ''}"
                     if base else "n/a", f"{base[0] / seconds:.0f}x" if base else ""])
    if theirs:
        total_theirs = sum(v[0] for v in theirs.values())
        rows.append([task, "end to end", f"{total_ours:.2f}", f"{total_theirs:.0f} (extrapolated)",
                     f"{total_theirs / total_ours:.0f}x"])
        rows.append([task, "noise ceiling agreement", f"{nc.lower:.6f} / {nc.upper:.6f}",
                     f"{their_nc[0]:.6f} / {their_nc[1]:.6f}", ""])
    rows.append([task, "bootstrap mean +- SE (models)",
                 ", ".join(f"{m:.4f} +- {s:.4f}" for m, s in zip(boot.mean, boot.se)), "", ""])


def rsatoolbox_study(obs, labels, model_features, n_boot, n_measured):
    from rsatoolbox.data import Dataset
    from rsatoolbox.inference import boot_noise_ceiling, eval_bootstrap_rdm
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import calc_rdm, compare

    steps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [Dataset(o.astype(np.float64), obs_descriptors={"stimulus": labels}) for o in obs]
        seconds, rdms = timed(lambda: calc_rdm(datasets, method="correlation", descriptor="stimulus"))
        steps["RDMs (descriptor averaging)"] = (seconds, False)
        models = calc_rdm([Dataset(m.astype(np.float64)) for m in model_features], method="correlation")
        seconds, _ = timed(lambda: compare(rdms, rdms, "spearman"))
        steps["5 x 5 Spearman"] = (seconds, False)
        seconds, nc = timed(lambda: boot_noise_ceiling(rdms, method="spearman"))
        steps["noise ceiling"] = (seconds, False)
        fixed = [ModelFixed(f"m{k}", models[k]) for k in range(models.n_rdm)]
        np.random.seed(0)
        seconds, _ = timed(lambda: eval_bootstrap_rdm(fixed, rdms, method="spearman", N=n_measured))
        steps[f"bootstrap {n_boot} + ceiling"] = (seconds / n_measured * n_boot, n_measured < n_boot)
    return steps, nc


def rank_comparisons(args, rows) -> None:
    import scipy.stats

    n = 12_500_000 // (64 if args.quick else 1)
    rng = np.random.default_rng(1)
    x = rng.random(n)
    y = x + rng.random(n)
    task = f"rank comparison, {n / 1e6:.1f} M pairs, {torch.get_num_threads()} threads"

    def tau_a_scipy():  # tau-a from scipy's tau-b and the tie counts
        pairs = n * (n - 1) / 2
        ties = [float((c * (c - 1) / 2).sum()) for c in (np.unique(v, return_counts=True)[1] for v in (x, y))]
        return scipy.stats.kendalltau(x, y).statistic * np.sqrt((pairs - ties[0]) * (pairs - ties[1])) / pairs

    fns = {"spearman pozfast": lambda: ranks.spearman(x, y), "spearman scipy": lambda: scipy.stats.spearmanr(x, y),
           "tau-a pozfast": lambda: ranks.kendall_tau_a(x, y), "tau-a scipy": tau_a_scipy}
    try:
        from rsatoolbox.rdm.compare import _tau_a

        fns["tau-a rsatoolbox"] = lambda: _tau_a(x, y)
    except ImportError:
        pass
    times = median_seconds(fns, reps=args.reps, warmup=1)
    rho, tau = ranks.spearman(x, y), ranks.kendall_tau_a(x, y)
    d_rho = abs(rho - scipy.stats.spearmanr(x, y).statistic)
    d_tau = abs(tau - tau_a_scipy())
    rows.append([task, "Spearman", f"{times['spearman pozfast']:.2f}", f"{times['spearman scipy']:.2f} (scipy)",
                 f"{times['spearman scipy'] / times['spearman pozfast']:.1f}x; |diff| {d_rho:.0e}"])
    rows.append([task, "tau-a", f"{times['tau-a pozfast']:.2f}", f"{times['tau-a scipy']:.2f} (scipy kendalltau)",
                 f"{times['tau-a scipy'] / times['tau-a pozfast']:.1f}x; |diff| {d_tau:.0e}"])
    if "tau-a rsatoolbox" in times:
        rows.append([task, "tau-a", f"{times['tau-a pozfast']:.2f}", f"{times['tau-a rsatoolbox']:.2f} (rsatoolbox)",
                     f"{times['tau-a rsatoolbox'] / times['tau-a pozfast']:.1f}x"])


LOAD = """
import sys, torch, pozfast
x = torch.randn(2000, 512, generator=torch.Generator().manual_seed(3))
pozfast.rdm(x)
print("ready", flush=True)
while True:
    pozfast.rdm(x)
"""


def under_load(args, rows) -> None:
    n, d = (500, 128) if args.quick else (2000, 512)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(2))
    fns = {"pozfast.rdm": lambda: pozfast.rdm(x), "torch.mm": lambda: torch.mm(x, x.T)}
    reps = max(args.reps, 5) * 3
    idle = median_seconds(fns, reps=reps, warmup=2)
    other = subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE, text=True)
    try:
        if other.stdout.readline().strip() != "ready":
            raise RuntimeError("the load process did not start")
        loaded = median_seconds(fns, reps=reps, warmup=2)
    finally:
        other.kill()
        other.wait()
    task = f"{n} x {d} float32, {torch.get_num_threads()} threads, another process running pozfast.rdm"
    slow = {k: loaded[k] / idle[k] for k in fns}
    for k in fns:
        rows.append([task, f"{k} idle -> loaded", f"{idle[k] * 1e3:.1f} -> {loaded[k] * 1e3:.1f} ms",
                     "", f"{slow[k]:.2f}x slower"])
    rows.append([task, "pozfast's slowdown / torch.mm's", f"{slow['pozfast.rdm'] / slow['torch.mm']:.2f}",
                 "target <= 1.3", ""])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the rank comparisons (medians)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--rsatoolbox-samples", type=int, default=2,
                        help="bootstrap samples rsatoolbox runs to measure its time per sample")
    args = parser.parse_args(argv)
    print(f"machine: {machine_description()}")
    rows: list[list[str]] = []
    study(args, rows)
    rank_comparisons(args, rows)
    under_load(args, rows)
    print("study steps run once each; rank comparisons: medians of --reps after a warm-up, interleaved")
    return print_table(["task", "step", "pozfast s", "baseline s", "speed-up"], rows)


if __name__ == "__main__":
    main()
