"""Counting the zeros of every ReLU output of a model while it runs: :func:`track_apoz`.

What is counted: the output of every ReLU in the tracked model's forward, wherever it comes from:
``nn.ReLU`` modules (in place or not) and the functional calls ``F.relu``, ``F.relu_``, ``torch.relu``,
``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_`` inside any module's forward. While tracking, a
``TorchFunctionMode`` routes those calls through :func:`pozfast.relu_count`, which returns the same
values as ``torch.relu`` and counts the zeros in the same pass; nothing else in the forward changes.
ReLUs outside the tracked model's forward (a loss, a teacher model, metrics) are not counted.

A forward's counts are committed when the tracked module's forward returns: a forward that raises, or is
interrupted, counts nothing.

Layer keys: a call is attributed to the innermost module whose forward is running (an ``nn.ReLU``
module to itself). The key is that module's qualified name (``"<root>"`` for the model itself), with
``":i"`` appended when the module calls ReLU more than once per forward (torchvision's BasicBlock
reuses one ``nn.ReLU``: ``layer1.0.relu:0`` and ``layer1.0.relu:1``). Names are those of the bare model
under ``torch.compile``, DistributedDataParallel and FSDP wrappers; compiled models run eagerly while
tracked, so that every call is seen.

Producers: each site records the Conv/Linear modules whose output reaches the ReLU through per-channel
modules and ops (BatchNorm, Dropout, pooling, Identity, reshapes, residual adds): ``report[key].producers``.
:mod:`pozfast.prune` resolves layer names to sites with it.

Channel axis: axis 1 when the activation comes from a conv, batch/instance/group norm or pooling
module, the last axis when it comes from a Linear, LayerNorm, Embedding or Bilinear module. When the
producer cannot be seen (e.g. ``relu(a * b)``): 2-D activations use axis 1, 3-D use the last axis
(token activations (N, L, C)), 4-D and more use axis 1. ``channel_dims={key_or_module: axis}``
overrides it. Activations that are not floating point or have fewer than 2 dims are not counted.

Trackers nest: several may be active at once (on one model, on a model and its submodule); each counts
what it tracks. Tracking works on the thread that entered it (TorchFunctionMode is thread-local).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pozfast import distributed
from pozfast.modules import eager, fingerprint, model_device, module_names, unwrap
from pozfast.ops.relu_count import count_zeros_reference, relu_count
from pozfast.report import APoZReport, LayerAPoZ
from pozfast.sites import Site, all_reduce_sites, dim_keys, select_sites, site_keys, union_names
from pozfast.validate import instance, integer, names

_RELU = {F.relu: False, torch.relu: False, Tensor.relu: False,
         F.relu_: True, torch.relu_: True, Tensor.relu_: True}
_CONV = nn.modules.conv._ConvNd
_POOL = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.modules.pooling._AdaptiveMaxPoolNd)
# Modules that keep channels apart: a channel of their output is that channel of their input.
_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.modules.dropout._DropoutNd, nn.Identity,
                nn.Flatten, nn.Unflatten, *_POOL)
_CHANNEL_FIRST = (_CONV, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm, *_POOL)
_CHANNEL_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.Bilinear)
# Functions whose output channels are their first input's (reshapes, dropout) or that add channel-wise
# (residual adds): the output inherits the producers of its tensor inputs.
_PASSTHROUGH = {Tensor.view, Tensor.reshape, Tensor.flatten, torch.flatten, torch.reshape, Tensor.contiguous,
                Tensor.unflatten, F.dropout, Tensor.__add__, Tensor.__radd__, Tensor.__iadd__, Tensor.add,
                Tensor.add_, torch.add}
STATE_VERSION = 2


def _producer_channel_dim(module: nn.Module) -> int | None:
    return 1 if isinstance(module, _CHANNEL_FIRST) else -1 if isinstance(module, _CHANNEL_LAST) else None


def _default_channel_dim(x: Tensor) -> int:
    return -1 if x.dim() == 3 else 1


class _Active(threading.local):
    def __init__(self):
        self.trackers: list[APoZTracker] = []
        self.mode: _ReluMode | None = None


_active = _Active()


def _innermost_module() -> nn.Module | None:
    """The innermost ``nn.Module`` whose forward (or other method) is on the Python stack.

    Walking frames costs only on ReLU calls; hooks on every module would cost on every module call.
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module):
                return owner
        frame = frame.f_back
    return None


