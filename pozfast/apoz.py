"""Drop-in APoZ measurement for any PyTorch model.

What is counted: the output of every ReLU in the forward pass, wherever it comes from: ``nn.ReLU``
modules (in place or not) and the functional calls ``F.relu``, ``F.relu_``, ``torch.relu``,
``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_`` inside any module's forward. While tracking, a
``TorchFunctionMode`` routes those calls through :func:`pozfast.relu_count`, which returns the same
values as ``torch.relu`` and counts the zeros in the same pass; nothing else in the forward changes.

Layer keys: a call is attributed to the innermost module whose forward is running (an ``nn.ReLU``
module to itself). The key is that module's qualified name (``"<root>"`` for the model itself), with
``":i"`` appended when the module calls ReLU more than once per forward (torchvision's BasicBlock
reuses one ``nn.ReLU``: ``layer1.0.relu:0`` and ``layer1.0.relu:1``). Keys are the same in every run.

Channel axis: axis 1 when the activation comes from a conv, batch/instance/group norm or pooling
module, the last axis when it comes from a Linear, LayerNorm, Embedding or Bilinear module. When the
producer cannot be seen (e.g. ``relu(a + b)``): 2-D activations use axis 1, 3-D use the last axis
(token activations (N, L, C)), 4-D and more use axis 1. ``channel_dims={key_or_module: axis}``
overrides it. Activations that are not floating point or have fewer than 2 dims are not counted.

Tracking works on the thread that entered it (TorchFunctionMode is thread-local).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pozfast._io import atomic_write
from pozfast.ops.relu_count import relu_count
from pozfast.report import APoZReport, LayerAPoZ

_RELU = {F.relu: False, torch.relu: False, Tensor.relu: False,
         F.relu_: True, torch.relu_: True, Tensor.relu_: True}
_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                  nn.LocalResponseNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                  nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_CHANNEL_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.Bilinear)
STATE_VERSION = 1


def _producer_channel_dim(module: nn.Module) -> int | None:
    return 1 if isinstance(module, _CHANNEL_FIRST) else -1 if isinstance(module, _CHANNEL_LAST) else None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _default_channel_dim(x: Tensor) -> int:
    return -1 if x.dim() == 3 else 1


@dataclasses.dataclass
class _Site:
    module: str
    call: int
    channel_dim: int
    zeros: Tensor
    total: int = 0
    examples: int = 0


class _ReluMode(TorchFunctionMode):
    def __init__(self, tracker: APoZTracker):
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inplace = _RELU.get(func)
        if inplace is None:
            return func(*args, **kwargs)
        x = args[0]
        if func is F.relu:
            inplace = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            return func(*args, **kwargs)
        return self.tracker._count(x, inplace)


class APoZTracker:
    """Counts zeros of every ReLU output of ``model`` while active; see the module docstring.

    Use as ``with pozfast.track_apoz(model) as tracker: ...; report = tracker.report()``. Counts
    accumulate across forwards (and across ``with`` blocks) until :meth:`reset`.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None,
                 channel_dims: Mapping[str, int] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = list(layers) if layers is not None else None
        self.channel_dims = dict(channel_dims or {})
        self._names = {m: name for name, m in model.named_modules()}
        self._sites: dict[tuple[str, int], _Site] = {}
        self._calls: dict[str, int] = {}
        self._producers: dict[int, tuple[weakref.ref, int]] = {}
        self._handles: list = []
        self._mode: _ReluMode | None = None
        self.batches = 0

    # --- activation --------------------------------------------------------------------------------
    def __enter__(self) -> APoZTracker:
        if self._mode is not None:
            raise RuntimeError("this tracker is already active")
        self._handles.append(self.model.register_forward_pre_hook(self._new_forward))
        for module in self._names:
            dim = _producer_channel_dim(module)
            if dim is not None:
                self._handles.append(module.register_forward_hook(self._make_producer_hook(dim)))
        self._mode = _ReluMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._producers.clear()

    def _new_forward(self, module: nn.Module, args) -> None:
        # A new forward pass of the model: call indices start again.
        self._calls.clear()
        self._producers.clear()
        self.batches += 1

    def _make_producer_hook(self, dim: int):
        def hook(mod, args, output):
            if isinstance(output, Tensor):
                self._producers[id(output)] = (weakref.ref(output), dim)

        return hook

    def _calling_module(self) -> str:
        """Qualified name of the innermost tracked module whose forward is on the Python stack.

        Walking frames costs only on ReLU calls; hooks on every module would cost on every module call.
        """
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
            if owner is not None and isinstance(owner, nn.Module):
                name = self._names.get(owner)
                if name is not None:
                    return name
            frame = frame.f_back
        return ""

    # --- counting ----------------------------------------------------------------------------------
    def _channel_dim(self, x: Tensor, module: str, key: str) -> int:
        for k in (key, module):
            if k in self.channel_dims:
                return self.channel_dims[k]
        seen = self._producers.get(id(x))
        if seen is not None and seen[0]() is x:
            return seen[1]
        return _default_channel_dim(x)

    def _count(self, x: Tensor, inplace: bool) -> Tensor:
        module = self._calling_module()
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        site = self._sites.get((module, call))
        if site is None:
            cd = self._channel_dim(x, module, f"{module or '<root>'}:{call}")
            y, zeros = relu_count(x, cd, inplace=inplace)  # validates cd
            site = self._sites[(module, call)] = _Site(module, call, cd % x.dim(), zeros)
        else:
            if x.dim() <= site.channel_dim or x.shape[site.channel_dim] != site.zeros.numel():
                raise RuntimeError(f"ReLU call {call} of module {module or '<root>'!r} saw shape "
                                   f"{tuple(x.shape)}, but earlier {site.zeros.numel()} channels on axis "
                                   f"{site.channel_dim}")
            y, zeros = relu_count(x, site.channel_dim, inplace=inplace)
            site.zeros += zeros.to(site.zeros.device)
        site.total += x.numel() // max(x.shape[site.channel_dim], 1)
        site.examples += x.shape[0]
        return y

    # --- results -----------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys of the call sites seen so far, in forward order."""
        return list(_site_keys(self._sites).values())

    def report(self, reduce: bool = True) -> APoZReport:
        """The counts so far as an :class:`APoZReport`.

        With ``reduce`` and an initialised ``torch.distributed`` process group, counts are summed over
        all ranks (every rank must call this), so every rank gets the report of the union of their data.
        """
        sites = self._sites
        if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            sites = _all_reduce_sites(sites)
        if not sites:
            raise ValueError("no ReLU output was counted: the model has no ReLU (nn.ReLU, F.relu, torch.relu, "
                             "Tensor.relu) in its forward, or no forward ran while tracking")
        keys = _site_keys(sites)
        return APoZReport([LayerAPoZ(key=keys[s], module=sites[s].module, call=sites[s].call,
                                     channel_dim=sites[s].channel_dim, zeros=sites[s].zeros.cpu(),
                                     total=sites[s].total, examples=sites[s].examples)
                           for s in _select(keys, self.layers)])

    def reset(self) -> None:
        self._sites.clear()
        self.batches = 0

    def state_dict(self) -> dict[str, Any]:
        """This rank's counts (not reduced), for saving and resuming an interrupted measurement."""
        return {"version": STATE_VERSION, "batches": self.batches,
                "sites": [dict(module=s.module, call=s.call, channel_dim=s.channel_dim, zeros=s.zeros.cpu(),
                               total=s.total, examples=s.examples) for s in self._sites.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"APoZ tracker state version {state.get('version')!r} is not {STATE_VERSION}")
        device = model_device(self.model)
        self._sites = {(s["module"], s["call"]): _Site(s["module"], s["call"], s["channel_dim"],
                                                       s["zeros"].to(device), s["total"], s["examples"])
                       for s in state["sites"]}
        self.batches = int(state["batches"])


def _site_keys(sites: Mapping[tuple[str, int], _Site]) -> dict[tuple[str, int], str]:
    """Readable keys: the module path, plus ':call' for modules that call ReLU more than once."""
    calls: dict[str, int] = {}
    for module, call in sites:
        calls[module] = max(calls.get(module, 0), call + 1)
    return {(m, c): (m or "<root>") + (f":{c}" if calls[m] > 1 else "") for m, c in sites}


def _select(keys: dict[tuple[str, int], str], layers: list[str] | None) -> list[tuple[str, int]]:
    """The sites named by ``layers`` (keys, or module names that select every site inside that module),
    in forward order; all when None."""
    if layers is None:
        return list(keys)
    chosen: set[tuple[str, int]] = set()
    for wanted in layers:
        match = {s for s, k in keys.items() if k == wanted or s[0] == wanted or s[0].startswith(wanted + ".")}
        if not match:
            raise KeyError(f"layer {wanted!r} is not a ReLU call site of this model; seen: {list(keys.values())}")
        chosen |= match
    return [s for s in keys if s in chosen]


def _all_reduce_sites(sites: dict[tuple[str, int], _Site]) -> dict[tuple[str, int], _Site]:
    """Sum the counts of every rank; ranks that saw fewer (or no) call sites contribute zeros."""
    dist = torch.distributed
    local = [(s.module, s.call, s.channel_dim, s.zeros.numel()) for s in sites.values()]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    union: dict[tuple[str, int], tuple[int, int]] = {}
    for rank_sites in gathered:
        for module, call, cd, channels in rank_sites:
            if union.setdefault((module, call), (cd, channels)) != (cd, channels):
                raise RuntimeError(f"ranks disagree on ReLU call {call} of {module or '<root>'!r}: "
                                   f"{union[(module, call)]} vs {(cd, channels)} (channel axis, channels)")
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = []
    for key, (_, channels) in union.items():
        s = sites.get(key)
        zeros = s.zeros.to(device) if s else torch.zeros(channels, dtype=torch.int64, device=device)
        extra = torch.tensor([s.total if s else 0, s.examples if s else 0], dtype=torch.int64, device=device)
        parts += [zeros, extra]
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)
    dist.all_reduce(flat)
    out, offset = {}, 0
    for (module, call), (cd, channels) in union.items():
        zeros, (total, examples) = flat[offset:offset + channels], flat[offset + channels:offset + channels + 2].tolist()
        out[(module, call)] = _Site(module, call, cd, zeros.cpu(), total, examples)
        offset += channels + 2
    return out


