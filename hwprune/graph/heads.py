"""Modules whose inner width is whole heads: one view of them for the analyzer, importance, latency and surgery.

An attention module mixes its heads only in its output projection, so one head (its q/k/v rows and the output
projection's columns) can be removed whole, and exactly when its value rows are zero. Modules differ in their
projections' names and in the attributes their forward reads; :class:`Heads` hides that, so that groups,
importance, the latency model and pruning have one code path for all of them. This module knows
:class:`~hwprune.graph.attention.HeadAttention` (built in code or converted from ``nn.MultiheadAttention``);
other libraries' attentions come from their plugins (``graph.plugins``; transformers': ``frontends/hf/layers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.attention import HeadAttention
from hwprune.graph.plugins import loaded

HEADS_SUFFIX = ":heads"
@dataclass(frozen=True)
class Heads:
    """A view of one attention module as it is now: ``units`` prunable units of ``queries`` query heads of
    ``head_dim`` each (and one key/value head each). ``projections`` are the q, k, v and output projections'
    names relative to the module. ``fixed_hidden``: the output projection's width (the model's hidden size)
    is kept (BERT's: its LayerNorm hidden size is not pruned yet); HeadAttention's is pruned like any linear's,
    transformers' grouped-query attentions' through their ends (``frontends/hf/layers.py``).
    ``causal``: each query reads only the keys up to its position (HeadAttention's masks come with each call,
    so it is taken as unmasked)."""

    module: nn.Module
    projections: tuple[str, str, str, str]
    head_dim: int
    units: int
    queries: int
    fixed_hidden: bool
    causal: bool
    _count: Callable[[nn.Module, int], None]  # sets the head-count attributes the module's forward reads

    @property
    def query_heads(self) -> int:
        return self.units * self.queries

    def layer(self, which: int) -> nn.Linear:
        return self.module.get_submodule(self.projections[which])

    def query_rows(self, units: Sequence[int]) -> list[int]:
        """Rows of q (and columns of the output projection) that ``units`` own, in order."""
        return _rows(units, self.queries * self.head_dim)

    def value_rows(self, units: Sequence[int]) -> list[int]:
        """Rows of k and of v that ``units`` own, in order."""
        return _rows(units, self.head_dim)

    def keep(self, units: Sequence[int]) -> None:
        """Physically keep only ``units`` (in this order): q/k/v rows and output-projection columns."""
        query, values = torch.tensor(self.query_rows(units)), torch.tensor(self.value_rows(units))
        q, k, v, o = (self.layer(i) for i in range(4))
        for linear, rows in ((q, query), (k, values), (v, values)):
            linear.weight = nn.Parameter(linear.weight.data[rows].clone())
            if linear.bias is not None:
                linear.bias = nn.Parameter(linear.bias.data[rows].clone())
            linear.out_features = len(rows)
        o.weight = nn.Parameter(o.weight.data[:, query].clone())
        o.in_features = len(query)
        self._count(self.module, len(units) * self.queries)


def heads_of(module: nn.Module) -> Heads | None:
    """The heads view of ``module``, or None when it is not an attention module hwprune prunes in heads."""
    if isinstance(module, HeadAttention):
        return Heads(module, ("q_proj", "k_proj", "v_proj", "out_proj"), head_dim=module.head_dim,
                     units=module.num_heads, queries=1, fixed_hidden=False, causal=False, _count=_set_num_heads)
    return next((heads for plugin in loaded() if (heads := plugin.heads(module)) is not None), None)


def head_modules(model: nn.Module) -> dict[str, Heads]:
    """Every attention module of ``model`` prunable in heads, by module name."""
    return {name: heads for name, module in model.named_modules() if (heads := heads_of(module)) is not None}


def group_heads(model: nn.Module, group_id: str) -> Heads:
    """The heads view of a heads group's module (``NAME:heads``)."""
    heads = heads_of(model.get_submodule(group_id.removesuffix(HEADS_SUFFIX)))
    if heads is None:
        raise PlanError(f"group {group_id}: its module is not an attention module hwprune prunes in heads")
    return heads


def _rows(units: Sequence[int], width: int) -> list[int]:
    return [u * width + d for u in units for d in range(width)]


def _set_num_heads(module: nn.Module, heads: int) -> None:
    module.num_heads = heads
