"""Benchmark of pozfast.apoz against a plain forward and the usual forward-hook approach.

    python benchmarks/apoz.py [--batches 20] [--reps 5]

A VGG-style CNN (8 conv layers with BN and in-place ReLU, two FC ReLU layers) on 64x3x32x32 batches,
eval mode, no_grad. The convolutions dominate and the machine's speed drifts by more than the counting
costs, so the three forwards (plain, tracked by pozfast, with counting hooks) alternate batch by batch
and each pass sums its batches; a last row times whole ``pozfast.apoz`` calls (set-up and report
included) against whole plain passes.

Host cost (``--host-reps``): what tracking adds to the Python side of a forward, the part a GPU forward
must hide behind its kernels. A Hugging Face ResNet-50 (bottleneck blocks 3-4-6-3, its module structure
and 49 ReLU calls) at 1/16 of the width, on one 32x32 image, so that the arithmetic is negligible: plain,
tracked inside one ``with``, and with a ``with`` per forward; the forwards alternate, and the 10th
percentile of each is shown (the fastest runs: host work is fixed, the machine's interruptions are not).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402

import pozfast  # noqa: E402

CFG = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"]


def vgg8() -> nn.Module:
    layers, cin = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 2 * 2, 512), nn.ReLU(inplace=True),
                         nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, 10))


def counting_hooks(model: nn.Module, counts: dict) -> list:
    """The usual approach: a forward hook on every nn.ReLU computing (out == 0).sum over non-channel dims."""
    def make(name):
        def hook(mod, args, out):
            z = (out == 0).sum([d for d in range(out.dim()) if d != 1])
            counts[name] = counts[name] + z if name in counts else z
        return hook

    return [m.register_forward_hook(make(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


def interleaved_passes(model: nn.Module, batches, reps: int) -> dict[str, float]:
    """Median over reps of the summed per-batch forward times of each method."""
    tracker, counts = pozfast.track_apoz(model), {}
    totals = {"plain no_grad forward": [], "forward under pozfast tracking": [], "forward hooks (out == 0).sum": []}
    for rep in range(reps + 1):  # the first pass warms up
        sums = dict.fromkeys(totals, 0.0)
        for x in batches:
            with torch.no_grad():
                start = time.perf_counter()
                model(x)
                sums["plain no_grad forward"] += time.perf_counter() - start
                with tracker:
                    start = time.perf_counter()
                    model(x)
                    sums["forward under pozfast tracking"] += time.perf_counter() - start
                handles = counting_hooks(model, counts)
                start = time.perf_counter()
                model(x)
                sums["forward hooks (out == 0).sum"] += time.perf_counter() - start
                for h in handles:
                    h.remove()
        if rep:
            for k, v in sums.items():
                totals[k].append(v)
    return {k: statistics.median(v) for k, v in totals.items()}


def host_cost(reps: int) -> str:
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    model = ResNetModel(ResNetConfig(embedding_size=4, hidden_sizes=[16, 32, 64, 128], depths=[3, 4, 6, 3],
                                     layer_type="bottleneck")).eval()
    x = torch.randn(1, 3, 32, 32)
    tracker = pozfast.track_apoz(model)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def with_each():
        with tracker:
            model(x)

    times: dict[str, list[float]] = {"plain forward": [], "tracked, one with around the loop": [],
                                     "tracked, a with per forward": []}
    calls = {"n": 0}
    counter = nn.modules.module.register_module_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    with torch.no_grad():
        model(x)
        counter.remove()
        for rep in range(reps + 5):  # 5 to warm up
            sample = [timed(lambda: model(x)), 0.0, timed(with_each)]
            with tracker:
                sample[1] = timed(lambda: model(x))
            if rep >= 5:
                for key, t in zip(times, sample):
                    times[key].append(t)
    low = {k: sorted(v)[len(v) // 10] for k, v in times.items()}
    base = low["plain forward"]
    rows = [[k, f"{t * 1e3:.2f}", f"{(t - base) * 1e3:+.2f}", f"{t / base:.2f}"] for k, t in low.items()]
    print(f"Host cost: HF ResNet-50 structure ({calls['n']} module calls, {len(tracker.keys())} ReLU sites) at 1/16 "
          f"width, one 1x3x32x32 image, 10th percentile of {reps} interleaved forwards")
    return print_table(["forward", "ms", "extra ms", "time / plain"], rows)


def plain(model: nn.Module, batches) -> None:
    with torch.no_grad():
        for x in batches:
            model(x)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--host-reps", type=int, default=200, help="forwards of the host-cost part (0: skip it)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = vgg8().eval()
    batches = [torch.randn(64, 3, 32, 32) for _ in range(args.batches)]
    # Both counting methods give the same counts; checked before timing.
    counts: dict = {}
    handles = counting_hooks(model, counts)
    plain(model, batches[:2])
    for h in handles:
        h.remove()
    ours = pozfast.apoz(model, batches[:2], progress=False)
    assert all(torch.equal(e.zeros, z) for e, z in zip(ours, counts.values())) and len(ours) == len(counts)
    print(f"machine: {machine_description()}")
    times = interleaved_passes(model, batches, args.reps)
    whole = median_seconds({"plain": lambda: plain(model, batches),
                            "apoz": lambda: pozfast.apoz(model, batches, progress=False)}, reps=args.reps, warmup=0)
    base = times["plain no_grad forward"]
    hook_extra = times["forward hooks (out == 0).sum"] - base
    rows = []
    for name, t in times.items():
        extra = t - base
        rows.append([name, f"{t * 1e3:.0f}", f"{t / base:.3f}", f"{extra * 1e3:+.0f}",
                     f"{extra / hook_extra:.2f}" if name != "plain no_grad forward" else ""])
    extra = whole["apoz"] - whole["plain"]
    rows.append(["whole pozfast.apoz call vs whole plain pass", f"{whole['apoz'] * 1e3:.0f}",
                 f"{whole['apoz'] / whole['plain']:.3f}", f"{extra * 1e3:+.0f}", ""])
    print(f"VGG-style CNN, {args.batches} batches of 64x3x32x32, median of {args.reps} passes")
    text = print_table(["method", "ms / pass", "time / plain", "extra ms", "extra / hook extra"], rows)
    return text + ("\n" + host_cost(args.host_reps) if args.host_reps else "")


if __name__ == "__main__":
    main()
