"""Network trimming (Hu et al. 2016): remove high-APoZ channels structurally, fine-tune, repeat.

Surgery is Torch-Pruning's DependencyGraph: removing output channels of a Conv or Linear also removes
everything coupled to them (bias, BatchNorm entries, the consumers' input channels, the H*W inputs per
channel of a Linear after a flatten, residual-add and concat partners). After surgery the parameters are
new tensors: rebuild any optimizer (:func:`trim` does). Frozen parameters stay frozen and a
channels_last model stays channels_last.

Parameter counts follow the paper: every parameter of the whole network, biases and BatchNorm affine
parameters included (buffers such as running statistics are not parameters).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pozfast._io import atomic_write, atomic_write_text, json_text
from pozfast.apoz import _to, apoz, default_inputs, model_device
from pozfast.report import APoZReport

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def count_params(model: nn.Module) -> int:
    """All parameters of the model (weights, biases, norm affine parameters), as the paper counts them."""
    return sum(p.numel() for p in model.parameters())


def compression_rate(params_before: int, params_after: int) -> float:
    """The paper's compression rate: whole-network parameters before / after trimming."""
    if params_after <= 0:
        raise ValueError(f"params_after must be positive, got {params_after}")
    return params_before / params_after


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def _pruning_fn(m: nn.Module):
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(m, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels


def _check_plan(model: nn.Module, plan: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    modules = dict(model.named_modules())
    clean = {}
    for name, idxs in plan.items():
        if name not in modules:
            raise KeyError(f"plan names {name!r}, which is not a module of the model")
        m = modules[name]
        if not isinstance(m, _PRUNABLE):
            raise TypeError(f"plan names {name!r}, a {type(m).__name__}; only Conv and Linear output channels "
                            f"can be removed")
        width = _out_channels(m)
        idx = sorted({int(i) for i in idxs})
        if any(i < 0 or i >= width for i in idx):
            raise IndexError(f"plan for {name!r} has indices outside [0, {width}): {[i for i in idx if not 0 <= i < width]}")
        if len(idx) >= width:
            raise ValueError(f"plan would remove all {width} channels of {name!r}; keep at least one")
        if idx:
            clean[name] = idx
    return clean


def remove_channels(model: nn.Module, plan: Mapping[str, Sequence[int]], example_inputs: Any) -> dict[str, Any]:
    """Remove output channels structurally, in place, with everything coupled to them.

    Args:
        model: the network; modified in place.
        plan: ``{qualified Conv/Linear name: output channel indices to remove}``. Name one layer per coupled
            group (a residual add couples its branches): the group's other layers follow it.
        example_inputs: an input batch for tracing the dependency graph (autograd is enabled for it).
    Returns:
        ``{"removed": {layer: indices}, "coupled": {layer: [(module, what, count), ...]}}``.
    """
    import torch_pruning as tp

    plan = _check_plan(model, plan)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    frozen_names = {n for n, p in model.named_parameters() if id(p) in frozen}
    channels_last = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                        and not p.is_contiguous() for p in model.parameters())
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    coupled = {}
    for name, idx in plan.items():
        group = graph.get_pruning_group(modules[name], _pruning_fn(modules[name]), idxs=idx)
        if not graph.check_pruning_group(group):
            raise ValueError(f"removing {len(idx)} channels of {name!r} would empty a coupled layer")
        coupled[name] = [(names.get(dep.target.module, str(dep.target.module)), dep.handler.__name__, len(i))
                         for dep, i in group]
        group.prune()
    for n, p in model.named_parameters():
        if n in frozen_names:
            p.requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return {"removed": plan, "coupled": coupled}


# --- selection rules --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    """Which channels a trimming round removes, from each layer's APoZ.

    kind: ``"threshold"`` (APoZ > amount), ``"ratio"`` (the ``amount`` fraction with the highest APoZ,
    per layer) or ``"std"`` (APoZ > mean + amount * std of the layer, as keras-surgeon does).
    min_keep: channels always kept per layer: an int, or a fraction of the layer's current width (at
    least 1). When the rule picks more, the highest-APoZ channels go first.
    """

    kind: str = "threshold"
    amount: float = 0.9
    min_keep: float = 0.1

    def __post_init__(self):
        if self.kind not in ("threshold", "ratio", "std"):
            raise ValueError(f"rule kind must be 'threshold', 'ratio' or 'std', got {self.kind!r}")
        if self.kind == "ratio" and not 0 <= self.amount < 1:
            raise ValueError(f"a ratio rule needs 0 <= amount < 1, got {self.amount}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")

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
        keep = max(1, int(self.min_keep) if self.min_keep >= 1 else int(round(self.min_keep * c)))
        budget = max(0, c - keep)
        if chosen.numel() > budget:
            chosen = chosen[torch.argsort(a[chosen], descending=True, stable=True)[:budget]]
        return sorted(chosen.tolist())


def relu_keys(model: nn.Module, layers: Sequence[str], example_inputs: Any) -> dict[str, str]:
    """For each Conv/Linear in ``layers``, the key of the ``nn.ReLU`` module whose input it produces
    through per-channel modules (BatchNorm, Dropout, Identity), found by one traced forward."""
    modules = dict(model.named_modules())
    passthrough = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Identity)
    source: dict[int, str] = {}
    found: dict[str, str] = {}

    def hook(name, m):
        def post(mod, args, out):
            if not isinstance(out, Tensor):
                return
            if isinstance(mod, _PRUNABLE):
                source[id(out)] = name
            elif isinstance(mod, passthrough + (nn.ReLU,)) and args and id(args[0]) in source:
                if isinstance(mod, nn.ReLU) and source[id(args[0])] not in found:
                    found[source[id(args[0])]] = name
                source[id(out)] = source[id(args[0])]

        return post

    handles = [m.register_forward_hook(hook(n, m)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in layers if name not in found]
    if missing:
        raise ValueError(f"no nn.ReLU module consumes the output of {missing} (directly or through BatchNorm/"
                         f"Dropout); pass layers as {{module: APoZ report key}} instead")
    return {name: found[name] for name in layers}


def coupled_groups(model: nn.Module, layers: Sequence[str], example_inputs: Any) -> list[list[str]]:
    """``layers`` partitioned into groups whose output channels Torch-Pruning removes together (e.g. the
    convolutions whose outputs meet in residual adds), in the order given."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    groups: list[list[str]] = []
    placed: set[str] = set()
    for layer in layers:
        if layer in placed:
            continue
        group = graph.get_pruning_group(modules[layer], _pruning_fn(modules[layer]), idxs=[0])
        partners = {names.get(dep.target.module) for dep, _ in group
                    if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)}
        members = [n for n in layers if n == layer or (n in partners and n not in placed)]
        placed.update(members)
        groups.append(members)
    return groups


