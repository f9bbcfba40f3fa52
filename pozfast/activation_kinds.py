"""Which activations the tracker counts: kinds, the functional calls and module classes of each kind.

A kind names a family of activations. ``relu``, ``relu6``, ``gelu`` and ``silu`` are seen both as module
calls and as functional calls (``F.relu``/``torch.relu``/``Tensor.relu`` and their in-place forms,
``F.relu6``, ``F.gelu`` with either approximation, ``F.silu``). The other kinds are module classes only:
torch's ``nn.Hardswish``, ``nn.LeakyReLU``, ``nn.Mish``, ``nn.PReLU``, ``nn.Sigmoid``, ``nn.Tanh``, and the
classes that Hugging Face transformers' activation table (``transformers.activations.ACT2CLS``) maps names
to. A transformers class joins the kind its table name says: every GELU variant (``gelu_new``,
``gelu_fast``, ``quick_gelu``, ``gelu_pytorch_tanh``, ``gelu_10``, ...) is ``gelu``, ``silu`` and ``swish``
are ``silu``, any other name is its own kind (``relu2``, ``laplace``, ``xielu``, ...). transformers is
imported only when a model already imported it, or when a kind is not one of torch's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT = ("relu",)  # what pozfast counted before any other kind existed: reports stay as they were


class Call(NamedTuple):
    """A tracked functional call: its kind and whether it overwrites its input."""

    kind: str
    inplace: bool


_FUNCTIONS = {F.relu: Call("relu", False), torch.relu: Call("relu", False), Tensor.relu: Call("relu", False),
              F.relu_: Call("relu", True), torch.relu_: Call("relu", True), Tensor.relu_: Call("relu", True),
              F.relu6: Call("relu6", False), F.gelu: Call("gelu", False), F.silu: Call("silu", False)}
_INPLACE_ARG = {F.relu, F.relu6, F.silu}  # functions whose second argument / ``inplace=`` asks for in place

# Module classes counted from their output (a ReLU module is counted through its F.relu call instead,
# fused with the ReLU itself). Subclasses first: nn.ReLU6 is an nn.Hardtanh.
_TORCH_MODULES = ((nn.ReLU6, "relu6"), (nn.GELU, "gelu"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"),
                  (nn.LeakyReLU, "leaky_relu"), (nn.Mish, "mish"), (nn.PReLU, "prelu"), (nn.Sigmoid, "sigmoid"),
                  (nn.Tanh, "tanh"))
TORCH_KINDS = ("relu", *dict.fromkeys(kind for _, kind in _TORCH_MODULES))


def functional_call(func, args: tuple, kwargs: dict) -> Call | None:
    """The tracked call ``func(*args, **kwargs)`` is, or None for any other function."""
    call = _FUNCTIONS.get(func)
    if call is not None and func in _INPLACE_ARG:
        inplace = args[1] if len(args) > 1 else kwargs.get("inplace", False)
        if inplace:
            return Call(call.kind, True)
    return call


def _family(name: str) -> str:
    """The kind of a transformers activation-table name."""
    if "gelu" in name:
        return "gelu"
    return "silu" if name in ("silu", "swish") else name


def _transformers_classes(load: bool) -> dict[type, str]:
    """{class: kind} from transformers' activation table; empty when it is not imported (or cannot be)."""
    table = sys.modules.get("transformers.activations")
    if table is None and load:
        try:
            import transformers.activations as table
        except Exception:  # an optional dependency that is missing or broken adds no kinds
            return {}
    if table is None:
        return {}
    classes: dict[type, str] = {}
    for name, entry in table.ACT2CLS.items():
        cls = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(cls, type) and cls is not nn.ReLU:
            classes.setdefault(cls, _family(name))
    return classes


def module_kinds(modules: Iterable[nn.Module]) -> dict[nn.Module, str]:
    """The kind of each activation module among ``modules`` that is counted from its output (nn.ReLU is not:
    its F.relu call is counted, fused with the ReLU)."""
    hf = _transformers_classes(load=False)
    found = {}
    for module in modules:
        kind = hf.get(type(module)) or next((k for cls, k in _TORCH_MODULES if isinstance(module, cls)), None)
        if kind is not None:
            found[module] = kind
    return found


def known_kinds() -> list[str]:
    """Every kind that can be selected here: torch's, then those transformers adds (when it is installed)."""
    return list(dict.fromkeys([*TORCH_KINDS, *sorted(set(_transformers_classes(load=True).values()))]))


def kinds(activations: str | Iterable[str] | None) -> frozenset[str]:
    """The validated ``activations=`` argument: a kind, a list of kinds, ``"all"``, or None for the default."""
    if activations is None:
        return frozenset(DEFAULT)
    chosen = [activations] if isinstance(activations, str) else activations
    try:
        chosen = list(chosen)
    except TypeError:
        raise TypeError(f"activations must be a kind such as 'gelu', a list of kinds or 'all', got "
                        f"{type(activations).__name__}") from None
    bad = [k for k in chosen if not isinstance(k, str)]
    if bad or not chosen:
        raise TypeError(f"activations must name one or more kinds, got {activations!r}")
    if chosen == ["all"]:
        return frozenset(known_kinds())
    unknown = [k for k in chosen if k not in TORCH_KINDS]
    if unknown:
        valid = known_kinds()
        missing = [k for k in unknown if k not in valid]
        if missing:
            raise ValueError(f"unknown activation kind {missing[0]!r}; valid kinds: {', '.join(valid)} (or 'all')")
    return frozenset(chosen)
