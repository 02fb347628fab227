"""A pruning decision's function without surgery: silence channels, zero readers' unread columns.

A silenced channel outputs exactly 0, which is what physical removal computes, so silencing
lets importance and search see a candidate's output without changing the model for good
(sensitivity, the choice among allocations), and lets the tests check surgery against it.
An RMSNorm over the channels (a transformers decoder's hidden size) is the exception: its
statistics change with the channel count, so it is also rescaled to compute what the pruned
norm does (its plugin's silencer, ``graph.plugins``). Everything here is undone on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from hwprune.evaluate.batchnorm import recalibrate_batchnorm, restored_batchnorm
from hwprune.graph.analyze import Analysis
from hwprune.graph.depgraph.index_maps import frozen_index_mapping, tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup
from hwprune.graph.heads import group_heads, heads_of
from hwprune.graph.plugins import norm_silencers
from hwprune.graph.segments import Segment


@torch.no_grad()
def silence_channels(analysis: Analysis, group: ChannelGroup, dropped: Sequence[int]) -> Callable[[], None]:
    """Zero every producer weight of ``dropped`` channels of ``group``; returns the undo."""
    dropped = sorted(dropped)
    if not dropped:
        return lambda: None
    targets: list[tuple[torch.Tensor, int, list[int]]] = []  # tensor, dim, indices along it
    undo_norms: list[Callable[[], None]] = []
    if group.kind == "heads":  # a unit's value rows: every query head it serves then adds nothing
        heads = group_heads(analysis.model, group.id)
        value = heads.layer(2)
        targets = [(p, 0, heads.value_rows(dropped)) for p in (value.weight, value.bias) if p is not None]
    else:
        graph = analysis.capture.dependency_graph
        root = analysis.model.get_submodule(group.id)
        with tolerant_index_mapping(graph.hwprune_unmapped):
            pruning_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                                    dropped)
        norms = norm_silencers()
        for dep, idxs in pruning_group:
            silence = next((s for kind, s in norms.items() if isinstance(dep.target.module, kind)), None)
            if silence is not None:
                undo_norms.append(silence(dep.target.module, list(idxs)))
            elif graph.is_out_channel_pruning_fn(dep.handler):
                targets += _output_tensors(dep.target, list(idxs))
    saved = [(param, dim, idxs, param.index_select(dim, _index(idxs)).clone()) for param, dim, idxs in targets]
    for param, dim, idxs in targets:
        param.index_fill_(dim, _index(idxs), 0)

    @torch.no_grad()
    def restore() -> None:
        for param, dim, idxs, values in reversed(saved):
            param.index_copy_(dim, _index(idxs), values)
        for undo in reversed(undo_norms):
            undo()

    return restore


def _output_tensors(target, idxs: list[int]) -> list[tuple[torch.Tensor, int, list[int]]]:
    """The tensors that make output channels ``idxs`` of a torch-pruning node, with the dim they
    sit on: a layer's weight and bias (a transposed convolution's weight and an embedding's hold
    outputs in dim 1; an attention traced whole, its output projection's), or a bare parameter
    combined with the channels (``x * scale + shift`` outside any layer), so that silenced
    channels compute what removed ones do."""
    module = target.module
    if isinstance(module, nn.Parameter):
        return [(module, target.pruning_dim, idxs)]
    if not isinstance(module, nn.Module):
        return []
    if isinstance(module, nn.Embedding):
        return [(module.weight, 1, idxs)]
    heads = heads_of(module)
    if heads is not None:  # reached as a node only when traced whole: its ends are the hidden size
        module = heads.layer(3)
    found = []
    for name in ("weight", "bias"):
        param = getattr(module, name, None)
        if isinstance(param, torch.Tensor):
            transposed = name == "weight" and isinstance(module, nn.modules.conv._ConvTransposeNd)
            found.append((param, 1 if transposed else 0, idxs))
    return found


def _index(idxs: list[int]) -> torch.Tensor:
    return torch.tensor(idxs, dtype=torch.long)


@contextmanager
def silenced(analysis: Analysis, dropped: Mapping[str, Sequence[int]],
             recalibration: Sequence[torch.Tensor] = ()) -> Iterator[nn.Module]:
    """``analysis.model`` with ``dropped`` channels (per group id) silenced and, given
    ``recalibration`` batches, BatchNorm statistics re-estimated on them; all undone on exit."""
    model = analysis.model
    restores = []
    with restored_batchnorm(model) if recalibration else nullcontext(model):
        try:
            with frozen_index_mapping(analysis.capture.dependency_graph):
                for gid, channels in dropped.items():
                    restores.append(silence_channels(analysis, analysis.group(gid), channels))
            if recalibration:
                recalibrate_batchnorm(model, recalibration)
            yield model.eval()
        finally:
            for restore in reversed(restores):
                restore()


@contextmanager
def masked_readers(analysis: Analysis, segments: Sequence[Segment], reads: Mapping[str, Mapping[str, Sequence[int]]],
                   keep: Mapping[str, Sequence[int]]) -> Iterator[nn.Module]:
    """The unpruned model with each segment reader's unread input columns zeroed (``reads``: per
    segment, per reader layer, the group channels it reads) and the channels ``keep`` drops from
    the other groups silenced: the function an unconstrained export must compute. Restored on exit."""
    saved = []
    dropped = {gid: sorted(set(range(analysis.group(gid).channels)) - set(kept)) for gid, kept in keep.items()}
    with torch.no_grad(), silenced(analysis, dropped) as model:
        try:
            for segment in segments:
                if segment.group not in reads:
                    continue
                for reader in segment.readers:
                    weight = model.get_submodule(reader.layer).weight
                    unread = reader.unread(reads[segment.group][reader.layer])
                    saved.append((weight, unread, weight[:, unread].clone()))
                    weight[:, unread] = 0
            yield model
        finally:
            for weight, unread, values in reversed(saved):
                weight[:, unread] = values
