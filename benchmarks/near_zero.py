"""Benchmark of pozfast.near_zero_counts (|a| <= tau per channel) against the usual torch code.

    python benchmarks/near_zero.py [--reps 10] [--quick]

Cases: an OPT-sized FFN activation (4096 tokens x 3072 channels, channel last) and a CNN activation
(64, 256, 28, 28) NCHW, float32; 1 and 4 thresholds, without and with a mask (20 % of the tokens, or of
the images, dropped as padding). Also timed on the same tensor: a plain read (``a.sum()``), the fused
``relu_near_zero_counts`` in place and ``relu_count`` in place. Inputs rotate over more memory than the
caches hold; medians after warm-up; ratios against rows of the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402
from tests.reference import near_zero_reference  # noqa: E402

import pozfast  # noqa: E402

CASES = [
    ("(4096,3072) f32 channel-last", (4096, 3072), 1),
    ("(64,256,28,28) f32 NCHW", (64, 256, 28, 28), 1),
]
QUICK_CASES = [("(512,768) f32 channel-last", (512, 768), 1), ("(8,64,14,14) f32 NCHW", (8, 64, 14, 14), 1)]
THRESHOLDS = {1: (0.0,), 4: (0.0, 0.01, 0.1, 0.5)}
ROTATE_BYTES = 256 << 20


def run_case(label: str, shape: tuple[int, ...], channel_dim: int, reps: int, rotate_bytes: int) -> list[list[str]]:
    gen = torch.Generator().manual_seed(0)
    one_bytes = 4 * torch.Size(shape).numel()
    count = max(2, -(-rotate_bytes // one_bytes))
    xs = [torch.randn(shape, generator=gen) for _ in range(count)]
    mask = torch.rand(shape[0], generator=gen) >= 0.2
    state = {"i": 0}

    def rotating(fn, calls):
        def call():
            for _ in range(calls):
                i = state["i"] = (state["i"] + 1) % len(xs)
                fn(xs[i])
        return call

    impls = {("a.sum() (one read)", "", ""): lambda a: a.sum()}
    for t, taus in THRESHOLDS.items():
        for masked in (False, True):
            m = mask if masked else None
            tag = "mask" if masked else ""
            impls[("torch reference", t, tag)] = lambda a, taus=taus, m=m: near_zero_reference(a, taus, channel_dim, m)
            impls[("pozfast.near_zero_counts", t, tag)] = \
                lambda a, taus=taus, m=m: pozfast.near_zero_counts(a, taus, channel_dim, mask=m)
    for t, taus in THRESHOLDS.items():
        impls[("relu_near_zero_counts inplace", t, "")] = \
            lambda a, taus=taus: pozfast.relu_near_zero_counts(a, taus, channel_dim, inplace=True)
    impls[("relu_count inplace", 1, "")] = lambda a: pozfast.relu_count(a, channel_dim, inplace=True)
    # A sample times one call per input for the fast rows: on a shared machine the scheduler's time slices
    # (4 ms here) would otherwise quantise single calls of a few milliseconds.
    calls = {key: 1 if key[0] == "torch reference" else len(xs) for key in impls}
    totals = median_seconds({key: rotating(fn, calls[key]) for key, fn in impls.items()}, reps=reps)
    times = {key: total / calls[key] for key, total in totals.items()}
    read_bytes = one_bytes
    base = times[("a.sum() (one read)", "", "")]
    rows = []
    for (name, t, tag), sec in times.items():
        ref = times.get(("torch reference", t, tag))
        one = times.get((name, 1, tag))
        rows.append([label, name, str(t), tag, f"{sec * 1e3:.2f}", f"{read_bytes / sec / 1e9:.1f}",
                     f"{sec / base:.2f}", f"{ref / sec:.1f}x" if ref and name.startswith("pozfast") else "",
                     f"{sec / one:.3f}" if one and t == 4 else ""])
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per row (median reported)")
    parser.add_argument("--quick", action="store_true", help="small tensors, for a smoke test")
    args = parser.parse_args(argv)
    print(f"machine: {machine_description()}")
    print(f"backends: {pozfast.backends()['cpu-native']}")
    rows = []
    for case in QUICK_CASES if args.quick else CASES:
        rows += run_case(*case, reps=args.reps, rotate_bytes=(4 << 20) if args.quick else ROTATE_BYTES)
    return print_table(["case", "impl", "T", "mask", "median ms", "GB/s read", "time / one read",
                        "speed-up vs torch", "time 4 / time 1"], rows)


if __name__ == "__main__":
    main()
