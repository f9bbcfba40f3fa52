"""Run pozfast's benchmarks in one command and optionally record them in benchmarks/RESULTS.md.

    python benchmarks/run.py                 # every benchmark, tables printed
    python benchmarks/run.py rdm apoz        # some of them, by name
    python benchmarks/run.py --write         # also append the tables to RESULTS.md (machine, date)

Each benchmark is a script of this folder with a ``main(argv) -> table`` function; extra arguments
after ``--`` go to every selected script (e.g. ``-- --reps 5``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks._timing import machine_description  # noqa: E402

BENCHMARKS = {
    "relu_count": "fused ReLU + zero count vs torch.relu, the usual APoZ code and copy bandwidth",
    "near_zero": "per-channel |a| <= tau counts at 1 and 4 thresholds, masked, vs the usual torch code",
    "apoz": "APoZ of a VGG-style CNN vs a plain forward and forward hooks",
    "llm": "activation tracking of an OPT-125m-shaped decoder on padded batches, eager and compiled",
    "rdm": "RDMs, insertion curves and streaming similarity vs torch, rsatoolbox and scipy",
    "rsa": "an RSA study (RDM sets, noise ceiling, bootstrap) vs rsatoolbox; Spearman and tau-a vs scipy",
    "trim": "one trimming round of the digits CNN, 1 process vs 2 gloo processes",
    "gpu": "GPU kernels (CUDA, Triton) against the device's copy bandwidth and matmul rate; needs a GPU",
    "triton_compile": "every Triton kernel compiled for sm_80 and sm_90 without a GPU: registers and spills",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    sections = []
    import torch

    default = [n for n in BENCHMARKS if n != "gpu" or torch.cuda.is_available()]
    for name in args.names or default:
        print(f"\n=== {name}: {BENCHMARKS[name]} ===", flush=True)
        captured = io.StringIO()
        with contextlib.redirect_stdout(Tee(sys.stdout, captured)):
            importlib.import_module(f"benchmarks.{name}").main(extra)
        command = " ".join(["python", f"benchmarks/{name}.py", *extra])
        sections.append(f"## {name} (`{command}`), {datetime.date.today()}\n\n```\n{captured.getvalue().strip()}\n```\n")
    if args.write:
        header = f"\n# Run of {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine_description()}\n\n"
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(header + "\n".join(sections))
        print(f"\nappended {len(sections)} section(s) to {HERE / 'RESULTS.md'}")
    return 0


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    sys.exit(main())
