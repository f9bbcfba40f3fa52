"""Counting near-zero activations of a model while it runs: :func:`track_apoz`.

What is counted: the output of every activation of the selected kinds (:mod:`pozfast.activation_kinds`;
by default ReLU) in the tracked model's forward: ``nn.ReLU`` modules and the functional calls ``F.relu``,
``torch.relu``, ``Tensor.relu`` and their in-place forms inside any module's forward; with other kinds,
``F.relu6``, ``F.gelu``, ``F.silu`` and activation modules (torch's and Hugging Face transformers').
Per channel and per threshold tau, the elements with ``|a| <= tau`` (``thresholds=(0.0,)``: the zeros,
APoZ exactly), as int64 counters on the activation's device. A ReLU runs fused with its count
(:func:`pozfast.ops.near_zero.relu_near_zero_count`, the same values as ``torch.relu``); any other
activation runs as usual and one read-only counting pass follows. Activations outside the tracked model's
forward (a loss, a teacher model, metrics) are not counted; nor are activations that are not float32,
float64, float16 or bfloat16 or have fewer than 2 dims.

Token masks (:mod:`pozfast.token_masks`): with ``token_mask="auto"`` each forward of the tracked model that
receives an ``attention_mask`` keyword argument masks with it; ``tracker.set_token_mask(mask)`` sets a mask
for the following forwards (it wins over "auto"). The mask is applied inside the counting kernels to
activations whose leading dims are (N, L) or that have N*L rows; others are counted whole. Each report entry
says whether it was masked and how many sequences and tokens it counted. A forward in which a mask applies
to no counted activation raises a ValueError.

A forward's counts are committed when the tracked module's forward returns: a forward that raises, or is
interrupted, counts nothing.

Layer keys: a call is attributed to the innermost module of the model whose forward is running (an
activation module to itself). The key is that module's qualified name (``"<root>"`` for the model itself),
with ``":i"`` appended when the module makes more than one tracked call per forward (torchvision's BasicBlock
reuses one ``nn.ReLU``: ``layer1.0.relu:0`` and ``layer1.0.relu:1``). Names are those of the bare model
under ``torch.compile``, DistributedDataParallel and FSDP wrappers. Which module is running is known from
forward hooks on every module of the model (no stack inspection); once a compiled model's sites are known,
only the modules that need them keep hooks (see Compiled models).

Compiled models: the hooks and the ``TorchFunctionMode`` that routes activation calls are traced by
``torch.compile`` like the model's own code, so which counter a call feeds is fixed when the graph is
traced; at run time the graph adds into the counters with the registered counting ops, without a graph
break (``fullgraph=True`` works where the model allows it). Under compilation a ReLU runs as
``torch.relu`` (which inductor fuses into its producer) followed by the counting op. The first tracked
forward of a model that holds compiled parts (``torch.compile`` wrappers, ``Module.compile``) runs them
uncompiled (only those modules, not process-wide), so that layer keys, channel axes and producers are found
as for an eager model; after it, only the root, the activation modules and the modules that make tracked
calls keep hooks, so the compiled graph traces no hook that does nothing (a call site first met inside a
compiled graph gets the default channel axis and no producers, and is counted under its nearest module
with hooks). Changing what is tracked (another tracker with other sites, thresholds or kinds) recompiles.

Producers: each site records the Conv/Linear modules whose output reaches the activation through
per-channel modules and ops (BatchNorm, Dropout, pooling, Identity, reshapes, residual adds):
``report[key].producers``. :mod:`pozfast.prune` resolves layer names to sites with it.

Channel axis: axis 1 when the activation comes from a conv, batch/instance/group norm or pooling
module, the last axis when it comes from a Linear, LayerNorm, Embedding or Bilinear module. When the
producer cannot be seen (e.g. ``relu(a * b)``): 2-D activations use axis 1, 3-D use the last axis
(token activations (N, L, C)), 4-D and more use axis 1. ``channel_dims={key_or_module: axis}``
overrides it.

Models split over devices: each site's counters live on the device of the activation it counts; the report
gathers them to the CPU. Trackers nest: several may be active at once (on one model, on a model and its
submodule); each counts what it tracks. Tracking works on the thread that entered it (TorchFunctionMode is
thread-local).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pozfast import activation_kinds, distributed, token_masks
from pozfast.modules import bypass_compiled, fingerprint, is_compiled, model_device, module_names, unwrap
from pozfast.ops.near_zero import check_thresholds, near_zero_count_, tracked_relu
from pozfast.report import APoZReport, LayerAPoZ
from pozfast.sites import (EXAMPLES, TOKENS, TOTAL, Site, all_reduce_sites, counter, dim_keys, new_counters,
                           select_sites, site_keys, union_names)
from pozfast.validate import instance, integer, names

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
_COUNTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # the dtypes the counting ops take
STATE_VERSION = 3


def _producer_channel_dim(module: nn.Module) -> int | None:
    return 1 if isinstance(module, _CHANNEL_FIRST) else -1 if isinstance(module, _CHANNEL_LAST) else None


def _default_channel_dim(x: Tensor) -> int:
    return -1 if x.dim() == 3 else 1


def _pending(sites: list[Site]) -> list[Tensor]:
    """The counters of the sites' current forward: counts, then seen."""
    return [s.pending for s in sites] + [s.p_seen for s in sites]


