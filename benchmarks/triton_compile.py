"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90, without a GPU: registers and spills.

    python benchmarks/triton_compile.py [--archs 80 90]

Each kernel is compiled in the configurations a GPU would run (the autotune configs of relu_count and of the
tracker's near_zero kernel, the RDM kernels' production tile sizes, float64 dots included) with
``triton.compile`` and an explicit ``GPUTarget``, down to a cubin, whose resource table (Triton's own
cuobjdump) gives registers per thread and local memory per thread (spills and stack).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import print_table  # noqa: E402

_PTR = {"float32": "*fp32", "float64": "*fp64", "bfloat16": "*bf16", "float16": "*fp16"}


@dataclass(frozen=True)
class Build:
    kernel: str
    config: str
    arch: int
    registers: int
    local_bytes: int
    shared: int
    cubin_bytes: int


def _relu_count_specs(dtype: str):
    from pozfast.triton_kernels import relu_count as rc

    ptrs = {"x_ptr": _PTR[dtype], "y_ptr": _PTR[dtype], "counts_ptr": "*i64"}
    upcast = dtype in ("float16", "bfloat16")
    for cfg in rc._ROWS_CONFIGS:
        sig = {**ptrs, "inner": "i32", "channels": "i32", "size_key": "i32", "BLOCK": "constexpr", "UPCAST": "constexpr",
               "CLEAR": "constexpr"}
        yield ("relu_count rows", rc._rows_kernel, sig, {**cfg.kwargs, "UPCAST": upcast, "CLEAR": True}, cfg.num_warps,
               cfg.num_stages)
    for cfg in rc._POSITIONS_CONFIGS:
        sig = {**ptrs, "outer": "i32", "positions": "i32", "inner": "i32", "size_key": "i32",
               "BLOCK_R": "constexpr", "BLOCK_P": "constexpr", "UPCAST": "constexpr", "CLEAR": "constexpr"}
        yield ("relu_count positions", rc._positions_kernel, sig, {**cfg.kwargs, "UPCAST": upcast, "CLEAR": True},
               cfg.num_warps, cfg.num_stages)


def _near_zero_specs(dtype: str):
    """The tracker's kernel: ReLU fused with the counts of one threshold, without a mask."""
    from pozfast.triton_kernels import near_zero as nz

    key_bits = {"float64": 64, "float16": 16, "bfloat16": 16}.get(dtype, 32)
    ptrs = {"x_ptr": _PTR[dtype], "y_ptr": _PTR[dtype], "counts_ptr": "*i64",
            "keys_ptr": "*i64" if key_bits == 64 else "*i32", "mask_ptr": "*u8"}
    flags = {"T": 1, "T_PAD": 1, "KEY_BITS": key_bits, "HAS_MASK": False, "RELU": True,
             "UPCAST": key_bits == 16, "CLEAR": True}
    both = {"size_bucket": "i32", **{k: "constexpr" for k in flags}}
    for cfg in nz._ROWS_CONFIGS:
        sig = {**ptrs, "rows": "i32", "inner": "i32", "channels": "i32", "repeat": "i32", **both, "BLOCK": "constexpr"}
        yield "near_zero rows (tracker)", nz._rows_kernel, sig, {**flags, **cfg.kwargs}, cfg.num_warps, cfg.num_stages
    for cfg in nz._POSITIONS_CONFIGS:
        sig = {**ptrs, "outer": "i32", "positions": "i32", "inner": "i32", "channels": "i32", "repeat": "i32", **both,
               "BLOCK_R": "constexpr", "BLOCK_P": "constexpr"}
        rows = nz._rows_per_step({"T_PAD": 1, **cfg.kwargs})
        yield ("near_zero positions (tracker)", nz._positions_kernel, sig, {**flags, **cfg.kwargs, "BLOCK_R": rows},
               cfg.num_warps, cfg.num_stages)