def track_apoz(model: nn.Module, layers: Iterable[str] | None = None,
               channel_dims: Mapping[str, int] | None = None) -> APoZTracker:
    """Context manager that counts ReLU zeros of ``model`` inside the user's own loop.

    ``layers`` restricts the report to these keys or modules (a module selects every call site in it); ``channel_dims`` sets the channel
    axis per key or module name. The model's outputs are bit-identical to untracked ones.
    """
    return APoZTracker(model, layers=layers, channel_dims=channel_dims)


# --- the measurement driver -------------------------------------------------------------------------

_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids")


def default_inputs(batch: Any) -> Any:
    """The model inputs of a batch: a tensor itself, the first item of a tuple/list, or a dict's
    ``input``/``inputs``/``x``/``image(s)``/``pixel_values``/``input_ids`` entry."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for k in _INPUT_KEYS:
            if k in batch:
                return batch[k]
        raise TypeError(f"cannot tell the inputs of a dict batch with keys {list(batch)}; pass "
                        f"inputs=lambda batch: ... that returns the model's input")
    raise TypeError(f"cannot interpret a batch of type {type(batch).__name__}; pass inputs=lambda batch: ... "
                    "that returns the model's input (a tensor, a tuple of positional args or a dict of kwargs)")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0] if inputs.dim() else 1
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return next((_batch_size(v) for v in values if isinstance(v, Tensor)), 1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the measurement; every module's own training flag is restored after, even on error."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def apoz(model: nn.Module, data: Iterable, *, device: str | torch.device | None = None,
         layers: Iterable[str] | None = None, max_batches: int | None = None, progress: bool = True,
         inputs: Callable[[Any], Any] | None = None, channel_dims: Mapping[str, int] | None = None,
         checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50) -> APoZReport:
    """Measure the APoZ of every ReLU of ``model`` over ``data`` (the paper's validation protocol).

    Args:
        model: any ``nn.Module``; run in eval mode under ``torch.no_grad()``, each module's training
            flag restored afterwards (also on error or Ctrl-C).
        data: a DataLoader or any iterable of batches: tensors, ``(inputs, targets)`` tuples/lists or dicts.
        device: where inputs are moved (default: the device of the model's first parameter).
        layers: report only these keys or modules (a module selects every call site inside it; default:
            all); a name that matches no call site is an error, raised after the first batch.
        max_batches: stop after this many batches.
        progress: show a tqdm bar (examples/s).
        inputs: ``batch -> model input``; a tuple is passed as positional args, a dict as kwargs.
        channel_dims: channel axis per key or module name (see the module docstring for the default).
        checkpoint: a file for the tracker's counts, written atomically every ``checkpoint_every`` batches
            and when interrupted; if it exists, the run resumes after the batches it already holds.
    Returns:
        An :class:`APoZReport`, summed over ranks when ``torch.distributed`` is initialised.
    """
    if device is None:
        device = model_device(model)
    device = torch.device(device)
    pick = inputs or default_inputs
    tracker = track_apoz(model, layers=layers, channel_dims=channel_dims)
    done = 0
    if checkpoint is not None and Path(checkpoint).exists():
        tracker.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        done = tracker.batches
    bar = _progress_bar(data, max_batches, progress)
    seen = 0
    try:
        with _eval_mode(model), torch.no_grad(), tracker:
            for index, batch in enumerate(data):
                if max_batches is not None and index >= max_batches:
                    break
                seen += 1
                if index < done:
                    continue  # counted before the interruption
                x = _to(pick(batch), device)
                if isinstance(x, Mapping):
                    model(**x)
                elif isinstance(x, tuple):
                    model(*x)
                else:
                    model(x)
                if index == done:
                    _check_first_batch(tracker)
                bar.update(_batch_size(x))
                if checkpoint is not None and (index + 1) % checkpoint_every == 0:
                    _save_state(tracker, checkpoint)
    except BaseException:
        if checkpoint is not None and tracker.batches > done:
            _save_state(tracker, checkpoint)
        raise
    finally:
        bar.close()
    if seen == 0:
        raise ValueError("data yielded no batches: nothing to measure")
    if checkpoint is not None:
        _save_state(tracker, checkpoint)
    return tracker.report()


def _check_first_batch(tracker: APoZTracker) -> None:
    if not tracker._sites:
        raise ValueError(f"{type(tracker.model).__name__} has no ReLU (nn.ReLU, F.relu, torch.relu, Tensor.relu) "
                         "in its forward: nothing to count")
    _select(_site_keys(tracker._sites), tracker.layers)  # unknown layer names fail now, not at the end


def _save_state(tracker: APoZTracker, path: str | os.PathLike) -> None:
    state = tracker.state_dict()
    atomic_write(path, lambda f: torch.save(state, f))


def _progress_bar(data: Iterable, max_batches: int | None, enabled: bool):
    from tqdm.auto import tqdm

    total = None
    dataset = getattr(data, "dataset", None)
    if dataset is not None and max_batches is None:
        with contextlib.suppress(TypeError):
            total = len(dataset)
    return tqdm(total=total, unit="ex", unit_scale=True, desc="APoZ", disable=not enabled)
