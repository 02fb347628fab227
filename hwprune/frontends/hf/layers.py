"""transformers' layers as the graph stage sees them: attention pruned in heads, the hidden size pruned at the
ends of the layers traced as one op, RMSNorm silenced exactly (the graph's plugin for transformers,
``graph.plugins``).

Attention (one view, :class:`~hwprune.graph.heads.Heads`, for groups, importance, latency and surgery):

- Llama, Qwen2, Qwen3 and Mistral attention: grouped-query, ``num_key_value_groups`` query heads share one
  key/value head (``repeat_kv`` pairs query head h with key/value head h // groups), so a unit is one key/value
  head with its query heads and pruning keeps the ratio; RoPE and Qwen3's q_norm/k_norm act within a head, so
  slicing whole heads is exact. Their forward reads only ``head_dim`` and ``num_key_value_groups``;
- BERT and RoBERTa self-attention (``self.query/key/value`` and ``output.dense``), one head a unit;
  ``num_attention_heads`` and ``all_head_size`` are updated; the output width (the hidden size) is kept;
- ViT attention (``q_proj/k_proj/v_proj/o_proj``, one key/value head per query head), one head a unit; its
  forward reads only ``head_dim``; the hidden size is kept, like BERT's.

The hidden size (residual width) of the Llama-style decoders crosses the whole model: the token embedding writes
it, every layer's RMSNorms scale it, the q/k/v and gate/up projections read it, o_proj and down_proj add to it,
the final norm and lm_head read it (SliceGPT and Minitron prune it). torch-pruning follows the embedding and the
linear layers itself; two pieces it cannot:

- the grouped-query attention, traced as one op (``graph.opaque``: torch-pruning's index walk through RoPE and
  repeat_kv never finished): :class:`AttentionEndsPruner` prunes its ends, the q/k/v projections' inputs and
  o_proj's outputs, while its inner width stays whole heads (a group of its own);
- RMSNorm, traced as one op too (inside it a mean over the channels, which the index walk would pass as
  element-wise): :class:`RMSNormPruner` slices its weight. It normalises over the channels that remain, so
  removing channels changes every norm's output even where they are zero: the group is never exact, but
  :func:`silence_norm` computes what removal does, so importance and the search see the real output change.

GPT-2's attention splits q, k and v from one fused projection (``c_attn``): it is traced as one op and kept at
its width. Classes are looked up only once their modeling file is imported (a model of them was loaded).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hwprune.graph.depgraph.pruners import ChannelPruner
from hwprune.graph.heads import Heads
from hwprune.graph.plugins import Plugin, Silencer

# (family, class) of transformers' modeling files
GROUPED_QUERY = (("llama", "LlamaAttention"), ("qwen2", "Qwen2Attention"), ("qwen3", "Qwen3Attention"),
                 ("mistral", "MistralAttention"))
SELF_ATTENTION = (("bert", "BertAttention"), ("roberta", "RobertaAttention"))
MULTI_HEAD = (("vit", "ViTAttention"),)
# RMSNorms of the grouped-query families; each reads ``weight`` and ``variance_epsilon`` only (transformers 5.24)
RMS_NORMS = (("llama", "LlamaRMSNorm"), ("qwen2", "Qwen2RMSNorm"), ("qwen3", "Qwen3RMSNorm"),
             ("mistral", "MistralRMSNorm"))
FIXED_WIDTH = (("gpt2", "GPT2Attention"),)


def _loaded(classes: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    found = (getattr(sys.modules.get(f"transformers.models.{family}.modeling_{family}"), name, None)
             for family, name in classes)
    return tuple(cls for cls in found if cls is not None)


def _unread(module: nn.Module, heads: int) -> None:
    """Grouped-query attention reads its head count from the projections' shapes (``view(..., -1, head_dim)``)."""


def _set_attention_heads(module: nn.Module, heads: int) -> None:
    """ViT's forward reads only ``head_dim`` (``view(..., -1, head_dim)``); the count is kept true for readers."""
    module.num_attention_heads = heads


