"""Structural removal of output channels, with Torch-Pruning's DependencyGraph.

Removing output channels of a Conv or Linear also removes everything coupled to them (bias, BatchNorm
entries, the consumers' input channels, the H*W inputs per channel of a Linear after a flatten,
residual-add and concat partners). After surgery the parameters are new tensors: rebuild any optimizer.
Frozen parameters stay frozen, a channels_last model stays channels_last, and every module's train/eval
flag is as it was. Changes are transactional: when a step fails, the model is put back as it was.

Parameter counts follow the paper: every parameter of the whole network, biases and BatchNorm affine
parameters included (buffers such as running statistics are not parameters).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pozfast.batches import Inputs, call_model
from pozfast.modules import kept_modes, unwrap
from pozfast.validate import integer, names

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def count_params(model: nn.Module) -> int:
    """All parameters of the model (weights, biases, norm affine parameters), as the paper counts them."""
    return sum(p.numel() for p in model.parameters())


def compression_rate(params_before: int, params_after: int) -> float:
    """The paper's compression rate: whole-network parameters before / after trimming."""
    if params_after <= 0:
        raise ValueError(f"params_after must be positive, got {params_after}")
    return params_before / params_after


def out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def pruning_fn(m: nn.Module):
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(m, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels


def check_plan(model: nn.Module, plan: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """The plan with sorted unique indices and empty entries dropped; names, types and ranges checked."""
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan must be a dict {{layer name: channel indices}}, got {type(plan).__name__}")
    modules = dict(unwrap(model).named_modules())
    clean = {}
    for name, idxs in plan.items():
        if name not in modules:
            raise KeyError(f"plan names {name!r}, which is not a module of the model")
        m = modules[name]
        if not isinstance(m, PRUNABLE):
            raise TypeError(f"plan names {name!r}, a {type(m).__name__}; only Conv and Linear output channels "
                            f"can be removed")
        width = out_channels(m)
        if isinstance(idxs, (torch.Tensor, np.ndarray)):
            idxs = idxs.tolist()
        if isinstance(idxs, (str, bytes)) or not isinstance(idxs, Iterable):
            raise TypeError(f"plan[{name!r}] must be a list of channel indices, got {idxs!r}")
        idx = sorted({integer(i, f"plan[{name!r}] indices") for i in idxs})
        if any(i < 0 or i >= width for i in idx):
            raise IndexError(f"plan for {name!r} has indices outside [0, {width}): {[i for i in idx if not 0 <= i < width]}")
        if len(idx) >= width:
            raise ValueError(f"plan would remove all {width} channels of {name!r}; keep at least one")
        if idx:
            clean[name] = idx
    return clean


def dependency_graph(model: nn.Module, example_inputs: Any, inputs: Inputs | None = None):
    """Torch-Pruning's DependencyGraph of ``model``, traced with one batch (:mod:`pozfast.batches`).

    Tracing runs in eval mode (running statistics are not updated) with autograd enabled; the flags are
    restored afterwards.
    """
    import torch_pruning as tp

    hooks = {m: set(m._forward_hooks) for m in model.modules()}
    try:
        with kept_modes(model), torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, verbose=False,
                forward_fn=lambda m, batch: call_model(m, batch, inputs, where="example_inputs"))
    except BaseException:  # Torch-Pruning leaves its tracing hooks on the modules when the forward fails
        for m, before in hooks.items():
            for k in set(m._forward_hooks) - before:
                del m._forward_hooks[k]
        raise


def _restore(model: nn.Module, backup: nn.Module) -> None:
    """Put every module's parameters, buffers and attributes back from ``backup`` (same module tree)."""
    for m, b in zip(model.modules(), backup.modules()):
        children = m._modules
        m.__dict__.update(b.__dict__)
        m._modules = children


@contextlib.contextmanager
def transaction(model: nn.Module) -> Iterator[None]:
    """On any error inside, the model is put back as it was before (a deep copy is held meanwhile)."""
    backup = copy.deepcopy(model)
    try:
        yield
    except BaseException:
        _restore(model, backup)
        raise


def remove_channels(model: nn.Module, plan: Mapping[str, Sequence[int]], example_inputs: Any, *,
                    inputs: Inputs | None = None) -> dict[str, Any]:
    """Remove output channels structurally, in place, with everything coupled to them.

    Args:
        model: the network (a wrapped model's inner module is changed); modified in place, or left as it
            was when the plan is refused or the surgery fails.
        plan: ``{qualified Conv/Linear name: output channel indices to remove}``. Name one layer per coupled
            group (a residual add couples its branches): the group's other layers follow it.
        example_inputs: a batch for tracing the dependency graph (:mod:`pozfast.batches`: a tensor, an
            ``(inputs, targets)`` tuple, a dict of keyword arguments...); ``inputs`` as elsewhere.
    Returns:
        ``{"removed": {layer: indices}, "coupled": {layer: [(module, what, count), ...]}}``.
    """
    model = unwrap(model)
    plan = check_plan(model, plan)
    modules = dict(model.named_modules())
    name_of = {m: n for n, m in modules.items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    channels_last = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                        and not p.is_contiguous() for p in model.parameters())
    graph = dependency_graph(model, example_inputs, inputs)
    coupled = {}
    with transaction(model):
        for name, idx in plan.items():
            group = graph.get_pruning_group(modules[name], pruning_fn(modules[name]), idxs=idx)
            if not graph.check_pruning_group(group):
                raise ValueError(f"removing {len(idx)} channels of {name!r} would empty a coupled layer")
            coupled[name] = [(name_of.get(dep.target.module, str(dep.target.module)), dep.handler.__name__, len(i))
                             for dep, i in group]
            group.prune()
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    return {"removed": plan, "coupled": coupled}


def coupled_groups(model: nn.Module, layers: Sequence[str], example_inputs: Any, *,
                   inputs: Inputs | None = None) -> list[list[str]]:
    """``layers`` partitioned into groups whose output channels Torch-Pruning removes together (e.g. the
    convolutions whose outputs meet in residual adds), in the order given."""
    import torch_pruning as tp

    model = unwrap(model)
    layers = names(layers, "layers")
    check_plan(model, {n: [] for n in layers})
    modules = dict(model.named_modules())
    name_of = {m: n for n, m in modules.items()}
    graph = dependency_graph(model, example_inputs, inputs)
    groups: list[list[str]] = []
    placed: set[str] = set()
    for layer in layers:
        if layer in placed:
            continue
        group = graph.get_pruning_group(modules[layer], pruning_fn(modules[layer]), idxs=[0])
        partners = {name_of.get(dep.target.module) for dep, _ in group
                    if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)}
        members = [n for n in layers if n == layer or (n in partners and n not in placed)]
        placed.update(members)
        groups.append(members)
    return groups
