"""The hidden size (residual width) of transformers' Llama-style decoders as one prunable channel group.

The hidden size crosses the whole model: the token embedding writes it, every layer's RMSNorms scale it, the q/k/v
and gate/up projections read it, o_proj and down_proj add to it, the final norm and lm_head read it (SliceGPT and
Minitron prune it). torch-pruning follows the embedding and the linear layers itself; two pieces it cannot:

- the attention, traced as one op (``graph.opaque``: torch-pruning's index walk through RoPE and repeat_kv never
  finished): :class:`AttentionEndsPruner` prunes its ends, the q/k/v projections' inputs and o_proj's outputs,
  while its inner width stays whole heads (``graph.heads``, a group of its own);
- transformers' RMSNorm, a class torch-pruning does not know, traced as one op too (inside it a mean over the
  channels, which the index walk would pass as element-wise): :class:`RMSNormPruner` slices its weight.

RMSNorm normalises over the channels that remain, so removing channels changes every norm's output even where
they are zero: the group is never exact (``exact_removal`` False). Silencing can still compute what removal does
(:func:`silence_norm`), so importance and the search see the real output change.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hwprune.graph.depgraph import BasePruningFunc
from hwprune.graph.heads import grouped_query_types, heads_of

# transformers' RMSNorm classes of the grouped-query families: (family, class); each reads ``weight`` and
# ``variance_epsilon`` only (checked in transformers 5.24)
RMS_NORMS = (("llama", "LlamaRMSNorm"), ("qwen2", "Qwen2RMSNorm"), ("qwen3", "Qwen3RMSNorm"),
             ("mistral", "MistralRMSNorm"))


def rms_norm_types() -> tuple[type, ...]:
    """transformers' RMSNorm classes among those loaded."""
    found = (getattr(sys.modules.get(f"transformers.models.{family}.modeling_{family}"), name, None)
             for family, name in RMS_NORMS)
    return tuple(cls for cls in found if cls is not None)


def whole_pruners() -> dict[type, BasePruningFunc]:
    """The module types traced as one op whose channels are pruned at their ends, with their pruners."""
    pruners: dict[type, BasePruningFunc] = dict.fromkeys(rms_norm_types(), RMSNormPruner())
    pruners.update(dict.fromkeys(grouped_query_types(), AttentionEndsPruner()))
    return pruners


def _kept(width: int, removed: Sequence[int]) -> list[int]:
    gone = set(removed)
    return [i for i in range(width) if i not in gone]


def _sliced(parameter: nn.Parameter, keep: list[int], dim: int) -> nn.Parameter:
    return nn.Parameter(parameter.data.index_select(dim, torch.tensor(keep, dtype=torch.long)).clone(),
                        requires_grad=parameter.requires_grad)


class RMSNormPruner(BasePruningFunc):
    """An RMSNorm's channels are its weight's entries; its input and output are one width."""

    def __init__(self) -> None:
        super().__init__(pruning_dim=-1)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.weight = _sliced(layer.weight, _kept(layer.weight.shape[0], idxs), 0)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]

    get_in_channels = get_out_channels


class AttentionEndsPruner(BasePruningFunc):
    """A grouped-query attention's input channels (q/k/v projections' inputs) and output channels (o_proj's
    outputs): two separate widths for torch-pruning (no intra-layer coupling), one hidden size in the model."""

    def __init__(self) -> None:
        super().__init__(pruning_dim=-1)

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        heads = heads_of(layer)
        keep = _kept(heads.layer(0).in_features, idxs)
        for linear in (heads.layer(i) for i in range(3)):
            linear.weight = _sliced(linear.weight, keep, 1)
            linear.in_features = len(keep)
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        out = heads_of(layer).layer(3)
        keep = _kept(out.out_features, idxs)
        out.weight = _sliced(out.weight, keep, 0)
        if out.bias is not None:
            out.bias = _sliced(out.bias, keep, 0)
        out.out_features = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return heads_of(layer).layer(3).out_features

    def get_in_channels(self, layer: nn.Module) -> int:
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
