"""GPU paths: backend choice per device (with mocked devices, no GPU needed), Triton's ahead-of-time builds, and,
on a machine with a GPU, every geometry function on CUDA tensors and mixes of CUDA, CPU and numpy inputs."""

import importlib
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

import pozfast
from pozfast import geometry as R
from pozfast._native import native as built_module
from pozfast.ops.rdm_tiles import RefMode, pack_condensed, pair_moments

B = importlib.import_module("pozfast.backends")  # the module; pozfast.backends is also a function

ROOT = Path(__file__).resolve().parents[1]
ARCHS = "75-real,80-real,86-real,89-real,90"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("capability, expected", [
    ((7, 0), None),                   # V100: nvcc 13 has no Volta target
    ((7, 5), "sm_75"),                # T4
    ((8, 0), "sm_80"),                # A100
    ((8, 6), "sm_86"),                # A10
    ((8, 7), "sm_86"),                # Orin: sm_86 machine code runs on 8.7
    ((8, 9), "sm_89"),                # L4
    ((9, 0), "sm_90"),                # H100, H200
    ((10, 0), "compute_90 PTX (compiled by the driver)"),  # B200: the PTX
    ((12, 0), "compute_90 PTX (compiled by the driver)"),
])
def test_compiled_target_for_each_gpu(capability, expected):
    assert B.compiled_target(ARCHS, capability) == expected


def test_compiled_target_edge_cases():
    assert B.compiled_target("80,90", (8, 6)) == "sm_80"  # "80" is machine code and PTX
    assert B.compiled_target("80-real", (9, 0)) is None  # machine code never runs on a newer major version
    assert B.compiled_target("90-real", (8, 9)) is None
    assert B.compiled_target("80-virtual", (8, 6)) == "compute_80 PTX (compiled by the driver)"
    assert B.compiled_target("", (9, 0)) is None


