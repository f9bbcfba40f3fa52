"""Activation call sites: their counters, their readable keys, selection by name, and sums over ranks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pozfast.distributed import all_reduce_sum, world

# The fields of Site.seen, one int64 each.
TOTAL, EXAMPLES, TOKENS = range(3)


def union_names(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for g in groups for n in g))


def new_counters(thresholds: int, channels: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Zeroed ``(counts [T, C], seen [3])`` int64 counters on ``device``; counters are never inference tensors
    (see :func:`counter`)."""
    with torch.inference_mode(False):
        return (torch.zeros((thresholds, channels), dtype=torch.int64, device=device),
                torch.zeros(3, dtype=torch.int64, device=device))


def counter(t: Tensor, device: torch.device | str) -> Tensor:
    """An int64 copy of ``t`` on ``device`` to count into. Made outside inference mode: a tracker that first
    runs under ``torch.inference_mode()`` keeps counting in later forwards outside it."""
    with torch.inference_mode(False):
        return t.to(device, torch.int64, copy=True)


@dataclasses.dataclass(eq=False)
class Site:
    """The counters of one activation call site, on the device of the activation they count.

    ``counts[t, c]``: elements of channel c with ``|a| <= thresholds[t]``; ``seen``: (elements counted per
    channel, examples, tokens under the token mask). ``pending`` and ``p_seen`` hold the current forward's
    counts, added to the committed ones when the forward completes. What an eager forward knows from shapes
    alone (elements, examples) is kept on the host instead, as Python ints, with no device op per call:
    ``p_host`` for the current forward, ``host_seen`` committed. :meth:`seen_all` adds the two parts.
    """

    module: str
    call: int
    channel_dim: int
    kind: str
    counts: Tensor
    seen: Tensor
    producers: tuple[str, ...] = ()
    masked: bool = False
    committed: bool = False
    pending: Tensor | None = None
    p_seen: Tensor | None = None
    host_seen: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    p_host: list[int] = dataclasses.field(default_factory=lambda: [0, 0])

    def __post_init__(self):
        if self.pending is None:
            with torch.inference_mode(False):
                self.pending, self.p_seen = torch.zeros_like(self.counts), torch.zeros_like(self.seen)

    def move(self, device: torch.device | str) -> None:
        """Its counters as new plain tensors on ``device`` (see :func:`counter`)."""
        self.counts, self.seen, self.pending, self.p_seen = (
            counter(t, device) for t in (self.counts, self.seen, self.pending, self.p_seen))

    def seen_all(self) -> Tensor:
        """The committed ``seen`` with its host part, on the CPU."""
        return self.seen.cpu() + torch.tensor([*self.host_seen, 0])


def site_keys(sites: Mapping[tuple[str, int], Any]) -> dict[tuple[str, int], str]:
    """Readable keys: the module path, plus ':call' for modules that make more than one tracked call."""
    calls: dict[str, int] = {}
    for module, call in sites:
        calls[module] = max(calls.get(module, 0), call + 1)
    return {(m, c): (m or "<root>") + (f":{c}" if calls[m] > 1 else "") for m, c in sites}


def dim_keys(module: str, call: int) -> tuple[str, ...]:
    """The ``channel_dims`` keys that name call ``call`` of ``module``: ``key:call`` and the key."""
    shown = module or "<root>"
    return f"{shown}:{call}", shown


def select_sites(sites: Mapping[tuple[str, int], Site], layers: list[str] | None) -> list[tuple[str, int]]:
    """The sites named by ``layers``, in forward order (all when None): a key; a module name, which
    selects every site inside that module; or a producer (Conv/Linear) name, which selects the sites
    its output reaches."""
    if layers is None:
        return list(sites)
    keys = site_keys(sites)
    chosen: set[tuple[str, int]] = set()
    for wanted in layers:
        match = {s for s, k in keys.items() if k == wanted or s[0] == wanted or s[0].startswith(wanted + ".")
                 or wanted in sites[s].producers}
        if not match:
            raise KeyError(f"layer {wanted!r} is not a ReLU call site (or one of another activation kind tracked) "
                           f"of this model, a module containing one or a layer whose output reaches one; sites: "
                           f"{list(keys.values())}")
        chosen |= match
    return [s for s in keys if s in chosen]


def all_reduce_sites(sites: dict[tuple[str, int], Site], thresholds: tuple[float, ...]) -> dict[tuple[str, int], Site]:
    """Sum the counts of every rank into new CPU sites; ranks that saw fewer (or no) call sites contribute
    zeros. Counts stay int64 throughout (no float or int32 step). Every rank must count the same
    ``thresholds``."""
    local = [(s.module, s.call, s.channel_dim, tuple(s.counts.shape), s.kind, s.producers, s.masked)
             for s in sites.values()]
    gathered: list = [None] * world()[1]
    torch.distributed.all_gather_object(gathered, (tuple(thresholds), local))
    odd = [rank for rank, (taus, _) in enumerate(gathered) if taus != tuple(thresholds)]
    if odd:
        raise RuntimeError(f"ranks count different thresholds: this rank {list(thresholds)}, rank {odd[0]} "
                           f"{list(gathered[odd[0]][0])}")
    gathered = [rank_sites for _, rank_sites in gathered]
    union: dict[tuple[str, int], tuple[int, tuple[int, int], str]] = {}
    producers: dict[tuple[str, int], tuple[str, ...]] = {}
    masked: dict[tuple[str, int], bool] = {}
    for rank_sites in gathered:
        for module, call, cd, shape, kind, prods, was_masked in rank_sites:
            if union.setdefault((module, call), (cd, shape, kind)) != (cd, shape, kind):
                raise RuntimeError(f"ranks disagree on call {call} of {module or '<root>'!r}: "
                                   f"{union[(module, call)]} vs {(cd, shape, kind)} (channel axis, "
                                   "(thresholds, channels), kind)")
            producers[(module, call)] = union_names(producers.get((module, call), ()), prods)
            masked[(module, call)] = masked.get((module, call), False) or was_masked
    parts = []
    for key, (_, shape, _) in union.items():
        s = sites.get(key)
        counts, seen = (s.counts.cpu(), s.seen_all()) if s else new_counters(*shape, "cpu")
        parts += [counts.flatten(), seen]
    flat = all_reduce_sum(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64))
    out, offset = {}, 0
    for (module, call), (cd, (t, c), kind) in union.items():
        counts = flat[offset:offset + t * c].reshape(t, c)
        seen = flat[offset + t * c:offset + t * c + 3]
        out[(module, call)] = Site(module, call, cd, kind, counts, seen, producers[(module, call)],
                                   masked[(module, call)], committed=True)
        offset += t * c + 3
    return out
