"""Benchmark of pozfast.relu_count against torch.relu, the usual APoZ code and the copy bandwidth.

    python benchmarks/relu_count.py [--reps 10] [--case TEXT ...] [--build LABEL=PATH ...]

For each case, three allocation modes: a new output per call, a reused output, in place. Bytes counted:
x read + y written (the int64 counts are negligible). Ratios are against the torch rows of the same run.
``--build`` adds pozfast rows that run another build of ``pozfast._C`` from the same sources, e.g. one
configured with ``POZFAST_NATIVE=ON``, through the same Python code, in the same run.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402
from tests.reference import relu_count_reference  # noqa: E402

import pozfast  # noqa: E402
from pozfast import _native  # noqa: E402

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


def load_build(label: str, path: str) -> ModuleType:
    """The extension module at ``path``, loaded beside the installed pozfast._C (its name must end in _C)."""
    name = f"pozfast_build_{label}._C"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def with_build(module: ModuleType, fn):
    """fn, calling the kernels of ``module`` instead of the installed build's."""
    def call(x, o):
        installed, _native._module = _native._module, module
        try:
            return fn(x, o)
        finally:
            _native._module = installed
    return call


def run_case(label, shape, dtype, fmt, channel_dim, reps, builds):
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
    for build, module in builds.items():
        for mode in ("new", "reused", "inplace"):
            impls[(f"pozfast.relu_count [{build}]", mode)] = with_build(module, impls[("pozfast.relu_count", mode)])
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
                     f"{vs_usual / t:.1f}x" if vs_usual and name.startswith("pozfast.relu_count") else ""])
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per row (median reported)")
    parser.add_argument("--case", action="append", default=[], metavar="TEXT",
                        help="run only the cases whose label contains TEXT (repeatable)")
    parser.add_argument("--build", action="append", default=[], metavar="LABEL=PATH",
                        help="also time another build of pozfast._C from these sources (repeatable)")
    args = parser.parse_args(argv)
    builds = {label: load_build(label, path) for label, path in (b.split("=", 1) for b in args.build)}
    print(f"machine: {machine_description()}")
    print(f"backends: {pozfast.backends()['cpu-native']}")
    for label, module in builds.items():
        print(f"build {label}: {module.cpu_isa()} kernels (built: {', '.join(n for n, _ in module.cpu_isas())})")
    rows = []
    for case in CASES:
        if not args.case or any(text in case[0] for text in args.case):
            rows += run_case(*case, reps=args.reps, builds=builds)
    return print_table(["case", "impl", "mode", "median ms", "GB/s", "of copy BW", "time / torch.relu",
                        "speed-up vs usual"], rows)


if __name__ == "__main__":
    main()