def select_channels(report: APoZReport, layers: Mapping[str, str], rule: Rule,
                    groups: Sequence[Sequence[str]] | None = None) -> dict[str, list[int]]:
    """The plan ``{layer: indices}`` that ``rule`` picks from the APoZ of each layer's ReLU.

    ``layers`` maps each Conv/Linear to its report key. Coupled layers (``groups``, from
    :func:`coupled_groups`; layers that share one report key are always coupled) are pooled: a channel's
    APoZ is the mean of its APoZ over the group's distinct activations, the rule picks from that, and the
    plan names the group's first layer (the surgery removes the channel from all of them).
    """
    groups = [list(g) for g in groups] if groups is not None else [[n] for n in layers]
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


# --- the trimming driver ----------------------------------------------------------------------------

@dataclasses.dataclass
class TrimResult:
    """One row per round, like the paper's Table 4 (round 0 is the untrimmed model)."""

    layers: list[str]
    rows: list[dict]
    model: nn.Module | None = None

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
        w = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
        fmt = lambda cells: "| " + " | ".join(c.rjust(x) for c, x in zip(cells, w)) + " |"  # noqa: E731
        return "\n".join([fmt(headers), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(fmt, lines)])

    def to_json(self) -> dict:
        return {"layers": self.layers, "rows": self.rows}

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


def evaluate(model: nn.Module, data: Iterable, device: torch.device,
             inputs: Callable[[Any], Any] = default_inputs) -> tuple[float, float | None]:
    """(top-1, top-5) accuracy over ``(inputs, targets)`` batches; top-5 is None under 5 classes."""
    was = model.training
    model.eval()
    correct1 = correct5 = total = 0
    classes = 0
    try:
        with torch.no_grad():
            for batch in data:
                x, y = _to(inputs(batch), device), batch[1].to(device)
                logits = model(x)
                classes = logits.shape[1]
                top = logits.topk(min(5, classes), dim=1).indices
                correct1 += (top[:, 0] == y).sum().item()
                correct5 += (top == y[:, None]).any(1).sum().item()
                total += y.numel()
    finally:
        model.train(was)
    if total == 0:
        raise ValueError("evaluation data yielded no batches")
    return correct1 / total, (correct5 / total if classes >= 5 else None)


