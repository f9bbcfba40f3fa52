"""The trimming driver (Hu et al. 2016): measure APoZ, remove high-APoZ channels, fine-tune, repeat."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from pozfast import tables
from pozfast._io import atomic_write, atomic_write_text, json_text
from pozfast.apoz import apoz
from pozfast.batches import Inputs, call_args, to_device
from pozfast.distributed import agree, broadcast, gather, initialized, is_main, sync
from pozfast.modules import fingerprint, kept_modes, model_device, run_device, unwrap
from pozfast.selection import Rule, relu_keys, resolve_layers, select_channels
from pozfast.training import LossFn, Targets, evaluate, fine_tune
from pozfast.surgery import check_plan, compression_rate, count_params, coupled_groups, out_channels, remove_channels
from pozfast.validate import (batch_iterable, folder_path, instance, integer, names, optional_function,
                              optional_positive_int, real)

STATE_FORMAT = "pozfast-trim-state"


@dataclasses.dataclass
class TrimResult:
    """One row per round, like the paper's Table 4 (round 0 is the untrimmed model); ``removed`` holds
    the round's plan, ``{layer: channel indices}`` in the layer's numbering before that round.

    ``dead``: the summary of :func:`pozfast.prune.remove_dead` when dead channels were removed before
    the rounds. ``export_error``: why ``model.pt2`` could not be written, if it could not.
    """

    layers: list[str]
    rows: list[dict]
    model: nn.Module | None = None
    dead: dict | None = None
    export_error: str | None = None

    def table(self) -> str:
        widths = [f"width {n}" for n in self.layers]
        headers = ["round", *widths, "params", "compression", "top-1 before FT", "top-1 after FT"]
        has_top5 = any(r.get("top5_after") is not None for r in self.rows)
        if has_top5:
            headers += ["top-5 before FT", "top-5 after FT"]
        pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        lines = []
        for r in self.rows:
            cells = [str(r["round"]), *(str(r["widths"][n]) for n in self.layers), str(r["params"]),
                     f"{r['compression']:.2f}x", pct(r["top1_before"]), pct(r["top1_after"])]
            if has_top5:
                cells += [pct(r["top5_before"]), pct(r["top5_after"])]
            lines.append(cells)
        return tables.markdown(headers, lines)

    def to_json(self) -> dict:
        return {"layers": self.layers, "rows": self.rows, "dead": self.dead, "export_error": self.export_error}

    def save(self, folder: str | os.PathLike) -> None:
        """``trim.json`` and ``trim.csv`` in ``folder``, atomically."""
        folder = Path(folder)
        atomic_write_text(folder / "trim.json", json_text(self.to_json()))
        buf = io.StringIO()
        writer = csv.writer(buf)
        keys = ["round", *[f"width {n}" for n in self.layers], "params", "compression", "top1_before",
                "top1_after", "top5_before", "top5_after"]
        writer.writerow(keys)
        for r in self.rows:
            writer.writerow([r["round"], *(r["widths"][n] for n in self.layers), r["params"], r["compression"],
                             r["top1_before"], r["top1_after"], r["top5_before"], r["top5_after"]])
        atomic_write_text(folder / "trim.csv", buf.getvalue())


def _widths(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {n: out_channels(modules[n]) for n in layers}


def _batch_dynamic(args: tuple, kwargs: dict) -> tuple[tuple, dict] | dict:
    """``dynamic_shapes`` for torch.export with dim 0 of every tensor input as one symbolic batch size."""
    batch = torch.export.Dim("batch")
    spec = lambda t: {0: batch} if isinstance(t, Tensor) and t.dim() else None  # noqa: E731
    if not kwargs:
        return tuple(tree_map(spec, a) for a in args)
    return {k: tree_map(spec, v) for k, v in kwargs.items()}


def save_model(model: nn.Module, folder: str | os.PathLike, example_inputs: Any, *,
               inputs: Inputs | None = None) -> dict[str, Any]:
    """Save a (pruned) model two ways, atomically.

    ``model.pt``: the whole module (``torch.save(model)``); load with
    ``torch.load(path, weights_only=False)``: the classes must be importable, but their constructor
    arguments need not match the pruned shapes (a pruned state_dict would not load into the original
    class). ``model.pt2``: a ``torch.export`` program with a dynamic batch dimension;
    ``torch.export.load(path).module()`` runs it at any batch size with no class definition at all
    (inference only). ``example_inputs`` is a batch (:mod:`pozfast.batches`).

    Returns ``{"module": path, "exported": path or None, "export_error": None or why}``: when
    ``torch.export`` cannot export the model, ``model.pt`` is still written (and a stale ``model.pt2``
    removed).
    """
    model = unwrap(model)
    folder = folder_path(folder, "folder")
    paths: dict[str, Any] = {"module": atomic_write(folder / "model.pt", lambda f: torch.save(model, f)),
                             "exported": None, "export_error": None}
    args, kwargs = call_args(model, example_inputs, inputs)
    if kwargs and args:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
        args, kwargs = (), dict(bound.arguments)
    device = model_device(model)
    args, kwargs = to_device(args, device), to_device(kwargs, device)
    try:
        with kept_modes(model, False):
            program = torch.export.export(model, args, kwargs, dynamic_shapes=_batch_dynamic(args, kwargs))
        paths["exported"] = atomic_write(folder / "model.pt2", lambda f: torch.export.save(program, f))
    except Exception as exc:  # export is best effort: many models cannot be exported
        (folder / "model.pt2").unlink(missing_ok=True)
        paths["export_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return paths


def _empty(data: Iterable) -> bool:
    """Whether ``data`` has no batches; by its length where it has one, since a pass over a shuffling
    DataLoader would draw from its random generator and change the order of the next passes."""
    try:
        return len(data) == 0
    except TypeError:
        return next(iter(data), None) is None


def _arguments(layers, rule: Rule, fine_tune_epochs: int, seed: int, apoz_batches, dead: bool) -> dict:
    return {"layers": layers if isinstance(layers, list) else dict(layers), "rule": dataclasses.asdict(rule),
            "fine_tune_epochs": fine_tune_epochs, "seed": seed, "apoz_batches": apoz_batches, "remove_dead": dead}


def _load_state(path: Path, model_fp: str, arguments: dict, rounds: int, device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it to start again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a pozfast trimming checkpoint; choose another checkpoint_dir")
    if state["model"] != model_fp:
        raise ValueError(f"{path} was made from another model (fingerprint {state['model']}, this one "
                         f"{model_fp}); choose another checkpoint_dir")
    if state["arguments"] != arguments:
        diff = {k: (state["arguments"].get(k), v) for k, v in arguments.items() if state["arguments"].get(k) != v}
        raise ValueError(f"{path} was made with other arguments (saved, now): {diff}; choose another checkpoint_dir")
    done = len(state["rows"]) - 1
    if done > rounds:
        raise ValueError(f"{path} holds {done} finished rounds, more than rounds={rounds}; choose another "
                         "checkpoint_dir or ask for at least that many rounds")
    return state


def trim(model: nn.Module, train_data: Iterable, val_data: Iterable, *, layers: Sequence[str] | Mapping[str, str],
         rule: Rule = Rule(), rounds: int = 3, fine_tune_epochs: int = 1,
         optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
         checkpoint_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
         seed: int = 0, progress: bool = True, apoz_batches: int | None = None, inputs: Inputs | None = None,
         targets: Targets | None = None, loss_fn: LossFn | None = None, remove_dead: bool = False,
         sync_timeout: float = 600.0) -> TrimResult:
    """Iterative trimming: per round measure APoZ on ``val_data``, select by ``rule``, remove structurally,
    evaluate, fine-tune ``fine_tune_epochs`` on ``train_data`` with a fresh optimizer from
    ``optimizer_factory(params)`` (default SGD, lr 0.01, momentum 0.9), evaluate again.

    ``layers``: Conv/Linear names, each resolved to the ReLU site its output reaches (reused ``nn.ReLU``
    modules and functional ReLUs alike; :func:`pozfast.prune.resolve_layers`), or ``{layer: report key}``;
    coupled layers pool their APoZ (:func:`pozfast.prune.select_channels`). Batches, ``inputs``,
    ``targets`` and ``loss_fn(output, batch)``: :mod:`pozfast.batches` (Hugging Face outputs with
    ``.loss`` / ``.logits`` work without them). A wrapped model (``torch.compile``, DDP) is trimmed in
    its inner module, which the result holds. ``remove_dead`` first removes every channel of the model
    that is exactly 100 % zero on ``val_data`` (:func:`pozfast.prune.remove_dead`), before round 1.

    With ``checkpoint_dir``, each finished round is saved atomically (``state.pt``, with the model's
    fingerprint and the arguments) and a new call with the same model and arguments resumes after the
    last finished round, giving the same table (seeded per round); asking for more rounds continues the
    run; another model or other arguments are an error. The final model is saved there with
    :func:`save_model`.

    Under ``torch.distributed`` (launched by ``torchrun``; every rank calls ``trim`` with its own shard of
    the data, e.g. through a ``DistributedSampler``): the ranks check that they agree on the arguments and
    the model; APoZ and accuracy are summed over the ranks' shards; the plan is computed from the summed
    report and checked identical on every rank; surgery runs on the inner module of every rank, which is
    then wrapped anew in DistributedDataParallel (with the given wrapper's settings) for fine-tuning with a
    fresh optimizer, the sampler's epoch set each epoch. Rank 0 writes the checkpoints and the saved model;
    every rank resumes from them (a resume may use another world size). A rank that stops or lags is named
    by the others after ``sync_timeout`` seconds (gloo).
    """
    from pozfast.dead import remove_dead as remove_dead_channels

    rounds = integer(rounds, "rounds", minimum=1)
    fine_tune_epochs = integer(fine_tune_epochs, "fine_tune_epochs", minimum=0)
    seed = integer(seed, "seed")
    apoz_batches = optional_positive_int(apoz_batches, "apoz_batches")
    sync_timeout = real(sync_timeout, "sync_timeout", low=0.0, low_open=True)
    instance(rule, Rule, "rule", "a pozfast.prune.Rule")
    layer_names = list(layers) if isinstance(layers, Mapping) else names(layers, "layers")
    if not layer_names:
        raise ValueError("layers is empty: name the Conv/Linear layers to trim")
    train_data = batch_iterable(train_data, "train_data", reusable=True)  # every round goes over both again
    val_data = batch_iterable(val_data, "val_data", reusable=True)
    optional_function(loss_fn, "loss_fn", "(output, batch) -> scalar loss tensor")
    optional_function(optimizer_factory, "optimizer_factory", "parameters -> torch.optim.Optimizer")
    if checkpoint_dir is not None:
        folder_path(checkpoint_dir, "checkpoint_dir")
    wrapper = _ddp_settings(model)
    model = unwrap(model)
    device = run_device(model, device)
    factory = optimizer_factory or (lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9))
    arguments = _arguments(layers if isinstance(layers, Mapping) else layer_names, rule, fine_tune_epochs, seed,
                           apoz_batches, remove_dead)
    model_fp = fingerprint(model)
    # the rest is checked before round 1 changes the model: data, and what the factory makes
    example = next(iter(val_data), None)
    if initialized():
        sync("trim: the ranks' start", sync_timeout)  # a rank that failed a check above is named here
        agree((arguments, model_fp), "the trimming arguments (layers, rule, epochs, seed) or the model")
        empty = [r for r, has in enumerate(gather(example is not None)) if not has]
        if empty:
            raise ValueError(f"ranks {empty} have no validation batches; give every rank a shard of val_data")
        example = broadcast(example)  # tracing and dead-channel folds see the same batch on every rank
    if example is None:
        raise ValueError("val_data yielded no batches")
    if fine_tune_epochs and _empty(train_data):
        raise ValueError("train_data yielded no batches: nothing to fine-tune on (fine_tune_epochs=0 trims without)")
    made = factory([p for p in model.parameters() if p.requires_grad])
    if not isinstance(made, torch.optim.Optimizer):
        raise TypeError(f"optimizer_factory must return a torch.optim.Optimizer, got {type(made).__name__}")
    example = to_device(example, device)
    check_plan(model, {n: [] for n in layer_names})  # every layer exists and is prunable
    keys = dict(layers) if isinstance(layers, Mapping) else relu_keys(model, layer_names, example, inputs=inputs)
    ckpt = Path(checkpoint_dir) / "state.pt" if checkpoint_dir is not None else None
    measure = dict(device=device, progress=progress and is_main(), max_batches=apoz_batches, inputs=inputs)
    score = dict(inputs=inputs, targets=targets)

    def save_state():
        if ckpt is not None and is_main():
            state = {"format": STATE_FORMAT, "model": model_fp, "arguments": arguments, "trimmed": model,
                     "rows": rows, "dead": dead}
            atomic_write(ckpt, lambda f: torch.save(state, f))
        sync("trim: writing the checkpoint", sync_timeout)

    if ckpt is not None and ckpt.exists():
        state = _load_state(ckpt, model_fp, arguments, rounds, device)
        model, rows, dead = state["trimmed"], state["rows"], state["dead"]
    else:
        top1, top5 = evaluate(model, val_data, device, **score)
        rows = [dict(round=0, widths=_widths(model, layer_names), params=count_params(model), compression=1.0,
                     removed={}, top1_before=top1, top1_after=top1, top5_before=top5, top5_after=top5)]
        dead = None
        if remove_dead:
            summary = remove_dead_channels(model, apoz(model, val_data, **measure), example, inputs=inputs)
            top1_d, top5_d = evaluate(model, val_data, device, **score)
            dead = {**summary.to_json(), "top1": top1_d, "top5": top5_d}
        save_state()
    params0 = rows[0]["params"]
    for rnd in range(len(rows), rounds + 1):
        torch.manual_seed(seed + rnd)
        report = apoz(model, val_data, **measure)
        if not isinstance(layers, Mapping):
            keys = resolve_layers(report, layer_names)
        plan = select_channels(report, keys, rule, coupled_groups(model, layer_names, example, inputs=inputs))
        agree(plan, f"the channels to remove in round {rnd}")
        remove_channels(model, plan, example, inputs=inputs)
        top1_b, top5_b = evaluate(model, val_data, device, **score)
        trained = _rewrapped(model, wrapper, device)  # the old wrapper holds the parameters surgery replaced
        optimizer = factory([p for p in trained.parameters() if p.requires_grad])
        fine_tune(trained, train_data, fine_tune_epochs, optimizer, device, loss_fn=loss_fn,
                  progress=progress and is_main(), first_epoch=(rnd - 1) * fine_tune_epochs, **score)
        top1_a, top5_a = evaluate(model, val_data, device, **score)
        params = count_params(model)
        rows.append(dict(round=rnd, widths=_widths(model, layer_names), params=params,
                         compression=compression_rate(params0, params), removed=plan,
                         top1_before=top1_b, top1_after=top1_a, top5_before=top5_b, top5_after=top5_a))
        save_state()
    result = TrimResult(layer_names, rows, model, dead)
    if checkpoint_dir is not None:
        if is_main():
            result.export_error = save_model(model, checkpoint_dir, example, inputs=inputs)["export_error"]
            result.save(checkpoint_dir)
        result.export_error = broadcast(result.export_error)
    return result


def _ddp_settings(model: nn.Module) -> dict[str, Any] | None:
    """The settings of a DistributedDataParallel wrapper, to wrap the trimmed module again the same way."""
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return None
    if not initialized():
        raise RuntimeError("the model is wrapped in DistributedDataParallel but no torch.distributed process group "
                           "is initialised; launch with torchrun and call torch.distributed.init_process_group")
    return {"device_ids": model.device_ids, "output_device": model.output_device,
            "broadcast_buffers": model.broadcast_buffers, "find_unused_parameters": model.find_unused_parameters}


def _rewrapped(model: nn.Module, settings: dict[str, Any] | None, device: torch.device) -> nn.Module:
    """``model`` in a new DistributedDataParallel wrapper under a process group, else ``model`` itself."""
    if not initialized():
        return model
    if settings is None:
        settings = {"device_ids": [device.index if device.index is not None else torch.cuda.current_device()]
                    if device.type == "cuda" else None}
    return nn.parallel.DistributedDataParallel(model, **settings)
