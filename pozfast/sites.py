"""ReLU call sites: their counts, their readable keys, selection by name, and sums over ranks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pozfast.distributed import all_reduce_sum, world


def union_names(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for g in groups for n in g))


@dataclasses.dataclass
class Site:
    """The counts of one ReLU call site: committed totals, and the current forward's pending ones."""

    module: str
    call: int
    channel_dim: int
    zeros: Tensor
    producers: tuple[str, ...] = ()
    total: int = 0
    examples: int = 0
    committed: bool = False
    # this forward's counts, added to the totals when the forward completes
    p_zeros: Tensor | None = None
    p_total: int = 0
    p_examples: int = 0


def site_keys(sites: Mapping[tuple[str, int], Any]) -> dict[tuple[str, int], str]:
    """Readable keys: the module path, plus ':call' for modules that call ReLU more than once."""
    calls: dict[str, int] = {}
    for module, call in sites:
        calls[module] = max(calls.get(module, 0), call + 1)
    return {(m, c): (m or "<root>") + (f":{c}" if calls[m] > 1 else "") for m, c in sites}


def dim_keys(module: str, call: int) -> tuple[str, ...]:
    """The ``channel_dims`` keys that name ReLU call ``call`` of ``module``: ``key:call`` and the key."""
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
            raise KeyError(f"layer {wanted!r} is not a ReLU call site of this model, a module containing one or "
                           f"a layer whose output reaches one; sites: {list(keys.values())}")
        chosen |= match
    return [s for s in keys if s in chosen]


def all_reduce_sites(sites: dict[tuple[str, int], Site]) -> dict[tuple[str, int], Site]:
    """Sum the counts of every rank; ranks that saw fewer (or no) call sites contribute zeros."""
    local = [(s.module, s.call, s.channel_dim, s.zeros.numel(), s.producers) for s in sites.values()]
    gathered: list = [None] * world()[1]
    torch.distributed.all_gather_object(gathered, local)
    union: dict[tuple[str, int], tuple[int, int]] = {}
    producers: dict[tuple[str, int], tuple[str, ...]] = {}
    for rank_sites in gathered:
        for module, call, cd, channels, prods in rank_sites:
            if union.setdefault((module, call), (cd, channels)) != (cd, channels):
                raise RuntimeError(f"ranks disagree on ReLU call {call} of {module or '<root>'!r}: "
                                   f"{union[(module, call)]} vs {(cd, channels)} (channel axis, channels)")
            producers[(module, call)] = union_names(producers.get((module, call), ()), prods)
    parts = []
    for key, (_, channels) in union.items():
        s = sites.get(key)
        zeros = s.zeros.cpu() if s else torch.zeros(channels, dtype=torch.int64)
        parts += [zeros, torch.tensor([s.total if s else 0, s.examples if s else 0], dtype=torch.int64)]
    flat = all_reduce_sum(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64))
    out, offset = {}, 0
    for (module, call), (cd, channels) in union.items():
        zeros, (total, examples) = flat[offset:offset + channels], flat[offset + channels:offset + channels + 2].tolist()
        out[(module, call)] = Site(module, call, cd, zeros, producers[(module, call)], total, examples, True)
        offset += channels + 2
    return out