def fine_tune(model: nn.Module, data: Iterable, epochs: int, optimizer: torch.optim.Optimizer, device: torch.device,
              loss_fn: Callable = nn.CrossEntropyLoss(), progress: bool = True) -> None:
    from tqdm.auto import tqdm

    model.train()
    for epoch in range(epochs):
        for batch in tqdm(data, desc=f"fine-tune epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            x, y = _to(default_inputs(batch), device), batch[1].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()


def _widths(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {n: _out_channels(modules[n]) for n in layers}


def save_model(model: nn.Module, folder: str | os.PathLike, example_inputs: Tensor) -> dict[str, Path]:
    """Save a (pruned) model two ways, atomically.

    ``model.pt``: the whole module (``torch.save(model)``); load with
    ``torch.load(path, weights_only=False)``: the classes must be importable, but their constructor
    arguments need not match the pruned shapes (a pruned state_dict would not load into the original
    class). ``model.pt2``: a ``torch.export`` program; ``torch.export.load(path).module()`` runs it with
    no class definition at all (inference only).
    """
    folder = Path(folder)
    paths = {"module": atomic_write(folder / "model.pt", lambda f: torch.save(model, f))}
    was = model.training
    model.eval()
    try:
        program = torch.export.export(model, (example_inputs,))
        paths["exported"] = atomic_write(folder / "model.pt2", lambda f: torch.export.save(program, f))
    finally:
        model.train(was)
    return paths


def trim(model: nn.Module, train_data: Iterable, val_data: Iterable, *, layers: Sequence[str] | Mapping[str, str],
         rule: Rule = Rule(), rounds: int = 3, fine_tune_epochs: int = 1,
         optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
         checkpoint_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
         seed: int = 0, progress: bool = True, apoz_batches: int | None = None) -> TrimResult:
    """Iterative trimming: per round measure APoZ on ``val_data``, select by ``rule``, remove structurally,
    evaluate, fine-tune ``fine_tune_epochs`` on ``train_data`` with a fresh optimizer from
    ``optimizer_factory(params)`` (default SGD, lr 0.01, momentum 0.9), evaluate again.

    ``layers``: Conv/Linear names (each mapped to the nn.ReLU that its output feeds) or a mapping
    ``{layer: APoZ report key}``; coupled layers pool their APoZ (:func:`select_channels`). Batches are ``(inputs, targets)`` with class-index targets.
    With ``checkpoint_dir``, each finished round is saved atomically (``state.pt``) and a new call with
    the same arguments resumes after the last finished round, giving the same table (seeded per round).
    The final model is saved there with :func:`save_model`.
    """
    if rounds < 1 or fine_tune_epochs < 0:
        raise ValueError(f"rounds must be >= 1 and fine_tune_epochs >= 0, got {rounds} and {fine_tune_epochs}")
    if device is None:
        device = model_device(model)
    device = torch.device(device)
    factory = optimizer_factory or (lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9))
    example = _to(default_inputs(next(iter(val_data))), device)
    names = list(layers)
    _check_plan(model, {n: [] for n in names})  # every layer exists and is prunable
    keys = dict(layers) if isinstance(layers, Mapping) else relu_keys(model, names, example)
    ckpt = Path(checkpoint_dir) / "state.pt" if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model, rows = state["model"], state["rows"]
    else:
        top1, top5 = evaluate(model, val_data, device)
        params0 = count_params(model)
        rows = [dict(round=0, widths=_widths(model, names), params=params0, compression=1.0, removed={},
                     top1_before=top1, top1_after=top1, top5_before=top5, top5_after=top5)]
    params0 = rows[0]["params"]
    for rnd in range(len(rows), rounds + 1):
        torch.manual_seed(seed + rnd)
        report = apoz(model, val_data, device=device, layers=list(keys.values()), progress=progress,
                      max_batches=apoz_batches)
        plan = select_channels(report, keys, rule, coupled_groups(model, names, example))
        remove_channels(model, plan, example)
        top1_b, top5_b = evaluate(model, val_data, device)
        optimizer = factory([p for p in model.parameters() if p.requires_grad])
        fine_tune(model, train_data, fine_tune_epochs, optimizer, device, progress=progress)
        top1_a, top5_a = evaluate(model, val_data, device)
        params = count_params(model)
        rows.append(dict(round=rnd, widths=_widths(model, names), params=params,
                         compression=compression_rate(params0, params), removed={k: len(v) for k, v in plan.items()},
                         top1_before=top1_b, top1_after=top1_a, top5_before=top5_b, top5_after=top5_a))
        if ckpt is not None:
            state = {"model": model, "rows": rows}
            atomic_write(ckpt, lambda f: torch.save(state, f))
    result = TrimResult(names, rows, model)
    if checkpoint_dir is not None:
        result.save(checkpoint_dir)
        save_model(model, checkpoint_dir, example)
    return result