def _set_bert_heads(module: nn.Module, heads: int) -> None:
    module.self.num_attention_heads = heads
    module.self.all_head_size = heads * module.self.attention_head_size


def heads_of(module: nn.Module) -> Heads | None:
    """The heads view of a transformers attention module, or None."""
    if isinstance(module, _loaded(GROUPED_QUERY)):
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


def _kept(width: int, removed: Sequence[int]) -> list[int]:
    gone = set(removed)
    return [i for i in range(width) if i not in gone]


def _sliced(parameter: nn.Parameter, keep: list[int], dim: int) -> nn.Parameter:
    return nn.Parameter(parameter.data.index_select(dim, torch.tensor(keep, dtype=torch.long)).clone(),
                        requires_grad=parameter.requires_grad)


class RMSNormPruner(ChannelPruner):
    """An RMSNorm's channels are its weight's entries; its input and output are one width."""

    def prune_out(self, layer: nn.Module, removed: Sequence[int]) -> None:
        layer.weight = _sliced(layer.weight, _kept(layer.weight.shape[0], removed), 0)

    prune_in = prune_out

    def out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]

    in_channels = out_channels


class AttentionEndsPruner(ChannelPruner):
    """A grouped-query attention's input channels (q/k/v projections' inputs) and output channels (o_proj's
    outputs): two separate widths for torch-pruning (no intra-layer coupling), one hidden size in the model."""

    def prune_in(self, layer: nn.Module, removed: Sequence[int]) -> None:
        heads = heads_of(layer)
        keep = _kept(heads.layer(0).in_features, removed)
        for linear in (heads.layer(i) for i in range(3)):
            linear.weight = _sliced(linear.weight, keep, 1)
            linear.in_features = len(keep)

    def prune_out(self, layer: nn.Module, removed: Sequence[int]) -> None:
        out = heads_of(layer).layer(3)
        keep = _kept(out.out_features, removed)
        out.weight = _sliced(out.weight, keep, 0)
        if out.bias is not None:
            out.bias = _sliced(out.bias, keep, 0)
        out.out_features = len(keep)

    def out_channels(self, layer: nn.Module) -> int:
        return heads_of(layer).layer(3).out_features

    def in_channels(self, layer: nn.Module) -> int:
        return heads_of(layer).layer(0).in_features


@torch.no_grad()
def silence_norm(norm: nn.Module, dropped: Sequence[int]) -> Callable[[], None]:
    """Make ``norm`` compute, on an input whose ``dropped`` channels are zero, what it computes once they are
    removed; returns the undo. The mean of squares over all n channels is then k/n of the mean over the k kept,
    so the dropped weights go to zero, the kept ones are scaled by sqrt(k/n) and the epsilon by k/n:
    w sqrt(k/n) x / sqrt(S/n + eps k/n) = w x / sqrt(S/k + eps), the pruned norm's output."""
    weight, eps = norm.weight, norm.variance_epsilon
    saved = weight.detach().clone()
    total = weight.shape[0]
    fraction = (total - len(set(dropped))) / total
    weight.mul_(math.sqrt(fraction)).index_fill_(0, torch.tensor(sorted(dropped), dtype=torch.long), 0)
    norm.variance_epsilon = eps * fraction

    @torch.no_grad()
    def restore() -> None:
        weight.copy_(saved)
        norm.variance_epsilon = eps

    return restore


def _ends() -> dict[type, ChannelPruner]:
    pruners: dict[type, ChannelPruner] = dict.fromkeys(_loaded(RMS_NORMS), RMSNormPruner())
    pruners.update(dict.fromkeys(_loaded(GROUPED_QUERY), AttentionEndsPruner()))
    return pruners


def _norms() -> dict[type, Silencer]:
    return dict.fromkeys(_loaded(RMS_NORMS), silence_norm)


PLUGIN = Plugin(heads=heads_of, ends=_ends, norms=_norms, fixed_width=lambda: dict.fromkeys(_loaded(FIXED_WIDTH), -1))
