"""The native module's CPU build: portable code with kernels chosen by CPU features at run time, and
OpenMP threads that follow torch's thread count."""

import os
import platform
import subprocess
import sys

import pytest
import torch

import pozfast
from pozfast._native import native
from tests.conftest import DTYPES, assert_bitwise_equal, bits, special_values
from tests.reference import relu_count_reference

pytestmark = pytest.mark.skipif(native() is None, reason="pozfast._C is not built")

X86 = platform.machine().lower() in ("x86_64", "amd64")
RUNNABLE = [name for name, runs in native().cpu_isas() if runs] if native() is not None else []


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next(set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return None


@pytest.fixture
def threads():
    """Sets torch's thread count for the test and restores it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def restore_isa():
    before = native().cpu_isa()
    yield
    native().set_cpu_isa(before)


def test_default_build_runs_on_any_cpu():
    names = [name for name, _ in native().cpu_isas()]
    assert "native" not in names, "built with POZFAST_NATIVE=ON (-march=native): the module needs this CPU's ISA"
    assert names == (["avx512", "avx2", "default"] if X86 else ["default"])
    assert dict(native().cpu_isas())["default"]


@pytest.mark.skipif(not X86 or _cpu_flags() is None, reason="needs an x86-64 CPU and /proc/cpuinfo")
@pytest.mark.skipif(bool(os.environ.get("POZFAST_CPU_ISA")), reason="POZFAST_CPU_ISA picks the kernels")
def test_widest_kernels_this_cpu_runs_are_chosen():
    flags = _cpu_flags()
    avx2 = {"avx2", "fma"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert RUNNABLE == ["avx512"] * avx512 + ["avx2"] * avx2 + ["default"]
    assert native().cpu_isa() == RUNNABLE[0]
    assert f"{RUNNABLE[0]} kernels" in pozfast.backends()["cpu-native"].reason


# (shape, channel_dim, channels_last): long rows with a tail that no vector width divides; short rows in
# cache-sized tiles; blocks too large for a tile; slices that end inside rows and blocks.
ISA_CASES = [((3, 5, 20011), 1, False), ((40, 7, 33), 1, False), ((300, 1001), 1, False),
             ((6, 37, 30, 30), 1, True), ((5, 3000, 2, 3), 1, True)]


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ISA_CASES, ids=lambda c: "x".join(map(str, c[0])) + ("-cl" if c[2] else ""))
def test_every_isa_gives_the_baseline_bits(isa, dtype, case, restore_isa, threads):
    shape, cd, channels_last = case
    x = special_values(shape, dtype, seed=len(shape) * 1000 + shape[-1])  # NaN (both signs), +-0.0, +-inf
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    threads(2)  # slices that start and end inside rows and blocks
    results = {}
    with pozfast.use_backend("cpu-native"):
        for name in ("default", isa):
            native().set_cpu_isa(name)
            results[name] = pozfast.relu_count(x, cd), pozfast.relu_count(x.clone(), cd, inplace=True)
    (y0, z0), (yi0, zi0) = results["default"]
    (y1, z1), (yi1, zi1) = results[isa]
    assert torch.equal(bits(y1), bits(y0)) and torch.equal(bits(yi1), bits(y0)) and torch.equal(bits(yi0), bits(y0))
    assert torch.equal(z1, z0) and torch.equal(zi1, z0) and torch.equal(zi0, z0)
    y_ref, zeros_ref = relu_count_reference(x, cd)
    assert_bitwise_equal(y0, y_ref)
    assert torch.equal(z0, zeros_ref)


def test_unknown_or_unrunnable_isa_is_refused(restore_isa):
    with pytest.raises(ValueError, match="no CPU kernels for 'sse9'"):
        native().set_cpu_isa("sse9")
    for name, runs in native().cpu_isas():
        if not runs:
            with pytest.raises(ValueError, match=f"lacks the {name} instructions"):
                native().set_cpu_isa(name)
    assert native().cpu_isa() in RUNNABLE


def _in_subprocess(env_isa: str, code: str) -> str:
    env = {**os.environ, "POZFAST_CPU_ISA": env_isa}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_environment_variable_picks_the_kernels():
    out = _in_subprocess("default", "import pozfast, torch; from pozfast._native import native; "
                                    "print(native().cpu_isa()); print(pozfast.backends()['cpu-native']); "
                                    "print(pozfast.relu_count(torch.tensor([[-1.0, 0.0, 2.0]]), 1)[1].tolist())")
    isa, status, zeros = out.splitlines()
    assert isa == "default" and "default kernels" in status and zeros == "[1, 1, 0]"


def test_environment_variable_that_cannot_be_honoured_disables_cpu_native_only():
    out = _in_subprocess("sse9", "import pozfast, torch; s = pozfast.backends(); "
                                 "print(s['cpu-native']); print(s['cuda-native'].reason); "
                                 "print(pozfast.relu_count(torch.tensor([[-1.0, 0.0, 2.0]]), 1)[1].tolist())")
    status, cuda_reason, zeros = out.splitlines()
    assert status.startswith("cpu-native: unavailable (POZFAST_CPU_ISA=sse9: no CPU kernels for 'sse9'")
    assert "not loaded" not in cuda_reason  # the module itself still loads
    assert zeros == "[1, 1, 0]"  # plain torch runs instead


def test_threads_follow_torch(monkeypatch, threads):
    used = []
    kernel = native().relu_count_cpu
    monkeypatch.setattr(native(), "relu_count_cpu", lambda *args: used.append(kernel(*args)))
    x = torch.randn(8, 16, 64, 64)  # 16 grains of work: enough for several threads
    with pozfast.use_backend("cpu-native"):
        for n in (1, 2, 3):
            threads(n)
            pozfast.relu_count(x.clone(), 1, inplace=True)
    assert used == [1, 2, 3]
    assert f"OpenMP, {torch.get_num_threads()} threads" in pozfast.backends()["cpu-native"].reason


def test_small_inputs_do_not_wake_threads():
    x = torch.randn(4, 1000)
    zeros = torch.empty(1000, dtype=torch.int64)
    ran = native().relu_count_cpu(x.data_ptr(), x.data_ptr(), zeros.data_ptr(), 4, 1000, 1, 0, 8)
    assert ran == 1
    assert torch.equal(zeros, (x == 0).sum(0))
