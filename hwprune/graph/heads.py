"""Modules whose inner width is whole heads: one view of them for the analyzer, importance, latency and surgery.

An attention module mixes its heads only in its output projection, so one head (its q/k/v rows and the output
projection's columns) can be removed whole, and exactly when its value rows are zero. Modules differ in their
projections' names and in the attributes their forward reads; :class:`Heads` hides that, so that groups,
importance, the latency model and pruning have one code path for all of them:

- :class:`~hwprune.graph.attention.HeadAttention` (built in code or converted from ``nn.MultiheadAttention``);
- transformers' Llama, Qwen2, Qwen3 and Mistral attention: grouped-query, ``num_key_value_groups`` query heads
  share one key/value head (``repeat_kv`` pairs query head h with key/value head h // groups), so a unit is one
  key/value head with its query heads and pruning keeps the ratio; RoPE and Qwen3's q_norm/k_norm act within a
  head, so slicing whole heads is exact. Their forward reads only ``head_dim`` and ``num_key_value_groups``, so
  their ends (the model's hidden size) are pruned too, by the hidden-size group (``graph.hidden``);
- transformers' BERT and RoBERTa self-attention (``BertAttention``: ``self.query/key/value`` and
  ``output.dense``), one head a unit; ``num_attention_heads`` and ``all_head_size`` are updated;
- transformers' ViT attention (``ViTAttention``: ``q_proj/k_proj/v_proj/o_proj``, one key/value head per query
  head), one head a unit; its forward reads only ``head_dim``. Like BERT's, its output width (the hidden size) is
  kept.

transformers' modules are looked up only once their modeling file is imported (a model of them was loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.attention import HeadAttention

HEADS_SUFFIX = ":heads"
# transformers' grouped-query attentions and self-attentions: (family, class)
GROUPED_QUERY = (("llama", "LlamaAttention"), ("qwen2", "Qwen2Attention"), ("qwen3", "Qwen3Attention"),
                 ("mistral", "MistralAttention"))
SELF_ATTENTION = (("bert", "BertAttention"), ("roberta", "RobertaAttention"))
# transformers' attentions with one key/value head per query head in q_proj/k_proj/v_proj/o_proj (ViT)
MULTI_HEAD = (("vit", "ViTAttention"),)


@dataclass(frozen=True)
class Heads:
    """A view of one attention module as it is now: ``units`` prunable units of ``queries`` query heads of
    ``head_dim`` each (and one key/value head each). ``projections`` are the q, k, v and output projections'
    names relative to the module. ``fixed_hidden``: the output projection's width (the model's hidden size)
    is kept (BERT's: its LayerNorm hidden size is not pruned yet); HeadAttention's is pruned like any linear's,
    the grouped-query attentions' through their ends (``graph.hidden``).
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
    if isinstance(module, grouped_query_types()):
        dim = module.head_dim
        return Heads(module, ("q_proj", "k_proj", "v_proj", "o_proj"), head_dim=dim,
                     units=module.k_proj.out_features // dim, queries=module.num_key_value_groups,
                     fixed_hidden=False, causal=bool(getattr(module, "is_causal", True)), _count=_unread)
    if isinstance(module, _loaded(MULTI_HEAD)):
        dim = module.head_dim
        return Heads(module, ("q_proj", "k_proj", "v_proj", "o_proj"), head_dim=dim,
                     units=module.q_proj.out_features // dim, queries=1, fixed_hidden=True,
                     causal=bool(getattr(module, "is_causal", False)), _count=_set_attention_heads)
    if isinstance(module, _loaded(SELF_ATTENTION)) and not getattr(module, "is_cross_attention", False):
        dim = module.self.attention_head_size
        return Heads(module, ("self.query", "self.key", "self.value", "output.dense"), head_dim=dim,
                     units=module.self.query.out_features // dim, queries=1, fixed_hidden=True,
                     causal=bool(getattr(module.self, "is_causal", False)), _count=_set_bert_heads)
    return None


def head_modules(model: nn.Module) -> dict[str, Heads]:
    """Every attention module of ``model`` prunable in heads, by module name."""
    return {name: heads for name, module in model.named_modules() if (heads := heads_of(module)) is not None}


def group_heads(model: nn.Module, group_id: str) -> Heads:
    """The heads view of a heads group's module (``NAME:heads``)."""
    heads = heads_of(model.get_submodule(group_id.removesuffix(HEADS_SUFFIX)))
    if heads is None:
        raise PlanError(f"group {group_id}: its module is not an attention module hwprune prunes in heads")
    return heads


def grouped_query_types() -> tuple[type, ...]:
    """transformers' grouped-query attention classes among those loaded."""
    return _loaded(GROUPED_QUERY)


def _rows(units: Sequence[int], width: int) -> list[int]:
    return [u * width + d for u in units for d in range(width)]


def _loaded(classes: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    found = (getattr(sys.modules.get(f"transformers.models.{family}.modeling_{family}"), name, None)
             for family, name in classes)
    return tuple(cls for cls in found if cls is not None)


def _set_num_heads(module: nn.Module, heads: int) -> None:
    module.num_heads = heads


def _unread(module: nn.Module, heads: int) -> None:
    """Grouped-query attention reads its head count from the projections' shapes (``view(..., -1, head_dim)``)."""


def _set_attention_heads(module: nn.Module, heads: int) -> None:
    """ViT's forward reads only ``head_dim`` (``view(..., -1, head_dim)``); the count is kept true for readers."""
    module.num_attention_heads = heads


def _set_bert_heads(module: nn.Module, heads: int) -> None:
    module.self.num_attention_heads = heads
    module.self.all_head_size = heads * module.self.attention_head_size
