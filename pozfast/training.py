"""Fine-tuning and evaluation of a classifier, with batches called one way (:mod:`pozfast.batches`) and,
under ``torch.distributed``, counts summed over ranks and a ``DistributedSampler``'s epoch set each epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from pozfast.batches import IGNORE_INDEX, Inputs, batch_targets, call_model, default_loss, output_logits, to_device
from pozfast.distributed import all_reduce_sum
from pozfast.modules import kept_modes, run_device
from pozfast.validate import batch_iterable, instance, integer, optional_function

Targets = Callable[[Any], Tensor]
LossFn = Callable[[Any, Any], Tensor]


def evaluate(model: nn.Module, data: Iterable, device: str | torch.device | None = None, *,
             inputs: Inputs | None = None, targets: Targets | None = None) -> tuple[float, float | None]:
    """(top-1, top-5) accuracy of the logits ``[..., C]`` (a tensor output, Hugging Face ``.logits``)
    against class-index targets ``[...]`` (``-100`` ignored), in eval mode; top-5 is None under 5
    classes. Batches and targets: :mod:`pozfast.batches`. Under ``torch.distributed`` the counts are
    summed over ranks (every rank must call this; a rank may have no batches): every rank gets the
    accuracy over the union of their data."""
    device = run_device(model, device)
    data = batch_iterable(data, "data")
    correct1 = correct5 = total = 0
    classes = 0
    with kept_modes(model, False), torch.no_grad():
        for index, batch in enumerate(data):
            logits = output_logits(call_model(model, batch, inputs, device, f"batch {index} of data"))
            y = torch.as_tensor(batch_targets(batch, targets)).to(logits.device).reshape(-1)
            logits = logits.reshape(-1, logits.shape[-1])
            if logits.shape[0] != y.numel():
                raise ValueError(f"the model gave {logits.shape[0]} predictions for {y.numel()} targets; pass "
                                 "targets= that returns one class index per prediction")
            classes = logits.shape[1]
            _check_targets(y, classes)
            kept = y != IGNORE_INDEX
            logits, y = logits[kept], y[kept]
            top = logits.topk(min(5, classes), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(1).sum().item()
            total += y.numel()
    counts = torch.tensor([correct1, correct5, total, classes >= 5], dtype=torch.int64)
    correct1, correct5, total, top5 = all_reduce_sum(counts).tolist()  # top5: ranks that saw >= 5 classes
    if total == 0:
        raise ValueError("evaluation data yielded no batches (or only ignored targets)")
    return correct1 / total, (correct5 / total if top5 else None)


def _check_targets(y: Tensor, classes: int) -> None:
    """Targets that are no class index would silently count as wrong predictions."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got {y.dtype}; convert them with .long() or pass "
                        "targets=lambda batch: ... that returns them")
    bad = y[(y != IGNORE_INDEX) & ((y < 0) | (y >= classes))]
    if bad.numel():
        raise ValueError(f"targets must be class indices in [0, {classes}) (or {IGNORE_INDEX}, ignored) for a model "
                         f"with {classes} logits per prediction, got {bad[0].item()}")


def fine_tune(model: nn.Module, data: Iterable, epochs: int, optimizer: torch.optim.Optimizer,
              device: str | torch.device | None = None, *, loss_fn: LossFn | None = None,
              inputs: Inputs | None = None, targets: Targets | None = None, progress: bool = True,
              first_epoch: int = 0) -> None:
    """``epochs`` passes over ``data`` in train mode (flags restored after).

    A DataLoader's sampler with ``set_epoch`` (``DistributedSampler``) is told each epoch's number,
    counted from ``first_epoch``, so that every epoch draws a new order that all ranks share.

    ``loss_fn(output, batch)``, the batch's tensors on ``device``; default: the output's ``.loss`` (Hugging
    Face models given labels), else cross-entropy of the logits against the batch's targets
    (:func:`pozfast.batches.default_loss`).
    """
    from tqdm.auto import tqdm

    epochs = integer(epochs, "epochs", minimum=0)
    instance(optimizer, torch.optim.Optimizer, "optimizer", "a torch.optim.Optimizer")
    data = batch_iterable(data, "data", reusable=epochs > 1)
    optional_function(loss_fn, "loss_fn", "(output, batch) -> scalar loss tensor")
    device = run_device(model, device)
    with kept_modes(model, True):
        for epoch in range(epochs):
            sampler = getattr(data, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(first_epoch + epoch)
            seen = 0
            for batch in tqdm(data, desc=f"fine-tune epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
                optimizer.zero_grad(set_to_none=True)
                batch = to_device(batch, device)  # once, for the model and for loss_fn
                output = call_model(model, batch, inputs, device, f"batch {seen} of data")
                if loss_fn is None:
                    loss = default_loss(output, batch, targets)
                else:
                    loss = loss_fn(output, batch)
                    if not isinstance(loss, Tensor) or loss.numel() != 1:
                        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} {loss!r:.80}")
                loss.backward()
                optimizer.step()
                seen += 1
            if not seen:
                raise ValueError("data yielded no batches: nothing to fine-tune on")