def _commit_host(sites: list[Site]) -> None:
    """Add the sites' host-side pending (elements, examples) to their committed host part."""
    for s in sites:
        s.host_seen[TOTAL] += s.p_host[TOTAL]
        s.host_seen[EXAMPLES] += s.p_host[EXAMPLES]
        s.p_host[:] = (0, 0)


def _counted(x: Any) -> bool:
    return isinstance(x, Tensor) and x.dtype in _COUNTED and x.dim() >= 2


class _Role(NamedTuple):
    """A module's part in tracking, besides entering and leaving the stack of running modules."""

    name: str
    root: bool
    kind: str | None  # an activation module counted from its output: its kind
    dim: int | None  # the channel axis its output has, when it sets one
    own: tuple[str, ...] | None  # a Conv/Linear: its output's producer is itself
    per_channel: bool  # its output channels are its input's

    @property
    def producer(self) -> bool:
        """Its output's channel axis or producers are worth recording."""
        return self.dim is not None or self.per_channel


def _roles(names: Mapping[nn.Module, str], root: nn.Module, kinds: frozenset[str]) -> dict[nn.Module, _Role]:
    activations = activation_kinds.module_kinds(names)
    roles = {}
    for module, name in names.items():
        kind = activations.get(module)
        roles[module] = _Role(name, module is root, kind if kind in kinds else None, _producer_channel_dim(module),
                              (name,) if isinstance(module, (_CONV, nn.Linear)) else None,
                              isinstance(module, _PER_CHANNEL))
    return roles


class _Active(threading.local):
    def __init__(self):
        self.mode: _Mode | None = None


_active = _Active()


class _Mode(TorchFunctionMode):
    """One mode per thread, shared by the thread's active trackers: routes functional activation calls to
    them. ``torch.compile`` traces it (its state is read while tracing and guarded)."""

    def __init__(self):
        super().__init__()
        self.trackers: list[APoZTracker] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = activation_kinds.functional_call(func, args, kwargs)
        if call is None:
            out = func(*args, **kwargs)
            if func in _PASSTHROUGH and isinstance(out, Tensor) and not torch.compiler.is_compiling():
                for tracker in self.trackers:
                    tracker._pass_through(args, out)
            return out
        x = args[0]
        feeds = []
        for tracker in self.trackers:
            found = tracker._functional_site(call.kind, x)
            if found is not None:
                feeds.append((tracker, *found))
        if not feeds:
            return func(*args, **kwargs)
        rest = feeds
        if call.kind == "relu" and not torch.compiler.is_compiling():
            # Eager: the ReLU and the first tracker's counts in one pass over x.
            tracker, site, mask = feeds[0]
            y = tracked_relu(x, site.pending, tracker.thresholds, site.channel_dim, mask, call.inplace)
            tracker._account(site, y, mask)
            rest = feeds[1:]
        else:
            # Other activations, and ReLU under compilation (inductor fuses it into its producer): the
            # activation as usual, then one read-only counting pass.
            y = func(*args, **kwargs)
        for tracker, site, mask in rest:
            tracker._count(site, y, mask)
        if not torch.compiler.is_compiling():
            for tracker, _, _ in feeds:
                tracker._producers.pop(id(y), None)  # an activation's output is not a producer's
        return y


