"""The APoZ report: per-layer zero counts, APoZ per channel, summary table, portable save/load, plots.

File format (``APoZReport.save``): UTF-8 JSON,
``{"format": "pozfast-apoz", "version": 2, "layers": [{"key", "module", "call", "channel_dim",
"channels", "examples", "total", "producers": [str, ...], "zeros": [int, ...]}, ...]}`` with layers in
forward order (version 1 files, without producers, still load). ``total`` is
the number of elements counted per channel (examples x positions); ``apoz = zeros / total``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from pozfast import tables
from pozfast._io import atomic_write_text
from pozfast.plotting import pyplot, save_figure

FORMAT = "pozfast-apoz"
VERSION = 2


@dataclasses.dataclass
class LayerAPoZ:
    """Zero counts of one ReLU call site.

    Attributes:
        key: the layer key, ``module path`` or ``module path:call index`` when the module's forward
            calls ReLU more than once.
        module: qualified name of the module that made the call (``""`` for the root module).
        call: index of the call among that module's ReLU calls in one forward pass.
        channel_dim: the axis of the activation that was treated as the channel.
        zeros: int64 tensor [C], zeros counted per channel.
        total: elements counted per channel (examples x positions per example).
        examples: examples seen (the first dim of the activation, summed over batches).
        producers: qualified names of the Conv/Linear modules whose output reaches this ReLU through
            per-channel modules (BatchNorm, Dropout, pooling, reshapes); several where a residual add
            joins branches; empty when none was seen.
    """

    key: str
    module: str
    call: int
    channel_dim: int
    zeros: Tensor
    total: int
    examples: int
    producers: tuple[str, ...] = ()

    @property
    def producer(self) -> str | None:
        """The first producer (the Conv/Linear whose output this ReLU consumes), or None."""
        return self.producers[0] if self.producers else None

    @property
    def channels(self) -> int:
        return self.zeros.numel()

    @property
    def apoz(self) -> Tensor:
        """float64 tensor [C]: the fraction of zero outputs per channel (NaN if nothing was counted)."""
        return self.zeros.double() / self.total if self.total else torch.full((self.channels,), float("nan"),
                                                                               dtype=torch.float64)

    def to_json(self) -> dict:
        return {"key": self.key, "module": self.module, "call": self.call, "channel_dim": self.channel_dim,
                "channels": self.channels, "examples": self.examples, "total": self.total,
                "producers": list(self.producers), "zeros": self.zeros.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> LayerAPoZ:
        """From :meth:`to_json`; counts that cannot be (a zero count above ``total``) are refused."""
        e = cls(key=d["key"], module=d["module"], call=int(d["call"]), channel_dim=int(d["channel_dim"]),
                zeros=torch.tensor(d["zeros"], dtype=torch.int64), total=int(d["total"]),
                examples=int(d["examples"]), producers=tuple(d.get("producers", ())))
        if e.zeros.dim() != 1 or d.get("channels", e.channels) != e.channels:
            raise ValueError(f"{e.zeros.numel()} zero counts for {d.get('channels')} channels")
        if e.channels and not 0 <= int(e.zeros.min()) <= int(e.zeros.max()) <= e.total:
            raise ValueError(f"zeros must be within [0, total] = [0, {e.total}]")
        return e


class APoZReport:
    """APoZ per channel for every tracked ReLU call site, in forward order.

    ``report.layers`` lists the keys; ``report[key]`` is a :class:`LayerAPoZ` (``.apoz``, ``.zeros``,
    ``.total``, ``.examples``).
    """

    def __init__(self, entries: list[LayerAPoZ]):
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

    def summary(self) -> str:
        """A text table: channels, mean APoZ and how many channels exceed 50 %, 90 %, 99 %, or are 100 %."""
        headers = ["layer", "channels", "examples", "mean APoZ", ">50%", ">90%", ">99%", "=100%"]
        rows = []
        for e in self:
            a = e.apoz
            rows.append([e.key, str(e.channels), str(e.examples), f"{a.mean().item():.3f}",
                         *(str(int((a > t).sum())) for t in (0.5, 0.9, 0.99)), str(int((e.zeros == e.total).sum()))])
        return tables.aligned(headers, rows)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "layers": [e.to_json() for e in self]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (see the module docstring), atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> APoZReport:
        """A report written by :meth:`save`; another file is refused with what it is not."""
        what = f"{path} is not a pozfast APoZ report (format {FORMAT!r} version 1 or {VERSION})"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as exc:  # not UTF-8 or not JSON
            raise ValueError(f"{what}: {exc}") from None
        if (not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") not in (1, VERSION)
                or not isinstance(data.get("layers"), list)):
            raise ValueError(what)
        entries = []
        for i, d in enumerate(data["layers"]):
            try:
                entries.append(LayerAPoZ.from_json(d))
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{path}: layer {i} is malformed ({type(exc).__name__}: {exc})") from None
        return cls(entries)

    def plot_histogram(self, key: str, path: str | os.PathLike, bins: int = 50) -> Path:
        """PNG histogram of one layer's APoZ over its channels (like the paper's FC6 figure)."""
        plt = pyplot()
        e = self[key]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        ax.hist(e.apoz.numpy() * 100, bins=bins, range=(0, 100), color="#3b6ea8", edgecolor="white")
        ax.set_xlabel("APoZ (%)")
        ax.set_ylabel("channels")
        ax.set_title(f"{key}: {e.channels} channels, {e.examples} examples")
        return save_figure(fig, path)

    def plot_overview(self, path: str | os.PathLike) -> Path:
        """PNG of every layer's APoZ distribution (box per layer, mean marked), in forward order."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(self) + 2), 4.5), dpi=110)
        ax.boxplot([e.apoz.numpy() * 100 for e in self], showmeans=True, whis=(0, 100))
        ax.set_xticks(range(1, len(self) + 1), self.layers, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("APoZ per channel (%)")
        ax.set_ylim(-2, 102)
        ax.set_title("APoZ by layer (box: quartiles, whiskers: min/max, triangle: mean)")
        return save_figure(fig, path)
