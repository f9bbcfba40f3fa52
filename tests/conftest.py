import os

import pytest
import torch

# Without a GPU, Triton kernels run interpreted on CPU tensors; the variable must be set before pozfast
# looks at its backends or imports a kernel module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pozfast  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def pytest_report_header(config):
    if torch.cuda.is_available():  # the GPU tests' float32 tolerances assume IEEE float32 GEMMs
        matmul = torch.backends.cuda.matmul
        mode = getattr(matmul, "fp32_precision", None) or ("tf32" if matmul.allow_tf32 else "ieee")
        mode = "ieee (not set: torch's default)" if mode == "none" else mode
        override = os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1"
        return f"cuBLAS float32 matmul: {mode}{' (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1: TF32)' if override else ''}"
    return None


def available_backends(device: str, triton: bool = True) -> list:
    """pytest params for the backends that can run on ``device``, unavailable ones skipped with the reason."""
    status = pozfast.backends()
    native = {"cpu": "cpu-native", "cuda": "cuda-native"}[device]
    params = []
    for name in (native, "triton", "torch") if triton else (native, "torch"):
        reason = None if status[name].available else f"{name} unavailable: {status[name].reason}"
        if device == "cuda" and not torch.cuda.is_available():
            reason = "no CUDA device on this machine"
        if device == "cpu" and name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            reason = "Triton runs CPU tensors only interpreted (TRITON_INTERPRET=1), which a GPU machine does not set"
        params.append(pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=reason or "")))
    return params


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern of a float tensor, so that NaN payloads and -0.0 compare exactly."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit for bit, except that a NaN matches any NaN.

    NaN payloads are not compared: torch's own 16-bit relu rewrites them differently in its vector and
    scalar paths (a bfloat16 0x7fc0 can come out as 0xffff in a channels_last_3d tensor).
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a, e = bits(actual.cpu()), bits(expected.cpu())
    both_nan = torch.isnan(actual.cpu()) & torch.isnan(expected.cpu())
    bad = ((a != e) & ~both_nan).nonzero()
    assert bad.numel() == 0, (f"{bad.shape[0]} of {a.numel()} elements differ; first at {bad[:5].tolist()}: "
                              f"got {actual.cpu()[tuple(bad[0])].item()}, expected {expected.cpu()[tuple(bad[0])].item()}")


def special_values(shape, dtype, seed: int, device="cpu") -> torch.Tensor:
    """Random normal data with a share of exact zeros, -0.0, negatives, NaN (both signs) and +-inf."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    pick = torch.rand(shape, generator=gen)
    specials = [(0.10, 0.0), (0.15, -0.0), (0.18, float("nan")), (0.20, -float("nan")),
                (0.22, float("inf")), (0.24, -float("inf"))]
    low = 0.0
    for high, value in specials:
        x[(pick >= low) & (pick < high)] = value
        low = high
    return x.to(dtype).to(device)
