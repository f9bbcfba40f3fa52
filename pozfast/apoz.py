"""The APoZ measurement driver: :func:`apoz` runs a model over validation data while tracking it.

What is counted and how layers are named: :mod:`pozfast.tracking`. How batches reach the model:
:mod:`pozfast.batches`. Token masks: :mod:`pozfast.token_masks`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pozfast._io import atomic_write
from pozfast.batches import batch_size, call_args, run_model, to_device
from pozfast.distributed import initialized
from pozfast.modules import kept_modes, run_device
from pozfast.report import APoZReport
from pozfast.token_masks import TokenMask, from_batch, option
from pozfast.tracking import APoZTracker, track_apoz
from pozfast.validate import batch_iterable, optional_positive_int, positive_int

CHECKPOINT_FORMAT = "pozfast-apoz-checkpoint"


def apoz(model: nn.Module, data: Iterable, *, device: str | torch.device | None = None,
         layers: Iterable[str] | None = None, max_batches: int | None = None, progress: bool = True,
         inputs: Callable[[Any], Any] | None = None, channel_dims: Mapping[str, int] | None = None,
         checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
         thresholds: Iterable[float] = (0.0,), activations: str | Iterable[str] | None = None,
         token_mask: TokenMask = "auto") -> APoZReport:
    """Measure the APoZ of every ReLU of ``model`` over ``data`` (the paper's validation protocol), or the
    near-zero fractions of other activations at several thresholds.

    Args:
        model: any ``nn.Module``; run in eval mode under ``torch.no_grad()``, each module's training
            flag restored afterwards (also on error or Ctrl-C).
        data: a DataLoader or any iterable of batches (:mod:`pozfast.batches`): tensors, ``(inputs,
            targets)`` tuples/lists, namedtuples, dicts or Hugging Face ``BatchEncoding`` (keyword arguments,
            so an ``attention_mask`` reaches the model).
        device: where inputs are moved (default: the device of the model's first parameter).
        layers: report only these keys, modules (every call site inside) or Conv/Linear layers (the sites
            their output reaches); default: all. A name that matches nothing is an error after the first batch.
        max_batches: stop after this many batches.
        progress: show a tqdm bar (examples/s).
        inputs: ``batch -> model input``; a tuple is passed as positional args, a dict as kwargs.
        channel_dims: channel axis per key or module name (see the module docstring for the default).
        checkpoint: a file for the tracker's counts, written atomically every ``checkpoint_every`` batches
            and when interrupted (only completed batches count); if it exists, the run resumes after the
            batches it holds. It records the model's fingerprint and ``layers``/``channel_dims``; resuming
            with another model, other arguments or less data is an error.
        thresholds: 1 to 32 increasing taus >= 0; per channel, the elements with ``|a| <= tau`` are counted
            for each (``report[key].fraction(tau)``). ``(0.0,)``: exact zeros, APoZ.
        activations: the activation kinds counted (:mod:`pozfast.activation_kinds`): ``"gelu"``, ``["silu",
            "relu"]``, ``"all"``...; default ReLU only.
        token_mask: ``"auto"``: a dict or BatchEncoding batch with an ``attention_mask`` counts only its
            nonzero positions (padding is left out); None: every position; a function ``batch -> (N, L) mask
            or None``. The mask applies to activations (N, L, ...) and (N*L, ...) (:mod:`pozfast.token_masks`).
    Returns:
        An :class:`APoZReport`, summed over ranks when ``torch.distributed`` is initialised (a rank
        without batches gets the same report as the others).
    """
    device = run_device(model, device)
    data = batch_iterable(data, "data")
    max_batches = optional_positive_int(max_batches, "max_batches")
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise ValueError(f"checkpoint {checkpoint} is a folder; give a file name (it is created if missing)")
    token_mask = option(token_mask)
    tracker = track_apoz(model, layers=layers, channel_dims=channel_dims, thresholds=thresholds,
                         activations=activations, token_mask=None)  # the mask comes from each batch
    arguments = {"layers": tracker.layers, "channel_dims": tracker.channel_dims,
                 "thresholds": list(tracker.thresholds), "activations": sorted(tracker.kinds),
                 "token_mask": token_mask if token_mask is None or isinstance(token_mask, str) else "function"}
    done = 0
    if checkpoint is not None and Path(checkpoint).exists():
        done = _resume(tracker, checkpoint, arguments)
        if max_batches is not None and done > max_batches:
            raise ValueError(f"checkpoint {checkpoint} holds {done} batches, more than max_batches={max_batches}; "
                             "delete it or raise max_batches")
    distributed = initialized()
    bar = _progress_bar(data, max_batches, progress)
    seen = 0
    try:
        with kept_modes(model, False), torch.no_grad(), tracker:
            for index, batch in enumerate(data):
                if max_batches is not None and index >= max_batches:
                    break
                seen += 1
                if index < done:
                    continue  # counted before the interruption
                args, kwargs = call_args(model, batch, inputs)
                args, kwargs = to_device(args, device), to_device(kwargs, device)
                mask = from_batch(batch, token_mask)
                tracker.set_token_mask(None if mask is None else to_device(mask, device))
                run_model(model, args, kwargs, f"batch {index} of data")
                if index == done and not distributed:  # ranks check together, after the reduction
                    _check_first_batch(tracker)
                bar.update(batch_size((args, kwargs)))
                if checkpoint is not None and (index + 1) % checkpoint_every == 0:
                    _save_state(tracker, checkpoint, arguments)
    except BaseException:
        tracker._abort()  # a forward cut short counts nothing
        if checkpoint is not None and tracker.batches > done:
            _save_state(tracker, checkpoint, arguments)
        raise
    finally:
        bar.close()
    if seen < done:
        raise ValueError(f"data yielded {seen} batches, but checkpoint {checkpoint} holds {done}: it was made with "
                         "other data; delete it to measure again")
    if seen == 0 and not distributed:
        raise ValueError("data yielded no batches: nothing to measure")
    if checkpoint is not None:
        _save_state(tracker, checkpoint, arguments)
    return tracker.report()


def _check_first_batch(tracker: APoZTracker) -> None:
    if not tracker._sites:
        raise ValueError(f"{tracker.nothing_counted()}: nothing to count")
    tracker._selected(tracker._sites)  # unknown names in layers or channel_dims fail now, not at the end


def _resume(tracker: APoZTracker, path: str | os.PathLike, arguments: dict) -> int:
    """Load the counts of an interrupted run into ``tracker``; returns the batches they hold."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to start "
                         "again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pozfast APoZ checkpoint; delete it or choose another file")
    if state["arguments"] != arguments:
        diff = {k: (state["arguments"].get(k), v) for k, v in arguments.items() if state["arguments"].get(k) != v}
        raise ValueError(f"checkpoint {path} was made with other arguments (saved, now): {diff}; delete it "
                         "to measure with these")
    tracker.load_state_dict(state["tracker"])
    return tracker.batches


def _save_state(tracker: APoZTracker, path: str | os.PathLike, arguments: dict) -> None:
    state = {"format": CHECKPOINT_FORMAT, "arguments": arguments, "tracker": tracker.state_dict()}
    atomic_write(path, lambda f: torch.save(state, f))


def _progress_bar(data: Iterable, max_batches: int | None, enabled: bool):
    from tqdm.auto import tqdm

    total = None
    dataset = getattr(data, "dataset", None)
    if dataset is not None and max_batches is None:
        with contextlib.suppress(TypeError):
            total = len(dataset)
    return tqdm(total=total, unit="ex", unit_scale=True, desc="APoZ", disable=not enabled)
