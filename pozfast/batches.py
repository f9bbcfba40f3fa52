"""Batches, one way: how every pozfast function calls a model with a batch and finds its targets.

A batch is
- a tensor: the model's single input;
- a tuple or list: inputs first, targets after (``(x, y)``); a first item that is itself a tuple is
  passed as positional arguments, a dict as keyword arguments;
- a dict or Hugging Face ``BatchEncoding``: keyword arguments; keys the model's ``forward`` does not
  take are left out (unless it takes only ``**kwargs``), so ``input_ids`` and ``attention_mask`` arrive
  together and ``labels`` arrives where the forward accepts it; when the forward takes none of the keys,
  the ``input``/``inputs``/``x``/``image(s)``/``pixel_values``/``input_ids`` entry is its single input;
- a namedtuple: its fields as keyword arguments when the forward takes any of their names, else like a
  tuple.
``inputs=batch -> x`` overrides this: a tuple it returns is positional arguments, a dict keyword arguments.

Targets: ``targets=batch -> y`` if given; else the second item of a tuple or list, or the ``labels`` /
``label`` / ``targets`` / ``target`` / ``y`` entry of a dict or namedtuple.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pozfast.modules import unwrap
from pozfast.validate import optional_function

Inputs = Callable[[Any], Any]
_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids")
_TARGET_KEYS = ("labels", "label", "targets", "target", "y")
IGNORE_INDEX = -100  # targets equal to this are left out of losses and accuracy, as in torch and Hugging Face


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def _forward_kwargs(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``given`` that the model's forward takes by name."""
    params = inspect.signature(unwrap(model).forward).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in given.items() if k in named}
    if not kwargs and any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(given)
    return kwargs


def call_args(model: nn.Module, batch: Any, inputs: Inputs | None = None) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` with which ``model`` is called for ``batch`` (see the module docstring)."""
    if optional_function(inputs, "inputs", "batch -> model input") is not None:
        x = inputs(batch)
        if isinstance(x, Mapping):
            return (), dict(x)
        return (x if isinstance(x, tuple) else (x,)), {}
    if isinstance(batch, Tensor):
        return (batch,), {}
    if _is_namedtuple(batch):
        kwargs = _forward_kwargs(model, batch._asdict())
        if kwargs:
            return (), kwargs
    if isinstance(batch, (tuple, list)) and batch:
        first = batch[0]
        if isinstance(first, Mapping):
            return call_args(model, first)
        return (tuple(first) if isinstance(first, (tuple, list)) else (first,)), {}
    if isinstance(batch, Mapping):
        kwargs = _forward_kwargs(model, batch)
        if not kwargs:
            key = next((k for k in _INPUT_KEYS if k in batch), None)
            if key is not None:
                return (batch[key],), {}
            raise TypeError(f"none of the batch's keys {list(batch)} is an argument of "
                            f"{type(unwrap(model)).__name__}.forward; pass inputs=lambda batch: ... that "
                            "returns the model's input (a tensor, a tuple of positional args or a dict of kwargs)")
        return (), kwargs
    raise TypeError(f"cannot call the model with a batch of type {type(batch).__name__}; pass "
                    "inputs=lambda batch: ... that returns the model's input (a tensor, a tuple of positional "
                    "args or a dict of kwargs)")


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor inside (tuples, lists, namedtuples, mappings) moved to ``device``. A mapping
    keeps its type where a copy of it can be updated (a Hugging Face ``BatchEncoding`` stays one, for
    ``inputs=``, ``targets=`` and ``loss_fn`` callables that read its attributes)."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if _is_namedtuple(obj):
        return type(obj)(*(to_device(o, device) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        moved = {k: to_device(v, device) for k, v in obj.items()}
        if type(obj) is not dict:
            try:
                same = copy.copy(obj)
                same.update(moved)
                return same
            except (TypeError, AttributeError):
                pass
        return moved
    return obj


def call_model(model: nn.Module, batch: Any, inputs: Inputs | None = None,
               device: torch.device | str | None = None, where: str = "a batch") -> Any:
    """Call ``model`` with ``batch`` (moved to ``device`` if given) and return its output; ``where`` names the
    batch in the note added to an error the model raises (see :func:`run_model`)."""
    args, kwargs = call_args(model, batch, inputs)
    if device is not None:
        args, kwargs = to_device(args, device), to_device(kwargs, device)
    return run_model(model, args, kwargs, where)


def run_model(model: nn.Module, args: tuple, kwargs: dict[str, Any], where: str) -> Any:
    """``model(*args, **kwargs)``; an error it raises keeps its type and message and gets a note that names
    the batch (``where``) and what the model was given, since torch's own message names neither."""
    try:
        return model(*args, **kwargs)
    except Exception as exc:
        given = ", ".join([*map(_shown, args), *(f"{k}={_shown(v)}" for k, v in kwargs.items())]) or "no arguments"
        if hasattr(exc, "add_note"):  # Python 3.11+; 3.10 shows torch's message alone
            exc.add_note(f"pozfast: raised when {type(unwrap(model)).__name__} was called with {where} ({given}); "
                         "check that the batches fit the model, or pass inputs=lambda batch: ... that returns its input")
        raise


def _shown(value: Any) -> str:
    return f"tensor {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__


def batch_size(batch: Any) -> int:
    """The first dimension of the first tensor found in ``batch`` (1 if there is none)."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    return next((batch_size(v) for v in values if isinstance(v, (Tensor, Mapping, tuple, list))), 1)


def batch_targets(batch: Any, targets: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The class-index targets of ``batch`` (see the module docstring)."""
    if optional_function(targets, "targets", "batch -> class-index targets") is not None:
        return targets(batch)
    fields = batch._asdict() if _is_namedtuple(batch) else batch if isinstance(batch, Mapping) else None
    if fields is not None:
        for k in _TARGET_KEYS:
            if k in fields:
                return fields[k]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise TypeError(f"cannot tell the targets of a batch of type {type(batch).__name__}; pass "
                    "targets=lambda batch: ... that returns the class-index targets")


def output_logits(output: Any) -> Tensor:
    """The logits of a model output: the tensor itself, ``.logits`` (Hugging Face), a dict's ``logits``
    entry, or a tuple's first item."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}; pass loss_fn= "
                        "(and evaluate the model yourself)")
    return logits


def default_loss(output: Any, batch: Any, targets: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The output's own ``.loss`` (Hugging Face models given labels), else cross-entropy of the logits
    ``[..., C]`` against class-index targets ``[...]`` (``-100`` ignored)."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, Tensor):
        return loss
    logits = output_logits(output)
    y = batch_targets(batch, targets).to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)
