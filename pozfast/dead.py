"""Exact removal of dead channels: those whose ReLU output is zero on every measured example.

A dead channel is not always silent downstream. Where a BatchNorm follows the ReLU (conv, ReLU, BN, pool)
it still emits the constant ``beta - gamma * mean / sqrt(var + eps)``, and the next layers' biases see
it. :func:`remove_dead` measures what each consumer (the Conv/Linear whose input channels go with the
removed ones) receives on those channels over ``example_inputs`` and, where that is a constant ``k``,
folds ``W[:, c] * k`` into the consumer's bias (adding a bias where it had none). The fold is exact
except where zero padding lies between the constant and a convolution (border positions see zeros,
not ``k``) or the channel is not constant (it mixed with live channels on the way); those consumers are
reported with the error of the fold on ``example_inputs``, or refused with ``exact=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from pozfast.batches import Inputs, call_model
from pozfast.modules import kept_modes, unwrap
from pozfast.report import APoZReport
from pozfast.surgery import (PRUNABLE, pruning_fn, count_params, coupled_groups, dependency_graph, out_channels,
                             remove_channels, transaction)
from pozfast.validate import instance, names

# A fold is exact when its error, computed in float64, is below this fraction of the consumer's output scale.
_FOLD_TOL = 1e-9
# With exact=True, outputs may move by rounding only (the folded biases are summed in another order).
_EXACT_OUTPUT_TOL = 1e-5


def _tf32_hint(outputs: list[Tensor]) -> str:
    """Why float32 outputs on a GPU may move by more than rounding: TF32 convolutions or matmuls."""
    if not any(o.is_cuda and o.dtype == torch.float32 for o in outputs):
        return ""
    return (". On a GPU, float32 convolutions run in TF32 unless it is switched off (torch.backends.cudnn."
            "allow_tf32, on by default), with about 1e-3 relative error: switch it off for the check, or pass "
            "exact=False")


@dataclasses.dataclass
class DeadRemoval:
    """What :func:`remove_dead` did.

    removed: ``{layer: channel indices}`` per coupled group (named by its first layer; the surgery took
        the channel from the whole group).
    folded: ``{consumer: channels}`` whose constant output was folded into the consumer's bias.
    approximated: ``{consumer: {"max_abs": ..., "relative": ...}}``: folds that are not exact, with their
        largest error on ``example_inputs`` (absolute, and relative to the consumer's largest output).
    max_abs_change, max_rel_change: the largest change of the model's outputs on ``example_inputs``.
    """

    removed: dict[str, list[int]]
    params_before: int
    params_after: int
    folded: dict[str, int]
    approximated: dict[str, dict[str, float]]
    max_abs_change: float
    max_rel_change: float

    @property
    def channels(self) -> int:
        return sum(len(v) for v in self.removed.values())

    @property
    def compression(self) -> float:
        return self.params_before / self.params_after

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "channels": self.channels, "compression": self.compression}

    def summary(self) -> str:
        lines = [f"removed {self.channels} dead channels: " +
                 (", ".join(f"{k} {len(v)}" for k, v in self.removed.items()) or "none"),
                 f"parameters {self.params_before} -> {self.params_after} ({self.compression:.3f}x)",
                 f"largest output change on the examples: {self.max_abs_change:.3g} "
                 f"(relative {self.max_rel_change:.3g})"]
        if self.folded:
            lines.append("constants folded into biases of: " + ", ".join(f"{k} ({v})" for k, v in self.folded.items()))
        for k, v in self.approximated.items():
            lines.append(f"approximated: {k}, fold error {v['max_abs']:.3g} (relative {v['relative']:.3g})")
        return "\n".join(lines)


def dead_channels(report: APoZReport) -> dict[str, set[int]]:
    """``{report key: channels whose APoZ is exactly 100 %}`` for the sites that counted something."""
    return {e.key: set((e.zeros == e.total).nonzero().flatten().tolist()) for e in report if e.total > 0}


def _plan(model: nn.Module, report: APoZReport, example: Any, layers: Sequence[str] | None,
          inputs: Inputs | None) -> dict[str, list[int]]:
    """Dead channels per coupled group: dead at every ReLU site that any member of the group reaches."""
    modules = dict(model.named_modules())
    foreign = sorted({p for e in report for p in e.producers} - modules.keys())
    if foreign:
        raise ValueError(f"the report names layers {foreign[:5]} that this {type(model).__name__} does not have: "
                         "it was measured on another model; measure it on this one")
    producers = list(dict.fromkeys(p for e in report for p in e.producers if isinstance(modules.get(p), PRUNABLE)))
    if layers is not None:
        unknown = [n for n in names(layers, "layers") if n not in producers]
        if unknown:
            raise KeyError(f"layers {unknown} reach no ReLU site of the report; layers that do: {producers}")
    dead = dead_channels(report)
    plan = {}
    for group in coupled_groups(model, producers, example, inputs=inputs):
        if layers is not None and not set(group) & set(layers):
            continue
        sites = [e for e in report if set(e.producers) & set(group)]
        width = out_channels(modules[group[0]])
        stale = next((e for e in sites if e.channels != width), None)
        if stale is not None:  # its channel indices would name other channels of the layer
            raise ValueError(f"report[{stale.key!r}] has {stale.channels} channels but {group[0]!r} has {width} "
                             "outputs: the report was measured on another model or before the model changed; "
                             "measure it again")
        if any(e.key not in dead for e in sites):
            continue
        common = set.intersection(*(dead[e.key] for e in sites))
        if len(common) >= width:  # keep one channel: a layer cannot be emptied
            common -= {min(common)}
        if common:
            plan[group[0]] = sorted(common)
    return plan


def _consumers(model: nn.Module, plan: dict[str, list[int]], example: Any,
               inputs: Inputs | None) -> dict[nn.Module, list[int]]:
    """``{Conv/Linear: input channels}`` that the plan's surgery removes from layers that stay."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    graph = dependency_graph(model, example, inputs)
    found: dict[nn.Module, set[int]] = {}
    for name, idx in plan.items():
        for dep, ids in graph.get_pruning_group(modules[name], pruning_fn(modules[name]), idxs=idx):
            if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                found.setdefault(dep.target.module, set()).update(int(i) for i in ids)
    return {m: sorted(v) for m, v in found.items()}


def _fold(module: nn.Module, x: Tensor, idx: list[int]) -> tuple[Tensor, float, float]:
    """The bias change that replaces input channels ``idx`` of ``module`` by their mean over ``x``, the
    largest error of that replacement on ``x`` (float64) and the module's largest output there."""
    w = module.weight.detach().double()
    x = x.detach().double()
    if isinstance(module, nn.Linear):
        part = x[..., idx]
        k = part.reshape(-1, len(idx)).mean(0)
        delta = w[:, idx] @ k
        true, out = part @ w[:, idx].T, x @ w.T
    else:
        part, weight = x[:, idx], w[:, idx]
        k = part.transpose(0, 1).reshape(len(idx), -1).mean(1)
        delta = (weight * k.reshape(-1, *[1] * (weight.dim() - 2))).sum(tuple(range(1, weight.dim())))
        true, out = module._conv_forward(part, weight, None), module._conv_forward(x, w, None)
        true = true.movedim(1, -1)  # channels last, so that delta broadcasts as for a Linear
    return delta, float((true - delta).abs().max()), float(out.abs().max())


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1
                                             and not module.transposed)


