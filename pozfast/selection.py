"""Which channels a trimming round removes: selection rules, and layer names resolved to APoZ sites."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pozfast.batches import Inputs
from pozfast.report import APoZReport
from pozfast.validate import instance, integer, names, real

_KINDS = ("threshold", "ratio", "std")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Which channels a trimming round removes, from each layer's APoZ.

    kind: ``"threshold"`` (APoZ > amount, 0 <= amount <= 1), ``"ratio"`` (the ``amount`` fraction with the
    highest APoZ per layer, 0 <= amount < 1) or ``"std"`` (APoZ > mean + amount * std of the layer, as
    keras-surgeon does; any finite amount).
    min_keep: channels always kept per layer: an int is a count (at least 1 is always kept), a float in
    [0, 1] a fraction of the layer's current width (``1.0`` keeps every channel). When the rule picks
    more, the highest-APoZ channels go first.
    """

    kind: str = "threshold"
    amount: float = 0.9
    min_keep: float = 0.1

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"rule kind must be 'threshold', 'ratio' or 'std', got {self.kind!r}")
        bounds = {"threshold": dict(low=0.0, high=1.0), "ratio": dict(low=0.0, high=1.0, high_open=True),
                  "std": {}}[self.kind]
        object.__setattr__(self, "amount", real(self.amount, f"a {self.kind} rule's amount", **bounds))
        if isinstance(self.min_keep, numbers.Integral) and not isinstance(self.min_keep, bool):
            object.__setattr__(self, "min_keep", integer(self.min_keep, "min_keep", minimum=0))
        else:
            object.__setattr__(self, "min_keep", real(self.min_keep, "min_keep (a fraction when a float)",
                                                      low=0.0, high=1.0))

    def keep(self, channels: int) -> int:
        """Channels kept at least in a layer of this width."""
        if isinstance(self.min_keep, int):
            return min(channels, max(1, self.min_keep))
        return max(1, round(self.min_keep * channels))

    def select(self, apoz_values: Tensor) -> list[int]:
        """Indices to remove from one layer, given its per-channel APoZ (float64 [C])."""
        a = apoz_values.double()
        c = a.numel()
        if self.kind == "threshold":
            chosen = (a > self.amount).nonzero().flatten()
        elif self.kind == "ratio":
            chosen = torch.argsort(a, descending=True, stable=True)[:int(self.amount * c)]
        else:
            chosen = (a > a.mean() + self.amount * a.std(unbiased=False)).nonzero().flatten()
        budget = max(0, c - self.keep(c))
        if chosen.numel() > budget:
            chosen = chosen[torch.argsort(a[chosen], descending=True, stable=True)[:budget]]
        return sorted(chosen.tolist())


def resolve_layers(report: APoZReport, layers: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``{layer: report key}``: each Conv/Linear name resolved to the ReLU site its output reaches
    (``report[key].producers``), for reused ``nn.ReLU`` modules and functional ReLUs alike.

    A mapping is taken as given (its keys checked against the report). A name that reaches no site, or
    several, is an error listing the candidates.
    """
    instance(report, APoZReport, "report", "a pozfast.APoZReport")
    if isinstance(layers, Mapping):
        for layer, key in layers.items():
            report[key]  # noqa: B018 (raises a KeyError listing the report's keys)
        return dict(layers)
    resolved = {}
    for name in names(layers, "layers"):
        sites = [e.key for e in report if name in e.producers]
        if not sites:
            producers = sorted({p for e in report for p in e.producers})
            raise KeyError(f"layer {name!r}: its output reaches no counted ReLU (through BatchNorm, Dropout, pooling, "
                           f"reshapes or residual adds); layers that do: {producers}. Pass layers as "
                           "{layer: APoZ report key} for other wiring")
        if len(sites) > 1:
            raise ValueError(f"layer {name!r} feeds several ReLU sites {sites}; pass layers as {{{name!r}: key}} "
                             "to choose one")
        resolved[name] = sites[0]
    return resolved


def relu_keys(model: nn.Module, layers: Sequence[str], example_inputs: Any, *,
              inputs: Inputs | None = None) -> dict[str, str]:
    """For each Conv/Linear in ``layers``, the key of the ReLU site its output reaches, found by one
    tracked forward of ``example_inputs`` (a batch, :mod:`pozfast.batches`)."""
    from pozfast.apoz import apoz

    return resolve_layers(apoz(model, [example_inputs], progress=False, inputs=inputs), layers)


def select_channels(report: APoZReport, layers: Sequence[str] | Mapping[str, str], rule: Rule,
                    groups: Sequence[Sequence[str]] | None = None) -> dict[str, list[int]]:
    """The plan ``{layer: indices}`` that ``rule`` picks from the APoZ of each layer's ReLU.

    ``layers``: Conv/Linear names (resolved with :func:`resolve_layers`) or ``{layer: report key}``.
    Coupled layers (``groups``, from :func:`pozfast.prune.coupled_groups`; layers that share one report
    key are always coupled) are pooled: a channel's APoZ is the mean of its APoZ over the group's distinct
    activations, the rule picks from that, and the plan names the group's first layer (the surgery
    removes the channel from all of them).
    """
    instance(rule, Rule, "rule", "a pozfast.prune.Rule")
    layers = resolve_layers(report, layers)
    groups = [names(g, f"groups[{i}]") for i, g in enumerate(groups)] if groups is not None else [[n] for n in layers]
    unknown = [n for g in groups for n in g if n not in layers]
    if unknown:
        raise KeyError(f"groups name {unknown[0]!r}, which is not in layers {list(layers)}")
    by_key: dict[str, list[str]] = {}
    for layer, key in layers.items():
        by_key.setdefault(key, []).append(layer)
    merged: list[list[str]] = []
    for group in groups:
        members = [n for layer in group for n in by_key[layers[layer]]]
        home = next((g for g in merged if set(g) & set(members)), None)
        if home is None:
            merged.append(list(dict.fromkeys(members)))
        else:
            home.extend(n for n in members if n not in home)
    plan = {}
    for group in merged:
        keys = list(dict.fromkeys(layers[n] for n in group))
        pooled = torch.stack([report[k].apoz for k in keys]).mean(0)
        plan[group[0]] = rule.select(pooled)
    return plan
