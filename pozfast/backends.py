"""Which kernel implementations can run here, and which one an op uses.

Backends: ``cpu-native`` (C++/OpenMP in ``pozfast._C``), ``cuda-native`` (CUDA in ``pozfast._C``),
``triton`` and ``torch`` (plain PyTorch, always available, the reference). The default rule: on CPU
tensors ``cpu-native``, on CUDA tensors ``cuda-native``, then ``triton``, whichever is available first
(the CUDA kernels are the measured default; Triton is the portable fallback), else plain torch.
Availability on CUDA tensors is decided per device: ``cuda-native`` needs machine code or PTX compiled for
the device's architecture, Triton a device of compute capability 8.0 or newer. Triton
runs on CPU tensors only when forced under ``TRITON_INTERPRET=1`` (set before the kernels are imported),
which is how its tests run without a GPU. The environment
variable ``POZFAST_BACKEND`` or the context manager :func:`use_backend` forces one; forcing a backend
that cannot run the call raises an error that says why, instead of silently falling back. The ranking
inside Spearman and Kendall comparisons runs on host arrays, also for GPU data: a forced GPU backend
(``cuda-native``, ``triton``) leaves it to the default rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

from pozfast._native import cpu_error, load_error, native

BACKEND_NAMES = ("cpu-native", "cuda-native", "triton", "torch")
_ENV = "POZFAST_BACKEND"
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("pozfast_backend", default=None)


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Availability of one backend; ``reason`` says why not, or what it was built with."""

    name: str
    available: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _cpu_native() -> BackendStatus:
    mod = native()
    if mod is None:
        return BackendStatus("cpu-native", False, f"pozfast._C not loaded: {load_error()}")
    if cpu_error() is not None:
        return BackendStatus("cpu-native", False, cpu_error())
    # Both can change: the kernels follow torch.get_num_threads(), and _C.set_cpu_isa switches kernels.
    n = torch.get_num_threads()
    threads = f"OpenMP, {n} thread{'s' * (n != 1)}" if mod.with_openmp else "built without OpenMP, 1 thread"
    built = ", ".join(name for name, _ in mod.cpu_isas())
    return BackendStatus("cpu-native", True, f"{threads}, {mod.cpu_isa()} kernels; built: {built}")