def _rdm_specs(dtype: str):
    import torch
    from pozfast.triton_kernels import rdm_tiles as rt

    def meta(kernel):
        m = dict(rt.production_meta(getattr(torch, dtype), kernel))
        return m, m.pop("num_warps"), m.pop("num_stages")

    blocks = {k: "constexpr" for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "ACC")}
    x = _PTR[dtype]
    f64 = "*fp64"
    sig = {"x_ptr": x, "stride": "i32", "mean_ptr": x, "inv_ptr": x, "bad_ptr": "*u8", "out_ptr": x, "tiles_ptr": "*i32",
           "n": "i32", "d": "i32", "row_lo": "i32", "row_hi": "i32", "base": "i64", **blocks}
    yield "rdm condensed", rt._condensed_kernel, sig, *meta("condensed")
    for features in (True, False):
        sig = {"x_ptr": x, "x_stride": "i32", "x_mean": x, "x_inv": x, "y_ptr": x, "y_stride": "i32", "y_mean": x,
               "y_inv": x, "ref_ptr": x, "bad_ptr": "*u8", "out_ptr": f64, "tiles_ptr": "*i32", "n": "i32",
               "dx": "i32", "dy": "i32", "REF_IS_FEATURES": "constexpr", **blocks}
        consts, warps, stages = meta("moments")
        name = "rdm similarity " + ("features" if features else "given RDM")
        yield name, rt._moments_kernel, sig, {**consts, "REF_IS_FEATURES": features}, warps, stages
    for condensed in (False, True):
        sig = {"x_ptr": x, "stride": "i32", "mean_ptr": x, "bounds_ptr": "*i32", "s_ptr": f64, "q_ptr": f64,
               "ref_ptr": f64 if condensed else x, "ref_mean": x, "ref_inv": x, "bad_ptr": "*u8", "out_ptr": f64,
               "tiles_ptr": "*i32", "n": "i32", "d": "i32", "steps": "i32", "eps": "fp32",
               "REF_IS_CONDENSED": "constexpr", **blocks}
        consts, warps, stages = meta("curve")
        name = "insertion curve " + ("given RDM" if condensed else "own RDM")
        yield name, rt._curve_kernel, sig, {**consts, "REF_IS_CONDENSED": condensed}, warps, stages


def specs(every_config: bool = False):
    """(kernel name, JIT function, signature, constexprs, num_warps, num_stages, dtype) of the production builds:
    relu_count's and the tracker's near_zero autotune configs in float32 (in every dtype with ``every_config``,
    else one per kernel), with the ReLU that makes -0.0 +0.0, and the first config also with the one that keeps
    it (whichever torch's CUDA relu does)."""
    for dtype in ("float32", "bfloat16", "float16", "float64"):
        seen = set()
        for spec in (*_relu_count_specs(dtype), *_near_zero_specs(dtype)):
            name, fn, sig, consts, warps, stages = spec
            if name not in seen:  # its first config also with the other sign rule of torch's CUDA relu
                yield f"{name}, -0.0 kept", fn, sig, {**consts, "CLEAR": False}, warps, stages, dtype
            if every_config or dtype == "float32" or name not in seen:
                seen.add(name)
                yield (*spec, dtype)
    for dtype in ("float32", "float64"):
        for spec in _rdm_specs(dtype):
            yield (*spec, dtype)


def _cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def compile_one(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int, arch: int):
    """The compiled kernel for sm_<arch>, its registers per thread and its local memory per thread in bytes
    (spills and stack: 0 when everything stays in registers), read from the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(_cuobjdump()), "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    return kernel, int(fields["REG"]), int(fields["LOCAL"]) + int(fields["STACK"])


def build_all(archs=(80, 90), every_config: bool = False) -> list[Build]:
    builds = []
    for name, fn, sig, consts, warps, stages, dtype in specs(every_config):
        shown = {k: (v.name if hasattr(v, "name") else v) for k, v in consts.items() if k.startswith("BLOCK")}
        config = f"{dtype} {' '.join(f'{k}={v}' for k, v in shown.items())} warps={warps} stages={stages}"
        for arch in archs:
            kernel, regs, local = compile_one(fn, sig, consts, warps, stages, arch)
            builds.append(Build(name, config, arch, regs, local, kernel.metadata.shared, len(kernel.asm["cubin"])))
    return builds


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--every-config", action="store_true", help="relu_count's autotune configs in every dtype")
    args = parser.parse_args(argv)
    rows = [[b.kernel, b.config, f"sm_{b.arch}", str(b.registers), str(b.local_bytes),
             f"{b.shared / 1024:.1f}", f"{b.cubin_bytes / 1024:.0f}"] for b in build_all(tuple(args.archs), args.every_config)]
    return print_table(["kernel", "configuration", "target", "registers", "local bytes (spills)", "shared KiB",
                        "cubin KiB"], rows)


if __name__ == "__main__":
    main()
