"""Layers of other libraries that hwprune traces and prunes, described by plugins their frontends provide.

The graph stage knows torch's layers. A library's own (transformers' attentions and RMSNorm) come from a
:class:`Plugin` in its frontend's folder (``frontends/hf/layers.py``), which implements the graph's interfaces
(:class:`~hwprune.graph.heads.Heads`, :class:`~hwprune.graph.depgraph.pruners.ChannelPruner`) and never imports
torch-pruning. A plugin is loaded once its library has been imported, since only then can a model of it exist:
an in-memory model needs no registration (TensorRT Model Optimizer loads its plugins the same way).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from hwprune.graph.depgraph.pruners import ChannelPruner

# library (its top-level module) -> the module holding its PLUGIN
PLUGINS = {"transformers": "hwprune.frontends.hf.layers"}

Silencer = Callable[[nn.Module, Sequence[int]], Callable[[], None]]


@dataclass(frozen=True)
class Plugin:
    """What the graph stage needs to know of one library's layers; each callable looks its classes up among
    those loaded.

    ``heads``: a module's :class:`~hwprune.graph.heads.Heads` view, or None. ``ends``: module types traced as
    one op whose channels are pruned at their ends, with their pruners. ``norms``: module types that normalise
    over the channels (never exact to prune), each with the function that makes it compute, on zeroed channels,
    what it computes once they are removed (returning the undo). ``fixed_width``: module types traced as one op
    and kept at their width, with the dim of their tensors that holds the channels."""

    heads: Callable[[nn.Module], Any]
    ends: Callable[[], dict[type, ChannelPruner]]
    norms: Callable[[], dict[type, Silencer]]
    fixed_width: Callable[[], dict[type, int]]


def loaded() -> list[Plugin]:
    """The plugins of the libraries imported so far."""
    return [importlib.import_module(module).PLUGIN for library, module in PLUGINS.items() if library in sys.modules]


def end_pruners() -> dict[type, ChannelPruner]:
    """Every plugin's module types pruned at their ends."""
    return {kind: pruner for plugin in loaded() for kind, pruner in plugin.ends().items()}


def norm_silencers() -> dict[type, Silencer]:
    """Every plugin's normalisations over the channels, with their silencers."""
    return {kind: silence for plugin in loaded() for kind, silence in plugin.norms().items()}


def fixed_widths() -> dict[type, int]:
    """Every plugin's module types kept at their width, with their channel dim."""
    return {kind: dim for plugin in loaded() for kind, dim in plugin.fixed_width().items()}
