"""Benchmark of pozfast.relu_count against torch.relu, the usual APoZ code and the copy bandwidth.

    python benchmarks/relu_count.py [--reps 10]

For each case, three allocation modes: a new output per call, a reused output, in place. Bytes counted:
x read + y written (the int64 counts are negligible). Ratios are against the torch rows of the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402
from tests.reference import relu_count_reference  # noqa: E402

import pozfast  # noqa: E402

CASES = [
    ("(64,512,32,32) f32 NCHW", (64, 512, 32, 32), torch.float32, torch.contiguous_format, 1),
    ("(256,4096) f32", (256, 4096), torch.float32, torch.contiguous_format, 1),
    ("(64,512,32,32) bf16 channels_last", (64, 512, 32, 32), torch.bfloat16, torch.channels_last, 1),
]
ROTATE_BYTES = 256 << 20  # rotate inputs so that every call streams from memory, not cache


def _inputs(shape, dtype, fmt) -> list[torch.Tensor]:
    one = torch.empty(shape, dtype=dtype).to(memory_format=fmt)
    count = max(1, -(-ROTATE_BYTES // (one.numel() * one.element_size())))
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen).to(dtype).to(memory_format=fmt) for _ in range(count)]


def run_case(label, shape, dtype, fmt, channel_dim, reps):
    xs = _inputs(shape, dtype, fmt)
    outs = [torch.zeros_like(x) for x in xs]  # touched now, so no page faults while timing
    dims = [d for d in range(len(shape)) if d != channel_dim]
    state = {"i": 0}

    def rotating(fn):
        def call():
            i = state["i"] = (state["i"] + 1) % len(xs)
            return fn(xs[i], outs[i])
        return call

    impls = {
        ("copy", "reused"): lambda x, o: o.copy_(x),
        ("torch.relu", "new"): lambda x, o: torch.relu(x),
        ("torch.relu", "reused"): lambda x, o: torch.clamp_min(x, 0, out=o),
        ("torch.relu", "inplace"): lambda x, o: torch.relu_(x),
        ("usual APoZ code", "new"): lambda x, o: relu_count_reference(x, channel_dim),
        ("usual APoZ code", "reused"): lambda x, o: (torch.clamp_min(x, 0, out=o) == 0).sum(dims),
        ("usual APoZ code", "inplace"): lambda x, o: (torch.relu_(x) == 0).sum(dims),
        ("pozfast.relu_count", "new"): lambda x, o: pozfast.relu_count(x, channel_dim),
        ("pozfast.relu_count", "reused"): lambda x, o: pozfast.relu_count(x, channel_dim, out=o),
        ("pozfast.relu_count", "inplace"): lambda x, o: pozfast.relu_count(x, channel_dim, inplace=True),
    }
    nbytes = 2 * xs[0].numel() * xs[0].element_size()
    times = median_seconds({key: rotating(fn) for key, fn in impls.items()}, reps=reps)
    copy_bw = nbytes / times[("copy", "reused")] / 1e9
    rows = []
    for (name, mode), t in times.items():
        bw = nbytes / t / 1e9
        vs_relu = times.get(("torch.relu", mode))
        vs_usual = times.get(("usual APoZ code", mode))
        rows.append([label, name, mode, f"{t * 1e3:.2f}", f"{bw:.1f}", f"{100 * bw / copy_bw:.0f}%",
                     f"{t / vs_relu:.2f}" if vs_relu and name != "copy" else "",
                     f"{vs_usual / t:.1f}x" if vs_usual and name == "pozfast.relu_count" else ""])
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per row (median reported)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_description()}")
    print(f"backends: {pozfast.backends()['cpu-native']}")
    rows = []
    for case in CASES:
        rows += run_case(*case, reps=args.reps)
    return print_table(["case", "impl", "mode", "median ms", "GB/s", "of copy BW", "time / torch.relu",
                        "speed-up vs usual"], rows)


if __name__ == "__main__":
    main()
