"""Timing helpers shared by the benchmark scripts: warm-up, medians, machine description."""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from pozfast import tables

K = TypeVar("K")


def median_seconds(fns: dict[K, Callable[[], object]], *, reps: int = 10, warmup: int = 2) -> dict[K, float]:
    """Median wall time of each ``fn()`` over ``reps`` runs after ``warmup`` runs (CUDA-synchronised).

    The functions run round-robin, one call each per round, so that drift in the machine's load
    (it is shared) affects every column alike and the ratios stay meaningful. Each round calls them in
    a new (seeded) random order: a function's time can depend on the call before it (memory the
    allocator just returned, a buffer another call left in cache), and in scripts that rotate their
    inputs call by call, a fixed order would give each function the same input buffer every round.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: dict[K, list[float]] = {key: [] for key in fns}
    order = list(fns.items())
    shuffle = random.Random(0).shuffle
    for rep in range(warmup + reps):
        shuffle(order)
        for key, fn in order:
            start = time.perf_counter()
            fn()
            sync()
            if rep >= warmup:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads){gpu}, Python {platform.python_version()}")


def print_table(headers: list[str], rows: list[list[str]]) -> str:
    """Print and return a Markdown table."""
    text = tables.markdown(headers, rows, numbers_right=False)
    print(text, flush=True)
    return text