class APoZTracker:
    """Counts near-zero outputs of the activations of ``model`` while active; see the module docstring.

    Use as ``with pozfast.track_apoz(model) as tracker: ...; report = tracker.report()``. Counts
    accumulate across forwards (and across ``with`` blocks) until :meth:`reset`.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None,
                 channel_dims: Mapping[str, int] | None = None, *, thresholds: Iterable[float] = (0.0,),
                 activations: str | Iterable[str] | None = None, token_mask: str | None = "auto"):
        self.model = model
        self.root = unwrap(model)
        self.layers = names(layers, "layers") if layers is not None else None
        dims = instance({} if channel_dims is None else channel_dims, Mapping, "channel_dims",
                        "a dict {layer key or module name: axis}")
        names(dims, "channel_dims")  # its keys: layer keys or module names
        self.channel_dims = {k: integer(v, f"channel_dims[{k!r}]") for k, v in dims.items()}
        self.thresholds = tuple(check_thresholds(thresholds))
        self.kinds = activation_kinds.kinds(activations)
        if not (token_mask is None or (isinstance(token_mask, str) and token_mask == "auto")):
            raise TypeError(f"token_mask must be 'auto' (the attention_mask keyword argument of each forward) or "
                            f"None, got {type(token_mask).__name__} {token_mask!r:.60}; set a mask tensor with "
                            "tracker.set_token_mask(mask)")
        self.token_mask = token_mask
        self._names = module_names(model)
        self._roles: dict[nn.Module, _Role] | None = None  # made on first entering
        self._activation_modules: set[str] = set()  # names of those counted from their output
        self._sites: dict[tuple[str, int], Site] = {}
        self._touched: list[Site] = []
        self._calls: dict[str, int] = {}
        self._stack: list[str] = []
        self._producers: dict[int, tuple[weakref.ref, int | None, tuple[str, ...]]] = {}
        self._handles: dict[nn.Module, list] = {}
        self._restore_compiled = None
        self._open = False
        self._host_counts = True  # this forward counts what shapes give on the host (see _begin)
        self._mask: Tensor | None = None
        self._forward_mask: Tensor | None = None
        self._mask_applied = False
        self._forwards = counter(torch.zeros((), dtype=torch.int64), model_device(model))

    # --- activation --------------------------------------------------------------------------------
    def __enter__(self) -> APoZTracker:
        if self._handles:
            raise RuntimeError("this tracker is already active")
        if self._roles is None:
            self._roles = _roles(self._names, self.root, self.kinds)
            self._activation_modules = {role.name for role in self._roles.values() if role.kind is not None}
        for module in self._hooked():
            self._hook(module)
        if not self._sites and is_compiled(self.model):
            self._restore_compiled = bypass_compiled(self.model)  # the first forward finds sites eagerly
        if _active.mode is None:
            _active.mode = _Mode()
            _active.mode.__enter__()
        _active.mode.trackers.append(self)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._abort()
        finally:  # the mode and the hooks go even when dropping an unfinished forward fails
            self._outside_inference_mode()
            mode = _active.mode
            mode.trackers.remove(self)
            if not mode.trackers:
                mode.__exit__(*exc)
                _active.mode = None
            self._compiled_back()
            for handles in self._handles.values():
                for h in handles:
                    h.remove()
            self._handles.clear()

    def _outside_inference_mode(self) -> None:
        """Counters that a compiled forward made under ``torch.inference_mode()`` (it traces counter()'s way
        out of it) become plain tensors, so that forwards outside inference mode can add to them."""
        for site in self._sites.values():
            if site.counts.is_inference():
                site.move(site.counts.device)

    def _compiled_back(self) -> None:
        if self._restore_compiled is not None:
            self._restore_compiled()
            self._restore_compiled = None

    def _hooked(self) -> list[nn.Module]:
        """The modules that get hooks: all of them; in a compiled model whose sites are known, only the
        root, the activation modules and the modules that make tracked calls. A compiled graph then traces
        hooks only where they do something: tracking adds less to compiling (and a call that first appears
        later, in a module without hooks, is counted under its nearest hooked ancestor)."""
        if not (self._sites and is_compiled(self.model)):
            return list(self._roles)
        keep = {site.module for site in self._sites.values()}
        return [module for module, role in self._roles.items()
                if role.root or role.kind is not None or role.name in keep]

    def _drop_unused_hooks(self) -> None:
        """Remove the hooks that :meth:`_hooked` no longer asks for (after a compiled model's sites are
        found); the hooks dicts are copied before hooks run, so this may run inside one."""
        keep = set(self._hooked())
        for module in [m for m in self._handles if m not in keep]:
            for h in self._handles.pop(module):
                h.remove()

    def _hook(self, module: nn.Module) -> None:
        """Forward hooks that keep the stack of running modules; the root's pre-hook begins a forward (with
        its keyword arguments), and each post-hook does the module's part (:meth:`_left`)."""
        role = self._roles[module]
        if role.root:
            def enter(mod, args, kwargs):
                self._begin(kwargs)
                self._stack.append(role.name)

            pre = module.register_forward_pre_hook(enter, with_kwargs=True)
        else:
            pre = module.register_forward_pre_hook(lambda mod, args: self._stack.append(role.name))
        post = module.register_forward_hook(lambda mod, args, output: self._left(role, args, output))
        self._handles[module] = [pre, post]

    def _left(self, role: _Role, args: tuple, output: Any) -> None:
        """The module's part once it returns: leave the stack, count an activation module's output, record
        what a producer made, end a forward (the root)."""
        if self._stack:
            self._stack.pop()
        if role.kind is not None:
            self._module_output(role.name, role.kind, args, output)
        elif role.producer and not torch.compiler.is_compiling():
            self._produced(args, output, role.own, role.dim, role.per_channel)
        if role.root:
            self._end()

    def _begin(self, kwargs: dict | None) -> None:
        if self._open:  # the previous forward raised before it returned: its counts are dropped
            self._discard()
        # Shapes' counts go on the host only when the whole forward runs eagerly: from here on, a traced
        # root hook would not commit them (a compiled part inside counts on the device either way).
        self._host_counts = not torch.compiler.is_compiling()
        self._open = True
        self._stack.clear()
        self._calls.clear()
        if not torch.compiler.is_compiling():
            self._producers.clear()
        self._mask_applied = False
        self._forward_mask = self._mask
        if self._forward_mask is None and self.token_mask is not None and kwargs:
            given = kwargs.get("attention_mask")
            if given is not None:
                self._forward_mask = token_masks.checked(given, "the attention_mask passed to the model")

    def _end(self) -> None:
        if self._forward_mask is not None and self._touched and not self._mask_applied:
            shape = tuple(self._forward_mask.shape)
            self._abort()
            raise ValueError(f"the token mask of shape {shape} applies to none of the activations counted in this "
                             f"forward: a mask (N, L) applies to activations (N, L, ...) or (N*L, ...) with the "
                             f"channel axis after those dims; check the mask, or pass token_mask=None")
        self._commit()
        self._open = False
        self._forward_mask = None
        self._calls.clear()

    def _abort(self) -> None:
        """Forget an unfinished forward (interrupted by an exception that skipped the hooks)."""
        self._discard()
        self._open = False
        self._stack.clear()
        self._forward_mask = None

    def _commit(self) -> None:
        touched = self._touched
        if touched:  # one foreach op per step rather than one op per site: fewer launches and graph nodes
            pending = _pending(touched)
            torch._foreach_add_([s.counts for s in touched] + [s.seen for s in touched], pending)
            torch._foreach_zero_(pending)
            if self._host_counts:
                _commit_host(touched)
        for s in touched:
            s.committed = True
        touched.clear()
        self._forwards.add_(1)
        if self._restore_compiled is not None and not torch.compiler.is_compiling():
            self._compiled_back()  # sites found: later forwards run compiled
            self._drop_unused_hooks()

    def _discard(self) -> None:
        if self._touched:
            torch._foreach_zero_(_pending(self._touched))
        for s in self._touched:
            s.p_host[:] = (0, 0)
            if not s.committed:
                self._sites.pop((s.module, s.call), None)
        self._touched.clear()

    # --- producers (eager forwards only) ---------------------------------------------------------
    def _produced(self, args: tuple, output: Any, own: tuple[str, ...] | None, dim: int | None,
                  per_channel: bool) -> None:
        if not self._open or not isinstance(output, Tensor):
            return
        if own is None or dim is None:  # what it passes on depends on its input's producer
            seen = self._producer(args[0]) if args and isinstance(args[0], Tensor) else None
            origin = own or (seen[2] if seen is not None and per_channel else ())
            if dim is None and seen is not None and output.shape == args[0].shape:
                dim = seen[1]
        else:
            origin = own
        self._producers[id(output)] = (weakref.ref(output), dim, origin)

    def _producer(self, t: Tensor) -> tuple[weakref.ref, int | None, tuple[str, ...]] | None:
        seen = self._producers.get(id(t))
        return seen if seen is not None and seen[0]() is t else None

    def _pass_through(self, args: tuple, out: Tensor) -> None:
        if not self._open:
            return
        seen = [s for s in (self._producer(a) for a in args if isinstance(a, Tensor)) if s is not None]
        if seen:
            dim = seen[0][1] if isinstance(args[0], Tensor) and out.shape == args[0].shape else None
            self._producers[id(out)] = (weakref.ref(out), dim, union_names(*(s[2] for s in seen)))

    # --- counting ----------------------------------------------------------------------------------
    def set_token_mask(self, mask: Tensor | None) -> None:
        """Count only the positions where ``mask`` (N, L), bool or integer, is nonzero, in the following
        forwards until changed; None: no explicit mask (``token_mask="auto"`` applies again)."""
        self._mask = None if mask is None else token_masks.checked(mask, "mask")

    def _functional_site(self, kind: str, x: Any) -> tuple[Site, Tensor | None] | None:
        """This forward's site and mask for a functional activation call, or None when it is not counted."""
        if not self._open or kind not in self.kinds or not self._stack or not _counted(x):
            return None
        owner = self._stack[-1]
        if owner in self._activation_modules:
            return None  # inside an activation module counted from its output
        return self._site(owner, kind, x, x)

    def _module_output(self, name: str, kind: str, args: tuple, output: Any) -> None:
        if not self._open or not _counted(output):
            return
        source = args[0] if args and isinstance(args[0], Tensor) else output
        site, mask = self._site(name, kind, output, source)
        self._count(site, output, mask)
        if not torch.compiler.is_compiling():
            self._producers.pop(id(output), None)

    def _site(self, module: str, kind: str, x: Tensor, source: Tensor) -> tuple[Site, Tensor | None]:
        """This forward's site for call ``_calls[module]`` (``x`` the activation, ``source`` the tensor whose
        producer gives the channel axis), and the token mask as it applies to ``x``."""
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        seen = None if torch.compiler.is_compiling() else self._producer(source)
        producers = seen[2] if seen is not None else ()
        site = self._sites.get((module, call))
        if site is None:
            cd = self._channel_dim(x, module, call, seen)
            if not -x.dim() <= cd < x.dim():
                raise ValueError(f"channel_dims gives axis {cd} for activation call {call} of {module or '<root>'!r}, "
                                 f"whose activation has shape {tuple(x.shape)}")
            cd %= x.dim()
            site = self._sites[(module, call)] = Site(module, call, cd, kind,
                                                      *new_counters(len(self.thresholds), x.shape[cd], x.device),
                                                      producers)
        elif x.dim() <= site.channel_dim or x.shape[site.channel_dim] != site.counts.shape[1]:
            raise RuntimeError(f"activation call {call} of module {module or '<root>'!r} saw shape "
                               f"{tuple(x.shape)}, but earlier {site.counts.shape[1]} channels on axis "
                               f"{site.channel_dim}")
        elif producers and producers != site.producers:
            site.producers = union_names(site.producers, producers)
        if site.counts.device != x.device:  # the model moved: its counts go with it
            site.move(x.device)
        self._touched.append(site)
        mask = None
        if self._forward_mask is not None:
            mask = token_masks.applied(self._forward_mask, x, site.channel_dim)
            if mask is not None:
                self._mask_applied = True
                site.masked = True
        return site, mask

    def _channel_dim(self, x: Tensor, module: str, call: int, seen) -> int:
        for k in dim_keys(module, call):
            if k in self.channel_dims:
                return self.channel_dims[k]
        if seen is not None and seen[1] is not None:
            return seen[1]
        return _default_channel_dim(x)

    def _count(self, site: Site, y: Tensor, mask: Tensor | None) -> None:
        """Add the counts of an activation output ``y`` (read only) to the site's pending counters."""
        near_zero_count_(site.pending, y.detach(), self.thresholds, site.channel_dim, mask)
        self._account(site, y, mask)

    def _account(self, site: Site, y: Tensor, mask: Tensor | None) -> None:
        """Add what ``y`` adds to the site's elements per channel, examples and tokens. What shapes give is
        added on the host in an eager forward (no device op per call), on the device when any of the
        forward is compiled (a Python number changed in a graph would be guarded on)."""
        per_position = y.numel() // max(y.shape[site.channel_dim], 1)
        examples = y.shape[0]
        if mask is not None:
            tokens = mask.count_nonzero().to(site.p_seen.device)
            site.p_seen[TOTAL].add_(tokens * (per_position // max(mask.numel(), 1)))
            site.p_seen[TOKENS].add_(tokens)
            per_position, examples = 0, self._forward_mask.shape[0]
        if self._host_counts and not torch.compiler.is_compiling():
            site.p_host[TOTAL] += per_position
            site.p_host[EXAMPLES] += examples
        else:
            site.p_seen[TOTAL].add_(per_position)
            site.p_seen[EXAMPLES].add_(examples)

    # --- results -----------------------------------------------------------------------------------
    @property
    def batches(self) -> int:
        """Forwards of the tracked model completed while tracking (since the last :meth:`reset`)."""
        return int(self._forwards)

    def keys(self) -> list[str]:
        """Keys of the call sites seen so far, in forward order."""
        return list(site_keys(self._sites).values())

    def _tracked(self) -> tuple[str, str]:
        """The tracked activations in words: a short name and the list."""
        if self.kinds == frozenset(activation_kinds.DEFAULT):
            return "ReLU", "(nn.ReLU, F.relu, torch.relu, Tensor.relu)"
        return "activation", f"of the kinds tracked ({', '.join(sorted(self.kinds))})"

    def nothing_counted(self) -> str:
        """Why a forward can count nothing: the model has none of the tracked activations."""
        return f"{type(self.root).__name__} has no %s %s in its forward" % self._tracked()

    def report(self, reduce: bool = True) -> APoZReport:
        """The counts so far as an :class:`APoZReport`, gathered to the CPU.

        With ``reduce`` and an initialised ``torch.distributed`` process group, counts are summed over
        all ranks (every rank must call this), so every rank gets the report of the union of their data.
        """
        sites = self._sites
        if reduce and distributed.initialized():
            sites = all_reduce_sites(sites, self.thresholds)
        if not sites:
            raise ValueError(f"no {self._tracked()[0]} output was counted: {self.nothing_counted()}, or no "
                             "forward of it completed while tracking")
        keys = site_keys(sites)
        entries = []
        for s in self._selected(sites):
            site = sites[s]
            total, examples, tokens = site.seen_all().tolist()
            entries.append(LayerAPoZ(key=keys[s], module=site.module, call=site.call, channel_dim=site.channel_dim,
                                     counts=site.counts.cpu(), thresholds=self.thresholds, total=total,
                                     examples=examples, tokens=tokens, masked=site.masked, kind=site.kind,
                                     producers=site.producers))
        return APoZReport(entries, self.thresholds)

    def _selected(self, sites: Mapping[tuple[str, int], Site]) -> list[tuple[str, int]]:
        """The sites ``layers`` names; a name in ``layers`` or ``channel_dims`` that matches no site is an error."""
        matched = {k for module, call in sites for k in dim_keys(module, call)}
        unknown = [k for k in self.channel_dims if k not in matched]
        if unknown:
            raise KeyError(f"channel_dims names {unknown[0]!r}, which is neither an activation site (key, or "
                           f"key:call) nor a module that calls a tracked activation; sites: "
                           f"{list(site_keys(sites).values())}")
        return select_sites(sites, self.layers)

    def reset(self) -> None:
        self._sites.clear()
        self._touched.clear()
        self._forwards.zero_()

    def state_dict(self) -> dict[str, Any]:
        """This rank's committed counts (not reduced), with the model's fingerprint, for resuming."""
        return {"version": STATE_VERSION, "model": fingerprint(self.model), "batches": self.batches,
                "thresholds": list(self.thresholds),
                "sites": [dict(module=s.module, call=s.call, channel_dim=s.channel_dim, kind=s.kind,
                               counts=s.counts.to("cpu", copy=True), seen=s.seen_all(), masked=s.masked,
                               producers=list(s.producers))
                          for s in self._sites.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (this version, or version 2's zero counts); counts of another
        architecture or other thresholds are refused."""
        if not isinstance(state, Mapping) or state.get("version") not in (2, STATE_VERSION):
            found = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a pozfast APoZ tracker state of version 2 or {STATE_VERSION} (found {found!r})")
        if state.get("model") != fingerprint(self.model):
            raise ValueError(f"the saved counts come from another model (fingerprint {state.get('model')}, this "
                             f"{type(self.root).__name__} has {fingerprint(self.model)}): module names or parameter "
                             "shapes differ")
        saved = tuple(state.get("thresholds", (0.0,)))
        if saved != self.thresholds:
            raise ValueError(f"the saved counts are for thresholds {list(saved)}, this tracker counts "
                             f"{list(self.thresholds)}")
        device = model_device(self.model)
        try:
            sites = {}
            for s in state["sites"]:
                if state["version"] == 2:  # zero counts of ReLU sites
                    counts = s["zeros"][None]
                    seen = torch.tensor([s["total"], s["examples"], 0], dtype=torch.int64)
                else:
                    counts, seen = s["counts"], s["seen"]
                sites[(s["module"], s["call"])] = Site(
                    s["module"], s["call"], s["channel_dim"], s.get("kind", "relu"),
                    counter(counts, device), counter(seen, device), tuple(s["producers"]),
                    bool(s.get("masked", False)), committed=True)
            batches = integer(state["batches"], "batches", minimum=0)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            raise ValueError(f"the tracker state is malformed ({type(exc).__name__}: {exc}); pass a dict from "
                             "APoZTracker.state_dict()") from None
        self._sites = sites
        self._touched.clear()
        self._forwards.fill_(batches)


def track_apoz(model: nn.Module, layers: Iterable[str] | None = None,
               channel_dims: Mapping[str, int] | None = None, *, thresholds: Iterable[float] = (0.0,),
               activations: str | Iterable[str] | None = None, token_mask: str | None = "auto") -> APoZTracker:
    """Context manager that counts near-zero activations of ``model`` inside the user's own loop.

    Args:
        model: any ``nn.Module`` (also compiled, DDP- or FSDP-wrapped, or split over devices).
        layers: restrict the report to these keys, modules (every call site inside) or producer layers
            (the sites their output reaches).
        channel_dims: the channel axis per key or module name.
        thresholds: 1 to 32 increasing taus >= 0; per channel, the elements with ``|a| <= tau`` are counted
            for each. ``(0.0,)``: exact zeros (APoZ).
        activations: the kinds counted (:mod:`pozfast.activation_kinds`): a kind such as ``"gelu"``, a list,
            or ``"all"``; default ReLU only.
        token_mask: ``"auto"``: a forward called with an ``attention_mask`` keyword argument counts only
            its nonzero positions; None: every position unless :meth:`APoZTracker.set_token_mask` sets a mask.

    The model's outputs and gradients are bit-identical to untracked ones.
    """
    return APoZTracker(model, layers=layers, channel_dims=channel_dims, thresholds=thresholds,
                       activations=activations, token_mask=token_mask)
