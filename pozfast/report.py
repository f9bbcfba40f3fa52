"""The APoZ report: per-layer near-zero counts per threshold, APoZ per channel, dead neurons, summary
table, portable save/load, activation-frequency files and plots.

File format (``APoZReport.save``): UTF-8 JSON,
``{"format": "pozfast-apoz", "version": 3, "thresholds": [tau, ...], "layers": [{"key", "module", "call",
"channel_dim", "kind", "channels", "examples", "total", "tokens", "masked", "producers": [str, ...],
"counts": [[int, ...] per threshold]}, ...]}`` with layers in forward order. ``counts[t][c]`` is the number
of elements of channel c with ``|a| <= thresholds[t]``; ``total`` the number of elements counted per channel
(examples x positions, or masked tokens x positions); ``apoz = counts at tau 0 / total``. Integers are
exact JSON integers (no 2^31 or 2^53 limit on the Python side). Version 1 and 2 files (ReLU zero counts
``"zeros": [...]``, one threshold 0.0) still load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from pozfast import tables
from pozfast._io import atomic_write, atomic_write_text
from pozfast.plotting import pyplot, save_figure
from pozfast.validate import folder_path, names, real

FORMAT = "pozfast-apoz"
VERSION = 3
FREQUENCIES_FORMAT = "pozfast-activation-frequencies"


@dataclasses.dataclass
class LayerAPoZ:
    """Near-zero counts of one activation call site.

    Attributes:
        key: the layer key, ``module path`` or ``module path:call index`` when the module's forward
            makes more than one tracked activation call.
        module: qualified name of the module that made the call (``""`` for the root module).
        call: index of the call among that module's tracked calls in one forward pass.
        channel_dim: the axis of the activation that was treated as the channel (neuron).
        counts: int64 tensor [T, C]: per threshold t and channel c, the elements with ``|a| <= thresholds[t]``.
        thresholds: the T thresholds, increasing.
        total: elements counted per channel (examples x positions; with a token mask, unmasked tokens x
            positions).
        examples: examples seen (the first dim of the activation, summed over batches; the sequences of the
            mask where one applied).
        tokens: tokens counted under the token mask (0 where no mask applied).
        masked: whether a token mask applied to this site.
        kind: the activation kind (``relu``, ``gelu``, ``silu``, ...: :mod:`pozfast.activation_kinds`).
        producers: qualified names of the Conv/Linear modules whose output reaches this activation through
            per-channel modules (BatchNorm, Dropout, pooling, reshapes); several where a residual add
            joins branches; empty when none was seen.
    """

    key: str
    module: str
    call: int
    channel_dim: int
    counts: Tensor
    thresholds: tuple[float, ...]
    total: int
    examples: int
    tokens: int = 0
    masked: bool = False
    kind: str = "relu"
    producers: tuple[str, ...] = ()

    @property
    def producer(self) -> str | None:
        """The first producer (the Conv/Linear whose output this activation consumes), or None."""
        return self.producers[0] if self.producers else None

    @property
    def channels(self) -> int:
        return self.counts.shape[1]

    def _row(self, tau: float | None) -> int:
        if tau is None:
            return 0
        tau = real(tau, "tau", low=0)
        if tau not in self.thresholds:
            raise ValueError(f"tau={tau!r} was not recorded for {self.key!r}; recorded thresholds: "
                             f"{list(self.thresholds)} (pass thresholds= when measuring)")
        return self.thresholds.index(tau)

    def near_zero(self, tau: float | None = None) -> Tensor:
        """int64 tensor [C]: elements with ``|a| <= tau`` per channel (tau: a recorded threshold; default the
        smallest)."""
        return self.counts[self._row(tau)]

    def fraction(self, tau: float | None = None) -> Tensor:
        """float64 tensor [C]: the share of elements with ``|a| <= tau`` per channel (NaN if nothing was
        counted); tau is a recorded threshold, by default the smallest."""
        row = self.near_zero(tau)
        return row.double() / self.total if self.total else torch.full((self.channels,), float("nan"),
                                                                        dtype=torch.float64)

    def active(self, tau: float = 0.0) -> Tensor:
        """int64 tensor [C]: elements with ``|a| > tau`` per channel (a neuron's activation count; NaN
        elements count here too, since they are not ``<= tau``)."""
        return self.total - self.near_zero(tau)

    @property
    def zeros(self) -> Tensor:
        """int64 tensor [C]: exact zeros per channel (the counts at tau = 0)."""
        return self.near_zero(0.0)

    @property
    def apoz(self) -> Tensor:
        """float64 tensor [C]: the fraction of zero outputs per channel (NaN if nothing was counted)."""
        return self.fraction(0.0)

    def dead(self, tau: float = 0.0) -> Tensor:
        """int64 tensor of the channels that never exceeded tau (``|a| <= tau`` on every element counted);
        empty when nothing was counted."""
        return (self.near_zero(tau) == self.total).nonzero().flatten() if self.total else \
            torch.zeros(0, dtype=torch.int64)

    def to_json(self) -> dict:
        return {"key": self.key, "module": self.module, "call": self.call, "channel_dim": self.channel_dim,
                "kind": self.kind, "channels": self.channels, "examples": self.examples, "total": self.total,
                "tokens": self.tokens, "masked": self.masked, "producers": list(self.producers),
                "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, d: dict, thresholds: tuple[float, ...]) -> LayerAPoZ:
        """From :meth:`to_json` (or a version 1/2 layer with ``zeros``); counts that cannot be (above
        ``total``, or decreasing as tau grows) are refused."""
        old = "counts" not in d  # versions 1 and 2: ReLU zeros, one threshold
        counts = torch.tensor([d["zeros"]] if old else d["counts"], dtype=torch.int64)
        if counts.dim() != 2 or counts.shape[0] != len(thresholds):
            raise ValueError(f"counts must hold one row per threshold ({len(thresholds)}), got shape "
                             f"{tuple(counts.shape)}")
        if d.get("channels", counts.shape[1]) != counts.shape[1]:
            raise ValueError(f"{counts.shape[1]} {'zero counts' if old else 'counts per threshold'} for "
                             f"{d.get('channels')} channels")
        e = cls(key=d["key"], module=d["module"], call=int(d["call"]), channel_dim=int(d["channel_dim"]),
                counts=counts, thresholds=thresholds, total=int(d["total"]), examples=int(d["examples"]),
                tokens=int(d.get("tokens", 0)), masked=bool(d.get("masked", False)), kind=str(d.get("kind", "relu")),
                producers=tuple(d.get("producers", ())))
        if counts.numel() and not 0 <= int(counts.min()) <= int(counts.max()) <= e.total:
            raise ValueError(f"{'zeros' if old else 'counts'} must be within [0, total] = [0, {e.total}]")
        if bool((counts[1:] < counts[:-1]).any()):
            raise ValueError("counts must not decrease as the threshold grows")
        return e


class APoZReport:
    """Near-zero counts per channel for every tracked activation call site, in forward order.

    ``report.layers`` lists the keys; ``report[key]`` is a :class:`LayerAPoZ` (``.apoz``, ``.fraction(tau)``,
    ``.zeros``, ``.counts``, ``.total``, ``.examples``); ``report.thresholds`` the thresholds counted.
    """

    def __init__(self, entries: list[LayerAPoZ], thresholds: Iterable[float] = (0.0,)):
        self.thresholds = tuple(float(t) for t in thresholds)
        self._entries = {e.key: e for e in entries}

    @property
    def layers(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, key: str) -> LayerAPoZ:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"no layer {key!r} in this report; layers: {self.layers}") from None

    def __iter__(self) -> Iterator[LayerAPoZ]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"APoZReport({len(self)} layers: {self.layers})"

    @property
    def masked_layers(self) -> list[str]:
        """The keys of the sites a token mask applied to."""
        return [e.key for e in self if e.masked]

    @property
    def tokens(self) -> int:
        """Tokens counted under the token mask (the most any masked site counted; 0 without a mask)."""
        return max((e.tokens for e in self if e.masked), default=0)

    @property
    def sequences(self) -> int:
        """Sequences (mask rows) counted under the token mask (the most any masked site counted)."""
        return max((e.examples for e in self if e.masked), default=0)

    def dead(self, tau: float = 0.0) -> dict[str, Tensor]:
        """``{key: int64 tensor of the neurons that never exceeded tau}`` per layer (Voita et al.'s dead
        neurons at tau = 0); tau must be a recorded threshold."""
        return {e.key: e.dead(tau) for e in self}

    def threshold_for(self, key: str, sparsity: float) -> float | None:
        """The smallest recorded tau at which at least ``sparsity`` of layer ``key``'s elements (all its
        channels together) have ``|a| <= tau``; None when no recorded threshold gets there."""
        sparsity = real(sparsity, "sparsity", low=0.0, high=1.0)
        e = self[key]
        if not e.total:
            return None
        reached = e.counts.sum(1).double() >= sparsity * e.total * e.channels
        return next((tau for tau, ok in zip(e.thresholds, reached.tolist()) if ok), None)

    def _measure(self) -> str:
        """What the smallest threshold measures, in words for headers."""
        tau = self.thresholds[0] if self.thresholds else 0.0
        return "APoZ" if tau == 0 else f"|a|<={tau:g}"

    def summary(self) -> str:
        """A text table: kind, channels, mean fraction at the smallest threshold (APoZ at tau = 0), how many
        channels exceed 50 %, 90 %, 99 %, the share of dead channels and how many are 100 %."""
        tau = self.thresholds[0] if self.thresholds else 0.0
        headers = ["layer", "kind", "channels", "examples", f"mean {self._measure()}", ">50%", ">90%", ">99%", "dead", "=100%"]
        rows = []
        for e in self:
            a = e.fraction(tau)
            dead = int((e.near_zero(tau) == e.total).sum()) if e.total else 0
            rows.append([e.key + (" (masked)" if e.masked else ""), e.kind, str(e.channels), str(e.examples),
                         f"{a.mean().item():.3f}", *(str(int((a > t).sum())) for t in (0.5, 0.9, 0.99)),
                         f"{100 * dead / max(e.channels, 1):.1f}%", str(dead)])
        table = tables.aligned(headers, rows)
        masked = self.masked_layers
        if masked:
            rest = "" if len(masked) == len(self) else "; the others counted every position"
            table += (f"\ntoken mask: {self.sequences} sequences, {self.tokens} tokens counted at the "
                      f"{len(masked)} sites marked (masked){rest}")
        return table

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "thresholds": list(self.thresholds),
                "layers": [e.to_json() for e in self]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (see the module docstring), atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> APoZReport:
        """A report written by :meth:`save` (any version); another file is refused with what it is not."""
        what = f"{path} is not a pozfast APoZ report (format {FORMAT!r} version 1 to {VERSION})"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as exc:  # not UTF-8 or not JSON
            raise ValueError(f"{what}: {exc}") from None
        if (not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") not in (1, 2, VERSION)
                or not isinstance(data.get("layers"), list)):
            raise ValueError(what)
        try:
            thresholds = tuple(float(t) for t in data.get("thresholds", (0.0,)))
            if not thresholds or list(thresholds) != sorted(set(thresholds)) or thresholds[0] < 0:
                raise ValueError(f"thresholds must be increasing and >= 0, got {list(thresholds)}")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        entries = []
        for i, d in enumerate(data["layers"]):
            try:
                entries.append(LayerAPoZ.from_json(d, thresholds))
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{path}: layer {i} is malformed ({type(exc).__name__}: {exc})") from None
        return cls(entries, thresholds)

    def save_frequencies(self, folder: str | os.PathLike, tau: float = 0.0,
                         layers: Iterable[str] | None = None) -> Path:
        """Per-neuron activation counts, one file per layer, in the form PowerInfer's offline solver reads.

        Writes, for the i-th of ``layers`` (default: every layer, in forward order), ``activation_{i}.pt``:
        ``torch.save`` of a 1-D int64 tensor [C] whose entry c is how many counted elements of neuron c had
        ``|a| > tau`` (``report[key].active(tau)``; PowerInfer's ``powerinfer/solver.py`` loads
        ``{folder}/activation_{i}.pt`` for i = 0 .. layers - 1 and sorts it). Beside them,
        ``frequencies.json``: ``{"format": "pozfast-activation-frequencies", "version": 1, "tau": tau,
        "layers": [{"index": i, "file": "activation_{i}.pt", "key", "kind", "channels", "tokens",
        "masked"}]}`` where ``tokens`` is the number of elements counted per neuron (``total``), so that
        ``activation_i / tokens`` is the activation frequency. Pass the FFN layers' keys, in layer order,
        so that file i is transformer block i. Files are written atomically; other files in the folder
        are left alone.

        Returns the folder.
        """
        folder = folder_path(folder, "folder")
        keys = self.layers if layers is None else names(layers, "layers")
        entries = [self[k] for k in keys]
        counts = [e.active(tau) for e in entries]  # every tau checked before anything is written
        index = []
        for i, (e, active) in enumerate(zip(entries, counts)):
            name = f"activation_{i}.pt"
            atomic_write(folder / name, lambda f, t=active.clone(): torch.save(t, f))
            index.append({"index": i, "file": name, "key": e.key, "kind": e.kind, "channels": e.channels,
                          "tokens": e.total, "masked": e.masked})
        atomic_write_text(folder / "frequencies.json", json.dumps(
            {"format": FREQUENCIES_FORMAT, "version": 1, "tau": float(tau), "layers": index}, indent=1))
        return folder

    def plot_histogram(self, key: str, path: str | os.PathLike, bins: int = 50) -> Path:
        """PNG histogram of one layer's APoZ (the fraction at the smallest threshold) over its channels (like
        the paper's FC6 figure)."""
        plt = pyplot()
        e = self[key]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        ax.hist(e.fraction().numpy() * 100, bins=bins, range=(0, 100), color="#3b6ea8", edgecolor="white")
        ax.set_xlabel(f"{self._measure()} (%)")
        ax.set_ylabel("channels")
        ax.set_title(f"{key}: {e.channels} channels, {e.examples} examples")
        return save_figure(fig, path)

    def plot_overview(self, path: str | os.PathLike) -> Path:
        """PNG of every layer's APoZ distribution (the fraction at the smallest threshold; box per layer,
        mean marked), in forward order."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(self) + 2), 4.5), dpi=110)
        ax.boxplot([e.fraction().numpy() * 100 for e in self], showmeans=True, whis=(0, 100))
        ax.set_xticks(range(1, len(self) + 1), self.layers, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"{self._measure()} per channel (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{self._measure()} by layer (box: quartiles, whiskers: min/max, triangle: mean)")
        return save_figure(fig, path)