def _outputs(model: nn.Module, example: Any, inputs: Inputs | None, capture: dict | None = None) -> list[Tensor]:
    """The model's floating outputs on ``example`` (eval mode, no grad); with ``capture``, also the inputs
    of the modules it names."""
    handles = [m.register_forward_hook(lambda mod, a, o: capture.__setitem__(mod, a[0])) for m in capture or {}]
    try:
        with kept_modes(model, False), torch.no_grad():
            out = call_model(model, example, inputs, where="example_inputs")
    finally:
        for h in handles:
            h.remove()
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.is_floating_point()]


def remove_dead(model: nn.Module, report: APoZReport, example_inputs: Any, layers: Sequence[str] | None = None, *,
                exact: bool = False, inputs: Inputs | None = None) -> DeadRemoval:
    """Remove every channel whose APoZ is exactly 100 % in ``report``, keeping the outputs unchanged.

    Args:
        model: the network, changed in place (a wrapped model's inner module); left as it was on error.
        report: APoZ measured on the data the removal must be exact for (its sites know their producers).
        example_inputs: a batch (:mod:`pozfast.batches`) for tracing, for measuring what consumers receive
            on the removed channels, and for checking the outputs before and after.
        layers: Conv/Linear names to take dead channels from (default: every layer whose output reaches a
            counted ReLU). Coupled layers (residual adds) lose a channel only when it is dead at every
            ReLU that the group reaches.
        exact: refuse (ValueError, model unchanged) when a fold would not be exact (see the module
            docstring) instead of reporting it.
    Returns:
        A :class:`DeadRemoval`: channels removed, parameters before and after, folds, approximations
        and the largest change of the outputs on ``example_inputs``.
    """
    instance(report, APoZReport, "report", "a pozfast.APoZReport")
    model = unwrap(model)
    params_before = count_params(model)
    plan = _plan(model, report, example_inputs, layers, inputs)
    if not plan:
        return DeadRemoval({}, params_before, params_before, {}, {}, 0.0, 0.0)
    consumers = _consumers(model, plan, example_inputs, inputs)
    names_of = {m: n for n, m in model.named_modules()}
    seen: dict[nn.Module, Tensor] = {m: None for m in consumers}
    before = _outputs(model, example_inputs, inputs, seen)
    folds, approximated = {}, {}
    for m, idx in consumers.items():
        if _foldable(m):
            delta, err, scale = _fold(m, seen[m], idx)
            if bool(delta.abs().max() > 0):
                folds[m] = delta
        else:  # grouped or transposed convolutions: the channels are dropped as they are
            delta, err, scale = None, float(seen[m][:, idx].abs().max()), float(seen[m].abs().max())
        if err > _FOLD_TOL * max(scale, 1e-30):
            approximated[names_of[m]] = {"max_abs": err, "relative": err / max(scale, 1e-30)}
    if exact and approximated:
        raise ValueError(f"removing the dead channels cannot be exact for {sorted(approximated)} (zero padding "
                         f"between a constant and a convolution, or channels that are not constant): "
                         f"{approximated}; pass exact=False to accept, or layers= to leave them out")
    with transaction(model):
        with torch.no_grad():
            for m, delta in folds.items():
                if m.bias is None:
                    m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device),
                                          requires_grad=m.weight.requires_grad)
                m.bias += delta.to(m.bias.dtype)
        remove_channels(model, plan, example_inputs, inputs=inputs)
        after = _outputs(model, example_inputs, inputs)
        max_abs = max((float((a - b).abs().max()) for a, b in zip(after, before) if a.numel()), default=0.0)
        scale = max((float(b.abs().max()) for b in before if b.numel()), default=0.0)
        max_rel = max_abs / scale if scale else 0.0
        if exact and max_rel > _EXACT_OUTPUT_TOL:
            raise ValueError(f"removing the dead channels changed the outputs on example_inputs by {max_abs:.3g} "
                             f"(relative {max_rel:.3g}); the model is left as it was{_tf32_hint(before)}")
    return DeadRemoval(plan, params_before, count_params(model), {names_of[m]: len(consumers[m]) for m in folds},
                       approximated, max_abs, max_rel)