class _FakeNative:
    """The built module, as if compiled with CUDA for ARCHS, its kernels loading or failing with ``image_error``."""

    with_cuda = True
    cuda_archs = ARCHS

    def __init__(self, image_error: int = 0):
        self.image_error = image_error

    def __getattr__(self, name):
        return getattr(built_module(), name)

    def cuda_kernel_image(self, index):
        return self.image_error

    def cuda_error_string(self, code):
        return f"error {code}"


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine with one CUDA device of the capability given to the returned function, and Triton compiled (not
    interpreted)."""
    def install(capability, image_error=0):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"GPU sm_{capability[0]}{capability[1]}")
        fake = _FakeNative(image_error)
        monkeypatch.setattr(B, "native", lambda: fake)
        B._statuses.cache_clear()
    yield install
    B._statuses.cache_clear()


@pytest.mark.parametrize("capability, image_error, chosen", [
    ((9, 0), 0, "cuda-native"),
    ((7, 5), 0, "cuda-native"),       # T4: native; Triton would not run there
    ((12, 0), 0, "cuda-native"),      # through the PTX
    ((9, 0), 209, "triton"),          # the kernels do not load (cudaErrorNoKernelImageForDevice): Triton
    ((7, 0), 0, "torch"),             # V100: no compiled kernel and no Triton: plain torch
])
def test_cuda_backend_follows_the_device(fake_gpu, capability, image_error, chosen):
    if chosen == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    fake_gpu(capability, image_error)
    device = torch.device("cuda", 0)
    assert B.select("relu_count", device, ("cpu-native", "cuda-native", "triton", "torch")) == chosen
    status = pozfast.backends(device)
    assert status["cuda-native"].available == (chosen == "cuda-native")
    reason = status["cuda-native"].reason
    if capability == (7, 0):
        assert "nothing runs on GPU sm_70" in reason and "CMAKE_CUDA_ARCHITECTURES" in reason
        assert "compute capability 8.0" in status["triton"].reason
    elif image_error:
        assert "do not load" in reason and "error 209" in reason
    else:
        assert "runs sm_" in reason or "runs compute_90 PTX" in reason


def test_forcing_native_on_a_gpu_it_cannot_run_says_why(fake_gpu):
    fake_gpu((7, 0))
    with pozfast.use_backend("cuda-native"), pytest.raises(RuntimeError, match="nothing runs on GPU sm_70"):
        B.select("relu_count", torch.device("cuda", 0), ("cuda-native", "torch"))


def test_triton_kernels_compile_for_sm80_and_sm90_without_a_gpu():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    res = subprocess.run([sys.executable, "benchmarks/triton_compile.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith("| ") and "sm_" in line]
    kernels = {r[0].strip() for r in rows}
    assert {"relu_count rows", "relu_count positions", "near_zero rows (tracker)", "near_zero positions (tracker)",
            "rdm condensed", "rdm similarity features", "rdm similarity given RDM", "insertion curve own RDM",
            "insertion curve given RDM"} <= kernels
    assert {r[2].strip() for r in rows} == {"sm_80", "sm_90"}
    assert all(0 < int(r[3]) <= 255 for r in rows)  # registers per thread
    assert any("float64" in r[1] and r[0].strip() == "rdm condensed" for r in rows)  # float64 dots build


# --- on a GPU -------------------------------------------------------------------------------------------

def _data(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d))


def _gpu_backends():
    return [pytest.param(b, marks=cuda) for b in ("cuda-native", "triton", "torch")]


def _use(backend):
    status = pozfast.backends("cuda")[backend]
    if not status.available:
        pytest.skip(f"{backend} unavailable: {status.reason}")
    return pozfast.use_backend(backend)


@pytest.mark.parametrize("backend", _gpu_backends())
def test_rdm_of_cuda_features_in_every_form(backend, tmp_path):
    x = torch.from_numpy(_data(150, 30, 1)).float()
    x[7] = 3.0  # a zero-variance row: NaN pairs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        want_condensed, want_square = R.rdm(x), R.rdm(x, out="square")
        with _use(backend):
            condensed = R.rdm(x.cuda(), block=64)
            square = R.rdm(x.cuda(), out="square", block=64)
            path = R.rdm(x.cuda(), out=tmp_path / "d.npy", block=64)
            on_gpu = R.rdm(x, device="cuda", block=64)  # CPU features, GEMMs on the GPU
    assert condensed.is_cuda and square.is_cuda and on_gpu.is_cuda
    for got, want in [(condensed, want_condensed), (square, want_square), (on_gpu, want_condensed),
                      (torch.from_numpy(np.load(path)).double(), want_condensed)]:  # the file: float32
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=3e-5, equal_nan=True)


@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("method", ["pearson", "r2", "spearman", "kendall_tau_a", "cosine"])
def test_compare_cuda_rdms_with_numpy_and_cpu_rdms(backend, method):
    a = pdist(_data(60, 8, 2), "correlation")
    b = pdist(_data(60, 5, 3), "correlation")
    b[::9] = np.nan
    want = R.compare_rdms(a, b, method)
    with _use(backend):
        for x, y in [(torch.from_numpy(a).cuda(), b), (a, torch.from_numpy(b).cuda()),
                     (torch.from_numpy(a).cuda(), torch.from_numpy(b)),
                     (torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())]:
            got = R.compare_rdms(x, y, method)
            assert got.n_pairs == want.n_pairs
            assert got.value == pytest.approx(want.value, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("backend", _gpu_backends())
def test_similarity_of_cuda_features_with_cpu_features_and_numpy_rdms(backend):
    x, y = _data(200, 40, 4), _data(200, 12, 5)
    human = pdist(_data(200, 6, 6), "correlation")
    human[::11] = np.nan
    want_y = R.rdm_similarity(x, y, path="tiled")
    want_h = R.rdm_similarity(x, human)
    with _use(backend):
        for xx, yy, want in [(torch.from_numpy(x).cuda(), y, want_y), (x, torch.from_numpy(y).cuda(), want_y),
                             (torch.from_numpy(x).cuda(), torch.from_numpy(y), want_y),
                             (torch.from_numpy(x).cuda(), human, want_h)]:
            got = R.rdm_similarity(xx, yy, path="tiled", block=64)
            assert got.n_pairs == want.n_pairs and got.value == pytest.approx(want.value, abs=1e-6)
        got = R.rdm_similarity(torch.from_numpy(x).cuda(), y, path="features")
        assert got.value == pytest.approx(want_y.value, abs=1e-9)


@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("method", ["r2", "spearman"])
def test_insertion_curve_of_cuda_features_against_a_numpy_reference(backend, method):
    x = np.maximum(_data(120, 25, 7), 0)
    poz = (x == 0).mean(0) + np.linspace(0, 1e-3, 25)
    reference = pdist(_data(120, 4, 8), "correlation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ZeroVarianceWarning)
        for ref in (None, reference):
            want = R.insertion_curve(x, poz, steps=5, reference=ref, method=method)
            with _use(backend):
                got = R.insertion_curve(torch.from_numpy(x).cuda(), torch.from_numpy(poz).cuda(), steps=5,
                                        reference=ref, method=method)
            assert got.n_pairs == want.n_pairs
            np.testing.assert_allclose(got.values, want.values, rtol=0, atol=1e-5)


@cuda
def test_cuda_tile_epilogues_never_wait_for_the_device():
    if not pozfast.backends("cuda")["cuda-native"].available:
        pytest.skip(pozfast.backends("cuda")["cuda-native"].reason)
    n, rows, cols = 300, 64, 96
    tile = torch.randn(rows, cols, device="cuda")
    bad = torch.zeros(n, dtype=torch.uint8, device="cuda")
    out = torch.empty(n * (n - 1) // 2, device="cuda")
    s, q = torch.zeros(n, dtype=torch.float64, device="cuda"), torch.ones(n, dtype=torch.float64, device="cuda")
    moments = torch.zeros(6, dtype=torch.float64, device="cuda")
    want = torch.zeros(6, dtype=torch.float64, device="cuda")
    torch.cuda.synchronize()
    with pozfast.use_backend("cuda-native"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                pack_condensed(tile, 10, 100, n, bad, out)
                pair_moments(tile, 10, 100, n, s[10:74], q[10:74], s[100:196], q[100:196], 1.0, 0.0, tile.flip(0),
                             RefMode.GRAM, moments)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    with pozfast.use_backend("torch"):
        for _ in range(3):
            pair_moments(tile, 10, 100, n, s[10:74], q[10:74], s[100:196], q[100:196], 1.0, 0.0,
                         tile.flip(0).contiguous(), RefMode.GRAM, want)
    torch.testing.assert_close(moments, want, rtol=1e-9, atol=1e-9)


@cuda
def test_operands_on_two_devices_are_refused_not_read():
    tile = torch.randn(8, 8, device="cuda")
    with pytest.raises(RuntimeError, match="different devices"):
        pack_condensed(tile, 0, 0, 8, torch.zeros(8, dtype=torch.uint8), torch.empty(28, device="cuda"))


@cuda
def test_backends_name_the_device_and_its_kernels():
    status = pozfast.backends("cuda")
    name = torch.cuda.get_device_name()
    if status["cuda-native"].available:
        assert name in status["cuda-native"].reason and " runs " in status["cuda-native"].reason
