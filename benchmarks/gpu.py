"""GPU benchmark for a lent machine: the two ceilings, then relu_count and the RDM kernels against them.

    python benchmarks/gpu.py [--reps 20] [--sizes 16384 65536]

1. Device copy bandwidth (torch copy_) and matmul rate (torch.mm, float32 and bfloat16).
2. relu_count (CUDA, Triton, the usual torch code) on (64, 512, 32, 32) and (256, 4096) float32, a bfloat16
   channels_last case and an LLM FFN activation (16384 tokens x 16384 channels, bfloat16), as a fraction of copy
   bandwidth; targets: CUDA >= 85 % of copy bandwidth and >= 3x the usual code.
3. Condensed RDM and streaming similarity, N in --sizes, D = 4096 float32: Triton (fused), torch GEMM +
   CUDA epilogue, and plain torch (square) as a fraction of the matmul rate, counted on the upper-triangle
   work (N^2 D multiply-adds); target: condensed RDM >= 60 % of torch's matmul rate. Streaming similarity
   reports its peak device memory (no N x N matrix).
4. Tracking a torchvision ResNet-50 forward (batch 64, 224 x 224, eval, no_grad) against the plain forward;
   target: at most 5 % over it. The "host part" rows time a forward call from an idle GPU until it returns
   (its kernels queued, not run): tracking stays free while the host part stays under the GPU's time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402
from tests.reference import relu_count_reference  # noqa: E402

import pozfast  # noqa: E402


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    print(f"machine: {machine_description()}")
    print("backends:", *pozfast.backends().values(), sep="\n  ")
    dev = torch.device("cuda")
    rows = []
    big = torch.empty(1 << 28, dtype=torch.float32, device=dev).normal_()
    dst = torch.empty_like(big)
    copy_s = median_seconds({"copy": lambda: dst.copy_(big)}, reps=args.reps)["copy"]
    copy_bw = _gbps(2 * big.numel() * 4, copy_s)
    rows.append(["ceiling", "torch copy_ 1 GiB f32", f"{copy_s * 1e3:.3f}", f"{copy_bw:.0f} GB/s", "100%"])
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(8192, 8192, device=dev, dtype=dtype)
        t = median_seconds({"mm": lambda: a @ a}, reps=args.reps)["mm"]
        rates[dtype] = 2 * 8192 ** 3 / t / 1e12
        rows.append(["ceiling", f"torch.mm 8192^2 {dtype}", f"{t * 1e3:.3f}", f"{rates[dtype]:.1f} TFLOP/s", "100%"])

    for shape, dtype, fmt in [((64, 512, 32, 32), torch.float32, torch.contiguous_format),
                              ((256, 4096), torch.float32, torch.contiguous_format),
                              ((64, 512, 32, 32), torch.bfloat16, torch.channels_last),
                              ((16384, 16384), torch.bfloat16, torch.contiguous_format)]:
        x = torch.randn(shape, device=dev).to(dtype).contiguous(memory_format=fmt)
        out = torch.empty_like(x)
        nbytes = 2 * x.numel() * x.element_size()
        fns = {"usual torch code": lambda: relu_count_reference(x, 1)}
        for backend in ("cuda-native", "triton"):
            if pozfast.backends()[backend].available:
                def run(b=backend):
                    with pozfast.use_backend(b):
                        pozfast.relu_count(x, 1, out=out)
                fns[f"relu_count {backend}"] = run
        times = median_seconds(fns, reps=args.reps)
        for name, t in times.items():
            rows.append([f"relu_count {tuple(shape)} {dtype}", name, f"{t * 1e3:.3f}", f"{_gbps(nbytes, t):.0f} GB/s",
                         f"{100 * _gbps(nbytes, t) / copy_bw:.0f}%; {times['usual torch code'] / t:.1f}x usual"])

    for n in args.sizes:
        x = torch.randn(n, 4096, device=dev)
        y = torch.randn(n, 1024, device=dev)
        work = n * n * 4096  # multiply-adds of the upper triangle, counted twice as FLOPs
        fns = {}
        for backend in ("triton", "cuda-native"):
            if pozfast.backends()[backend].available:
                def run(b=backend):
                    with pozfast.use_backend(b):
                        pozfast.rdm(x)
                fns[f"rdm condensed ({backend})"] = run
        if n <= 32768:
            def square():
                z = x - x.mean(1, keepdim=True)
                z = z / z.norm(dim=1, keepdim=True)
                return 1 - z @ z.T
            fns["torch square RDM"] = square
        times = median_seconds(fns, reps=max(3, args.reps // 5), warmup=1)
        for name, t in times.items():
            rate = work / t / 1e12
            rows.append([f"RDM N={n} D=4096 f32", name, f"{t * 1e3:.1f}", f"{rate:.1f} TFLOP/s",
                         f"{100 * rate / rates[torch.float32]:.0f}% of f32 mm"])
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for backend in ("triton", "cuda-native"):
            if pozfast.backends()[backend].available:
                with pozfast.use_backend(backend):
                    t = median_seconds({"s": lambda: pozfast.rdm_similarity(x, y, path="tiled")}, reps=3, warmup=1)["s"]
                peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                rows.append([f"similarity N={n} D=4096+1024", f"tiled ({backend})", f"{t * 1e3:.1f}",
                             f"peak +{peak:.0f} MiB", f"N x N f32 would be {n * n * 4 / 2 ** 20:.0f} MiB"])
    rows += _tracking_overhead(dev, args.reps)
    return print_table(["task", "implementation", "median ms", "rate", "fraction / note"], rows)


def _tracking_overhead(dev: torch.device, reps: int) -> list[list[str]]:
    try:
        from torchvision.models import resnet50
    except ImportError as exc:  # torchvision is not a dependency
        return [["ResNet-50 tracking", f"skipped: {exc}", "", "", ""]]
    model = resnet50().to(dev).eval()
    x = torch.randn(64, 3, 224, 224, device=dev)

    tracker = pozfast.track_apoz(model)
    entered = pozfast.track_apoz(model)

    def tracked_each():  # a `with` per forward: tracking is entered and left every time
        with tracker:
            model(x)

    with torch.no_grad():
        times = median_seconds({"plain": lambda: model(x), "tracked, a with per forward": tracked_each},
                               reps=reps, warmup=3)
        with entered:  # one `with` around the loop, as pozfast.apoz and the README's loop run
            times["tracked, one with around the loop"] = median_seconds({"t": lambda: model(x)}, reps=reps,
                                                                        warmup=3)["t"]
        host = {"plain": _host_seconds(lambda: model(x), reps)}
        with entered:
            host["tracked, one with around the loop"] = _host_seconds(lambda: model(x), reps)
    rows = [["ResNet-50 forward, batch 64", name, f"{t * 1e3:.2f}", f"{64 / t:.0f} images/s",
             f"{100 * (t / times['plain'] - 1):+.1f}% over plain"] for name, t in times.items()]
    return rows + [["ResNet-50 forward, batch 64", f"{name}: host part", f"{t * 1e3:.2f}", "until the call returns",
                    f"{100 * t / times[name]:.0f}% of its forward"] for name, t in host.items()]


def _host_seconds(fn, reps: int) -> float:
    """Median time from an idle GPU until ``fn()`` returns: the host's part of a forward."""
    times = []
    for _ in range(reps + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times[3:])


if __name__ == "__main__":
    main()