class _ReluMode(TorchFunctionMode):
    """One mode per thread, shared by every active tracker."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inplace = _RELU.get(func)
        if inplace is None:
            out = func(*args, **kwargs)
            if func in _PASSTHROUGH and isinstance(out, Tensor):
                for tracker in _active.trackers:
                    tracker._pass_through(args, out)
            return out
        x = args[0]
        if func is F.relu:
            inplace = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        trackers = [t for t in _active.trackers if t._depth]
        if not trackers or not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            return func(*args, **kwargs)
        owner = _innermost_module()
        sites = [(t, t._site(owner, x)) for t in trackers]
        sites = [(t, s) for t, s in sites if s is not None]
        if not sites:
            return func(*args, **kwargs)
        first = sites[0][1]
        y, zeros = relu_count(x, first.channel_dim, inplace=inplace)
        for tracker, site in sites:
            tracker._add(site, x, zeros if site.channel_dim == first.channel_dim
                         else count_zeros_reference(y.detach(), site.channel_dim))
            tracker._producers.pop(id(y), None)  # an in-place ReLU's output is an activation, not a producer's
        return y


class APoZTracker:
    """Counts zeros of every ReLU output of ``model`` while active; see the module docstring.

    Use as ``with pozfast.track_apoz(model) as tracker: ...; report = tracker.report()``. Counts
    accumulate across forwards (and across ``with`` blocks) until :meth:`reset`.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None,
                 channel_dims: Mapping[str, int] | None = None):
        self.model = model
        self.root = unwrap(model)
        self.layers = names(layers, "layers") if layers is not None else None
        dims = instance({} if channel_dims is None else channel_dims, Mapping, "channel_dims",
                        "a dict {layer key or module name: axis}")
        names(dims, "channel_dims")  # its keys: layer keys or module names
        self.channel_dims = {k: integer(v, f"channel_dims[{k!r}]") for k, v in dims.items()}
        self._names = module_names(model)
        self._sites: dict[tuple[str, int], Site] = {}
        self._touched: list[Site] = []
        self._calls: dict[str, int] = {}
        self._producers: dict[int, tuple[weakref.ref, int | None, tuple[str, ...]]] = {}
        self._handles: list = []
        self._eager = None
        self._depth = 0
        self._ok = False
        self.batches = 0

    # --- activation --------------------------------------------------------------------------------
    def __enter__(self) -> APoZTracker:
        if self._handles:
            raise RuntimeError("this tracker is already active")
        root = self.root
        self._handles += [root.register_forward_pre_hook(self._begin),
                          root.register_forward_hook(self._completed),
                          root.register_forward_hook(self._end, always_call=True)]
        for module, name in self._names.items():
            dim = _producer_channel_dim(module)
            if dim is not None or isinstance(module, _PER_CHANNEL):
                self._handles.append(module.register_forward_hook(self._make_producer_hook(module, name, dim)))
        self._eager = eager(self.model)
        self._eager.__enter__()
        _active.trackers.append(self)
        if _active.mode is None:
            _active.mode = _ReluMode()
            _active.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._abort()
        _active.trackers.remove(self)
        if not _active.trackers:
            _active.mode.__exit__(*exc)
            _active.mode = None
        self._eager.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _begin(self, module: nn.Module, args) -> None:
        if self._depth == 0:  # a new forward of the tracked module: call indices start again
            self._discard()
            self._calls.clear()
            self._producers.clear()
        self._depth += 1

    def _completed(self, module, args, output) -> None:
        self._ok = True  # runs only when the forward returned; _end runs in any case

    def _end(self, module, args, output) -> None:
        ok, self._ok = self._ok, False
        self._depth -= 1
        if self._depth == 0:
            if ok:
                self._commit()
            else:
                self._discard()

    def _abort(self) -> None:
        """Forget an unfinished forward (interrupted by an exception that skipped the hooks)."""
        self._depth = 0
        self._discard()

    def _commit(self) -> None:
        for s in self._touched:
            if s.p_zeros is not None:
                s.zeros += s.p_zeros.to(s.zeros.device)
            s.total += s.p_total
            s.examples += s.p_examples
            s.p_zeros, s.p_total, s.p_examples, s.committed = None, 0, 0, True
        self._touched.clear()
        self.batches += 1

    def _discard(self) -> None:
        for s in self._touched:
            s.p_zeros, s.p_total, s.p_examples = None, 0, 0
            if not s.committed:
                del self._sites[(s.module, s.call)]
        self._touched.clear()

    def _make_producer_hook(self, module: nn.Module, name: str, dim: int | None):
        own = (name,) if isinstance(module, (_CONV, nn.Linear)) else None
        per_channel = isinstance(module, _PER_CHANNEL)

        def hook(mod, args, output):
            if not isinstance(output, Tensor):
                return
            seen = self._producer(args[0]) if args and isinstance(args[0], Tensor) else None
            origin = own or (seen[2] if seen is not None and per_channel else ())
            out_dim = dim if dim is not None else seen[1] if seen is not None and output.shape == args[0].shape else None
            self._producers[id(output)] = (weakref.ref(output), out_dim, origin)

        return hook

    def _producer(self, t: Tensor) -> tuple[weakref.ref, int | None, tuple[str, ...]] | None:
        seen = self._producers.get(id(t))
        return seen if seen is not None and seen[0]() is t else None

    def _pass_through(self, args: tuple, out: Tensor) -> None:
        seen = [s for s in (self._producer(a) for a in args if isinstance(a, Tensor)) if s is not None]
        if seen:
            dim = seen[0][1] if isinstance(args[0], Tensor) and out.shape == args[0].shape else None
            self._producers[id(out)] = (weakref.ref(out), dim, union_names(*(s[2] for s in seen)))

    # --- counting ----------------------------------------------------------------------------------
    def _site(self, owner: nn.Module | None, x: Tensor) -> Site | None:
        """This forward's site for a ReLU call by ``owner`` (None when the owner is not tracked)."""
        module = self._names.get(owner)
        if module is None:
            return None
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        seen = self._producer(x)
        producers = seen[2] if seen is not None else ()
        site = self._sites.get((module, call))
        if site is None:
            cd = self._channel_dim(x, module, call, seen)
            if not -x.dim() <= cd < x.dim():
                raise ValueError(f"channel_dims gives axis {cd} for ReLU call {call} of {module or '<root>'!r}, "
                                 f"whose activation has shape {tuple(x.shape)}")
            cd %= x.dim()
            site = self._sites[(module, call)] = Site(
                module, call, cd, torch.zeros(x.shape[cd], dtype=torch.int64, device=x.device), producers)
        elif x.dim() <= site.channel_dim or x.shape[site.channel_dim] != site.zeros.numel():
            raise RuntimeError(f"ReLU call {call} of module {module or '<root>'!r} saw shape "
                               f"{tuple(x.shape)}, but earlier {site.zeros.numel()} channels on axis "
                               f"{site.channel_dim}")
        elif producers and producers != site.producers:
            site.producers = union_names(site.producers, producers)
        return site

    def _channel_dim(self, x: Tensor, module: str, call: int, seen) -> int:
        for k in dim_keys(module, call):
            if k in self.channel_dims:
                return self.channel_dims[k]
        if seen is not None and seen[1] is not None:
            return seen[1]
        return _default_channel_dim(x)

    def _add(self, site: Site, x: Tensor, zeros: Tensor) -> None:
        if site.p_zeros is None:
            site.p_zeros = zeros
            self._touched.append(site)
        else:
            site.p_zeros = site.p_zeros + zeros
        site.p_total += x.numel() // max(x.shape[site.channel_dim], 1)
        site.p_examples += x.shape[0]

    # --- results -----------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys of the call sites seen so far, in forward order."""
        return list(site_keys(self._sites).values())

    def report(self, reduce: bool = True) -> APoZReport:
        """The counts so far as an :class:`APoZReport`.

        With ``reduce`` and an initialised ``torch.distributed`` process group, counts are summed over
        all ranks (every rank must call this), so every rank gets the report of the union of their data.
        """
        sites = self._sites
        if reduce and distributed.initialized():
            sites = all_reduce_sites(sites)
        if not sites:
            raise ValueError(f"no ReLU output was counted: {type(self.root).__name__} has no ReLU (nn.ReLU, F.relu, "
                             "torch.relu, Tensor.relu) in its forward, or no forward of it completed while tracking")
        keys = site_keys(sites)
        return APoZReport([LayerAPoZ(key=keys[s], module=sites[s].module, call=sites[s].call,
                                     channel_dim=sites[s].channel_dim, zeros=sites[s].zeros.cpu(),
                                     total=sites[s].total, examples=sites[s].examples,
                                     producers=sites[s].producers)
                           for s in self._selected(sites)])

    def _selected(self, sites: Mapping[tuple[str, int], Site]) -> list[tuple[str, int]]:
        """The sites ``layers`` names; a name in ``layers`` or ``channel_dims`` that matches no site is an error."""
        matched = {k for module, call in sites for k in dim_keys(module, call)}
        unknown = [k for k in self.channel_dims if k not in matched]
        if unknown:
            raise KeyError(f"channel_dims names {unknown[0]!r}, which is neither a ReLU site (key, or key:call) nor a "
                           f"module that calls ReLU; sites: {list(site_keys(sites).values())}")
        return select_sites(sites, self.layers)

    def reset(self) -> None:
        self._sites.clear()
        self._touched.clear()
        self.batches = 0

    def state_dict(self) -> dict[str, Any]:
        """This rank's committed counts (not reduced), with the model's fingerprint, for resuming."""
        return {"version": STATE_VERSION, "model": fingerprint(self.model), "batches": self.batches,
                "sites": [dict(module=s.module, call=s.call, channel_dim=s.channel_dim, zeros=s.zeros.cpu(),
                               total=s.total, examples=s.examples, producers=list(s.producers))
                          for s in self._sites.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; counts of another architecture are refused."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            found = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a pozfast APoZ tracker state of version {STATE_VERSION} (found {found!r})")
        if state.get("model") != fingerprint(self.model):
            raise ValueError(f"the saved counts come from another model (fingerprint {state.get('model')}, this "
                             f"{type(self.root).__name__} has {fingerprint(self.model)}): module names or parameter "
                             "shapes differ")
        device = model_device(self.model)
        try:
            sites = {(s["module"], s["call"]): Site(s["module"], s["call"], s["channel_dim"], s["zeros"].to(device),
                                                     tuple(s["producers"]), s["total"], s["examples"], True)
                     for s in state["sites"]}
            batches = integer(state["batches"], "batches", minimum=0)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"the tracker state is malformed ({type(exc).__name__}: {exc}); pass a dict from "
                             "APoZTracker.state_dict()") from None
        self._sites = sites
        self._touched.clear()
        self.batches = batches


def track_apoz(model: nn.Module, layers: Iterable[str] | None = None,
               channel_dims: Mapping[str, int] | None = None) -> APoZTracker:
    """Context manager that counts ReLU zeros of ``model`` inside the user's own loop.

    ``layers`` restricts the report to these keys, modules (every call site inside) or producer layers
    (the sites their output reaches); ``channel_dims`` sets the channel axis per key or module name.
    The model's outputs are bit-identical to untracked ones.
    """
    return APoZTracker(model, layers=layers, channel_dims=channel_dims)
