"""What pozfast needs to know about a user's model: the module under its wrappers, stable names, the
device, train/eval flags kept as found, and a fingerprint that ties saved state to one architecture."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pozfast.validate import device as checked_device

# Path parts that wrappers insert between a module and its children; names are those of the bare model.
_WRAPPER_PARTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
_DISTRIBUTED_WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under ``torch.compile``, DistributedDataParallel and FSDP wrappers.

    ``nn.DataParallel`` is refused: its replicas run copies of the modules on other threads, which
    pozfast cannot observe; DistributedDataParallel does the same job and is counted correctly.
    """
    check_module(model)
    while True:
        if isinstance(model, nn.DataParallel):
            raise TypeError("nn.DataParallel is not supported: its replicas run on other threads, where "
                            "activations cannot be counted; use DistributedDataParallel (one process per "
                            "GPU, launched with torchrun), or pass model.module")
        if _orig_mod(model) is not None:
            model = _orig_mod(model)
        elif type(model).__name__ in _DISTRIBUTED_WRAPPERS and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def check_module(model: object) -> nn.Module:
    """``model``, refused with a TypeError unless it is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def clean_name(name: str) -> str:
    """A qualified module name without the parts that wrappers insert (``_orig_mod``, FSDP's)."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_PARTS)


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Every module of the unwrapped model with its qualified name (``""`` for the model itself)."""
    return {m: clean_name(n) for n, m in unwrap(model).named_modules()}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def run_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where batches go: ``device`` (checked: a device this machine has), else the model's device."""
    check_module(model)
    return model_device(model) if device is None else checked_device(device)


@contextlib.contextmanager
def kept_modes(model: nn.Module, training: bool | None = None) -> Iterator[None]:
    """Set the whole model to train (True) or eval (False) mode, or leave it (None); afterwards every
    module's own flag is as it was, also on error."""
    modes = [(m, m.training) for m in model.modules()]
    if training is not None:
        model.train(training)
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


def _orig_mod(m: nn.Module) -> nn.Module | None:
    """The module that a ``torch.compile`` wrapper ``m`` wraps, else None."""
    orig = m._modules.get("_orig_mod")  # not getattr: a failed Module.__getattr__ is slow, and this runs per module
    return orig if isinstance(orig, nn.Module) else None


def _compiled_call(m: nn.Module) -> Callable | None:
    """What ``Module.compile`` made ``m`` call, else None."""
    return m.__dict__.get("_compiled_call_impl")


def is_compiled(model: nn.Module) -> bool:
    """Whether the model or any submodule runs through ``torch.compile`` (wrapper or ``Module.compile``)."""
    return any(_orig_mod(m) is not None or _compiled_call(m) is not None for m in model.modules())


def bypass_compiled(model: nn.Module) -> Callable[[], None]:
    """Make the compiled parts of ``model`` (``torch.compile`` wrappers and ``Module.compile``) call their
    original modules until the returned function is called, so that forwards run eagerly meanwhile.

    Only those modules change, each in one attribute; nothing process-wide (unlike
    ``torch.compiler.set_stance``), and their compiled code is kept for later.
    """
    undo = []
    for m in model.modules():
        if _orig_mod(m) is not None and "forward" in m.__dict__:
            undo.append((m, "forward", m.__dict__["forward"]))
            m.forward = _orig_mod(m).__call__
        if _compiled_call(m) is not None:
            undo.append((m, "_compiled_call_impl", _compiled_call(m)))
            m._compiled_call_impl = None

    def restore() -> None:
        for m, attr, value in reversed(undo):
            setattr(m, attr, value)

    return restore


def fingerprint(model: nn.Module) -> str:
    """A digest of the architecture: class name, module names and parameter and buffer shapes and dtypes.

    Two models with equal fingerprints can share counts and checkpoints; weights are not included.
    """
    bare = unwrap(model)
    h = hashlib.sha256(type(bare).__qualname__.encode())
    for kind, items in (("p", bare.named_parameters()), ("b", bare.named_buffers())):
        for name, t in items:
            h.update(f"{kind}:{clean_name(name)}:{tuple(t.shape)}:{t.dtype};".encode())
    for name, m in bare.named_modules():
        h.update(f"m:{clean_name(name)}:{type(m).__qualname__};".encode())
    return h.hexdigest()[:16]