def compiled_target(archs: str, capability: tuple[int, int]) -> str | None:
    """Which compiled CUDA target of ``archs`` (CMake's list, e.g. ``"75-real,80-real,90"``) runs on a device of
    compute ``capability``: machine code of the same major version and a minor no higher (sm_80 code runs on
    8.6), else PTX of a version no higher, which the driver compiles at load; None when nothing does."""
    entries = [a.split("-") for a in archs.split(",") if a]
    major, minor = capability
    sass = [int(a[0]) for a in entries if a[1:] != ["virtual"]]
    fits = [a for a in sass if a // 10 == major and a % 10 <= minor]
    if fits:
        return f"sm_{max(fits)}"
    ptx = [int(a[0]) for a in entries if a[1:] != ["real"]]
    below = [a for a in ptx if a <= 10 * major + minor]
    return f"compute_{max(below)} PTX (compiled by the driver)" if below else None


def _cuda_native(index: int | None) -> BackendStatus:
    mod = native()
    if mod is None:
        return BackendStatus("cuda-native", False, f"pozfast._C not loaded: {load_error()}")
    if not mod.with_cuda:
        return BackendStatus("cuda-native", False, "CUDA sources not compiled (nvcc was not found at build time)")
    archs = ", ".join(f"sm_{a.split('-')[0]}" for a in mod.cuda_archs.split(",") if a)
    built = f"compiled for {archs}"
    if index is None:
        return BackendStatus("cuda-native", False, f"{built}; no CUDA device")
    name = torch.cuda.get_device_name(index)
    capability = torch.cuda.get_device_capability(index)
    target = compiled_target(mod.cuda_archs, capability)
    if target is None:
        return BackendStatus("cuda-native", False, f"{built}; nothing runs on {name} (sm_{capability[0]}"
                                                   f"{capability[1]}): rebuild with CMAKE_CUDA_ARCHITECTURES set")
    err = mod.cuda_kernel_image(index)
    if err:
        return BackendStatus("cuda-native", False, f"{built}; the kernels do not load on {name}: "
                                                   f"{mod.cuda_error_string(err)}")
    return BackendStatus("cuda-native", True, f"{built}; {name} runs {target}")


def _triton(index: int | None) -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus("triton", False, "triton is not installed (pip install 'pozfast[triton]')")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendStatus("triton", True, "TRITON_INTERPRET=1: kernels run interpreted, on CPU tensors too")
    if index is None:
        return BackendStatus("triton", False, "no CUDA device (set TRITON_INTERPRET=1 to interpret on CPU tensors)")
    name, capability = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
    if capability < TRITON_MIN_CAPABILITY:
        return BackendStatus("triton", False, f"{name} is sm_{capability[0]}{capability[1]}; Triton supports "
                                              f"compute capability 8.0 and newer")
    return BackendStatus("triton", True, f"CUDA device {name}")


def _torch() -> BackendStatus:
    return BackendStatus("torch", True, f"plain PyTorch {torch.__version__}")


TRITON_MIN_CAPABILITY = (8, 0)


@functools.cache
def _statuses(index: int | None) -> dict[str, BackendStatus]:
    # Availability is fixed for the life of the process, per CUDA device; ops consult it on every call.
    return {s.name: s for s in (_cpu_native(), _cuda_native(index), _triton(index), _torch())}


def _cuda_index(device: torch.device | None) -> int | None:
    """The CUDA device index that ``device`` (default: the current CUDA device) names, or None without CUDA."""
    if device is not None and device.type != "cuda":
        return _cuda_index(None)
    if not torch.cuda.is_available():
        return None
    return device.index if device is not None and device.index is not None else torch.cuda.current_device()


def backends(device: str | torch.device | None = None) -> dict[str, BackendStatus]:
    """Each backend's availability and the reason, for CUDA ``device`` (default: the current one), e.g.
    ``backends()["cuda-native"].reason`` says which compiled kernels run on this GPU, or why none does."""
    index = _cuda_index(torch.device(device) if device is not None else None)
    return {**_statuses(index), "cpu-native": _cpu_native()}  # its thread count and kernels can change


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``POZFAST_BACKEND``, or None."""
    name = _forced.get() or os.environ.get(_ENV) or None
    if name is not None and name not in BACKEND_NAMES:
        raise ValueError(f"{_ENV} / use_backend must be one of {BACKEND_NAMES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` for every op called in this context (thread- and task-local)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


_NATIVE = {"cpu": "cpu-native", "cuda": "cuda-native"}
_DEFAULT_ORDER = {"cpu": ("cpu-native",), "cuda": ("cuda-native", "triton")}


def select(op: str, device: torch.device, supported: tuple[str, ...], host_step: bool = False) -> str:
    """The backend that runs ``op`` on ``device``: the forced one, else native when available, else torch.

    ``supported`` lists the backends that implement ``op``; ``torch`` always does. ``host_step``: ``op`` runs
    on host arrays as a step of calls that may run on a GPU (ranking for Spearman comparisons): a backend
    forced for the GPU (cuda-native, triton) is for the GPU steps, and this one follows the default rule.
    """
    forced = forced_backend()
    if host_step and forced in ("cuda-native", "triton"):
        forced = None
    statuses = _statuses(_cuda_index(device) if device.type == "cuda" else None)
    if forced is None:  # ops call this on every call: no temporaries
        for name in _DEFAULT_ORDER.get(device.type, ()):
            if name in supported and statuses[name].available:
                return name
        return "torch"
    if forced == "torch":
        return forced
    if forced not in supported:
        raise RuntimeError(f"backend {forced!r} is forced but {op} has no {forced} implementation")
    if forced in _NATIVE.values() and forced != _NATIVE.get(device.type):
        raise RuntimeError(f"backend {forced!r} is forced but cannot run {op} on {device.type} tensors")
    if forced == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"backend 'triton' is forced but runs {op} on {device.type} tensors only interpreted "
                           f"(TRITON_INTERPRET=1, set before pozfast is imported)")
    status = statuses[forced]
    if not status.available:
        raise RuntimeError(f"backend {forced!r} is forced but unavailable: {status.reason}")
    return forced
