"""Network trimming (Hu et al. 2016): remove high-APoZ channels structurally, fine-tune, repeat.

Where the pieces live: structural surgery in :mod:`pozfast.surgery`, exact removal of dead channels in
:mod:`pozfast.dead`, selection rules and layer-name resolution in :mod:`pozfast.selection`, and the
trimming driver in :mod:`pozfast.trimming`. This module gathers them under one name.
"""

from pozfast.dead import DeadRemoval, remove_dead
from pozfast.selection import Rule, relu_keys, resolve_layers, select_channels
from pozfast.surgery import compression_rate, count_params, coupled_groups, remove_channels
from pozfast.trimming import TrimResult, evaluate, fine_tune, save_model, trim

__all__ = ["DeadRemoval", "Rule", "TrimResult", "compression_rate", "count_params", "coupled_groups", "evaluate",
           "fine_tune", "relu_keys", "remove_channels", "remove_dead", "resolve_layers", "save_model",
           "select_channels", "trim"]
