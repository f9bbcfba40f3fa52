"""Benchmark of the trimming driver in one process against two gloo processes (torch.distributed, CPU).

    python benchmarks/trim.py [--reps 3] [--epochs 2]

The digits model (pozfast demo's VGG-style CNN) on scikit-learn's bundled digits: one round of
``prune.trim`` (APoZ, surgery, evaluation, ``--epochs`` epochs of fine-tuning, evaluation) in one process
with every core, then in two processes with one core each, every rank on its DistributedSampler shard
(batch 32 per rank against 64 in one process, so that each step sees the same examples). Reports wall
time (median of ``--reps``, each a fresh run that includes start-up of the process group but not of
Python) and training images per second. With a GPU per process this is what ``torchrun`` gives; on a
CPU the two layouts share the same cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, print_table  # noqa: E402

from pozfast import digits, prune  # noqa: E402

LAYERS = ["features.1.3", "fc1"]


def one_round(epochs: int, distributed: bool) -> float:
    """Seconds for one trimming round of a freshly seeded digits model."""
    train_set, val_set = digits.load_digits_split()
    if distributed:
        train = DataLoader(train_set, batch_size=32, sampler=DistributedSampler(train_set, shuffle=False))
        val = DataLoader(val_set, batch_size=128, sampler=DistributedSampler(val_set, shuffle=False))
    else:
        train, val = DataLoader(train_set, batch_size=64), DataLoader(val_set, batch_size=256)
    torch.manual_seed(0)
    model = digits.DigitsCNN()
    start = time.perf_counter()
    prune.trim(model, train, val, layers=LAYERS, rule=prune.Rule("ratio", 0.25), rounds=1, fine_tune_epochs=epochs,
               progress=False)
    return time.perf_counter() - start


def _rank(rank: int, init: str, epochs: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        seconds = one_round(epochs, True)
        if rank == 0:
            Path(out).write_text(str(seconds))
    finally:
        torch.distributed.destroy_process_group()


def two_processes(epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(f"{tmp}/init", epochs, f"{tmp}/seconds"), nprocs=2)
        return float(Path(f"{tmp}/seconds").read_text())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    images = args.epochs * len(digits.load_digits_split()[0])
    one_round(1, False)  # warm-up: imports, first-call costs
    single, double = [], []
    for _ in range(args.reps):  # alternate, so that drift in the machine's load hits both alike
        single.append(one_round(args.epochs, False))
        double.append(two_processes(args.epochs))
    s, d = statistics.median(single), statistics.median(double)
    print(machine_description())
    print(f"one trimming round of the digits CNN ({args.epochs} fine-tuning epochs, {images} training images), "
          f"median of {args.reps}")
    return print_table(["layout", "seconds", "training images/s", "time / one process"],
                       [[f"1 process, {torch.get_num_threads()} threads", f"{s:.2f}", f"{images / s:.0f}", "1.00"],
                        ["2 gloo processes, 1 thread each", f"{d:.2f}", f"{images / d:.0f}", f"{d / s:.2f}"]])


if __name__ == "__main__":
    main()
