"""Physical pruning: remove channels and heads from the module itself, never by masking.

torch-pruning does the per-layer surgery (weights, biases, BN statistics, depthwise ``groups``,
concat offsets, flatten expansion); hwprune validates the whole request first, so a bad
keep-set fails before any layer is touched, and removes attention heads itself.
:class:`PruneChannels` is the pass that does this for a plan's width section.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.depgraph.index_maps import frozen_index_mapping, tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup
from hwprune.graph.heads import group_heads
from hwprune.plan import WidthDecision
from hwprune.transform.passes import Pass, Surgery, TransformError


class PruneChannels(Pass[Surgery]):
    """Every group of the plan's width section down to its kept indices (a segment's to its readers'
    union); records, for the reader-selection pass, which inputs of each reader it removed."""

    name = "prune-channels"

    def requires(self, surgery: Surgery) -> None:
        for gid, decision in surgery.width.items():
            check_decision(surgery.analysis, gid, decision)
            if decision.readers is None:
                continue
            segment = surgery.segments.get(gid)
            layers = set() if segment is None else {r.layer for r in segment.readers}
            if set(decision.readers) != layers:
                raise PlanError(f"group {gid}: the plan's readers ({', '.join(sorted(decision.readers))}) are not the "
                                f"model's ({', '.join(sorted(layers)) or 'none: not a segment'})")

    def call(self, surgery: Surgery) -> bool:
        analysis = surgery.analysis
        readers = {layer for d in surgery.width.values() if d.readers for layer in d.readers}
        if readers:
            removed = removed_inputs(analysis, surgery.width)
            surgery.removed_inputs = {layer: (input_width(analysis.model.get_submodule(layer)),
                                              removed.get(layer, set())) for layer in readers}
        prune(analysis, {gid: d.indices for gid, d in surgery.width.items()})
        return any(d.keep < d.of for d in surgery.width.values())

    def ensures(self, surgery: Surgery) -> None:
        graph = surgery.analysis.capture.dependency_graph
        for gid, decision in surgery.width.items():
            if surgery.analysis.group(gid).kind == "heads":
                width = group_heads(surgery.analysis.model, gid).units
            else:
                root = surgery.analysis.model.get_submodule(gid)
                width = graph.get_pruner_of_module(root).get_out_channels(root)
            if width != decision.keep:
                raise TransformError(f"group {gid}: {width} channels after pruning, the plan keeps {decision.keep}")


def check_decision(analysis: Analysis, gid: str, decision: WidthDecision) -> None:
    """A PlanError unless ``decision`` fits the analysed model's group ``gid``."""
    group = analysis.group(gid)
    if group.channels != decision.of:
        raise PlanError(f"group {gid}: the plan was made for {decision.of} channels, the model has {group.channels}")
    if len(decision.indices) != decision.keep:
        raise PlanError(f"group {gid}: keep is {decision.keep} but {len(decision.indices)} indices are listed")
    validate_keep(group, decision.indices)
    if decision.readers and any(not set(reads) <= set(decision.indices) for reads in decision.readers.values()):
        raise PlanError(f"group {gid}: a reader reads channels outside the group's kept indices")


def removed_inputs(analysis: Analysis, width: Mapping[str, WidthDecision]) -> dict[str, set[int]]:
    """Per layer, the input indices constrained pruning to ``width`` removes (as ``prune`` will)."""
    graph = analysis.capture.dependency_graph
    removed: dict[str, set[int]] = {}
    with frozen_index_mapping(graph):  # before pruning: no count changes yet
        for gid, decision in width.items():
            _removed_by(analysis, gid, decision, removed)
    return removed


def _removed_by(analysis: Analysis, gid: str, decision: WidthDecision, removed: dict[str, set[int]]) -> None:
    """Add the input indices that pruning group ``gid`` to ``decision`` removes, per layer."""
    graph = analysis.capture.dependency_graph
    group = analysis.group(gid)
    gone = sorted(set(range(group.channels)) - set(decision.indices))
    if not gone or group.kind == "heads":
        return
    root = analysis.model.get_submodule(gid)
    with tolerant_index_mapping(graph.hwprune_unmapped):
        dependency_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, gone)
    for item in dependency_group.items:
        module = item.dep.target.module
        if isinstance(module, nn.Module) and not graph.is_out_channel_pruning_fn(item.dep.handler):
            removed.setdefault(analysis.capture.module_name(module), set()).update(int(i) for i in item.idxs)


def input_width(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def prune(analysis: Analysis, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """Keep only ``keep[group_id]`` channels of each named group; returns the (same) pruned model.

    The model is changed in place and ``analysis`` describes the unpruned model afterwards, so it
    must not be used for a second prune. A parameter several modules share (tied word embeddings:
    the embedding's and lm_head's weight) stays one parameter (:func:`_retie`).
    """
    checked = {group_id: validate_keep(analysis.group(group_id), indices) for group_id, indices in keep.items()}
    ties = _shared_parameters(analysis.model)
    graph = analysis.capture.dependency_graph
    for group_id, kept in checked.items():
        group = analysis.group(group_id)
        if len(kept) == group.channels:
            continue
        if group.kind == "heads":
            group_heads(analysis.model, group_id).keep(kept)
            continue
        root = analysis.model.get_submodule(group_id)
        dropped = sorted(set(range(group.channels)) - set(kept))
        pruner = graph.get_pruner_of_module(root)
        with tolerant_index_mapping(graph.hwprune_unmapped):
            graph.get_pruning_group(root, pruner.prune_out_channels, dropped).prune()
    _retie(analysis.model, ties)
    return analysis.model


def pruned_copy(analysis: Analysis, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A copy of the analysed model pruned to ``keep``, its weights shared with the original where pruning
    leaves them (:func:`sharing_copy`): a 2 GB model's trial or anchor costs its pruned tensors, not a second
    2 GB."""
    return prune(analyze(sharing_copy(analysis.model), analysis.capture.example_input, analysis.name,
                         strict=False), keep)


def sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are new ``Parameter`` objects over the original's storage, and
    whose buffers (BatchNorm statistics, small) are copied. Pruning gives a module new, smaller tensors and
    the transform passes rebind a parameter's data rather than write into it, so the original stays whole;
    what is trained or handed to a user goes through :func:`unshared` first."""
    memo: dict[int, object] = {}
    for param in model.parameters():  # ties stay ties: one new Parameter per original
        memo[id(param)] = nn.Parameter(param.detach(), requires_grad=param.requires_grad)
    return copy.deepcopy(model, memo=memo)


def unshared(model: nn.Module, original: nn.Module) -> nn.Module:
    """``model`` with every tensor it still shares with ``original`` (:func:`sharing_copy`) copied, in place:
    training it or handing it to a user then never writes into the original."""
    storages = {t.untyped_storage().data_ptr() for t in (*original.parameters(), *original.buffers())}
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.untyped_storage().data_ptr() in storages:
            tensor.data = tensor.data.clone()
    return model


def _shared_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Each parameter held by more than one module (or name), as the places that hold it."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            places.setdefault(id(param), []).append((module, name))
    return [held for held in places.values() if len(held) > 1]


def _retie(model: nn.Module, ties: list[list[tuple[nn.Module, str]]]) -> None:
    """Share each tied parameter again after surgery: torch-pruning slices every module's reference to it on its
    own, so each tie now holds equal slices (checked: a tie pruned two ways is an error) of which one is kept."""
    for places in ties:
        first, *others = (getattr(module, name) for module, name in places)
        for (module, name), param in zip(places[1:], others, strict=True):
            if param is first:
                continue
            if param.shape != first.shape or not bool((param == first).all()):
                raise TransformError(f"a tied parameter ({type(module).__name__}.{name}) was pruned differently "
                                     f"in the modules sharing it ({tuple(param.shape)} against {tuple(first.shape)})")
            setattr(module, name, first)


def leading_channels(group: ChannelGroup, count: int) -> list[int]:
    """The first ``count`` channels of ``group`` (the same positions in every grouped-conv block).

    Which channels go does not change latency, so this is the keep-set for timing a width.
    """
    block = group.channels // group.repeat
    return [b * block + i for b in range(group.repeat) for i in range(count // group.repeat)]


def validate_keep(group: ChannelGroup, indices: Sequence[int]) -> list[int]:
    """Sorted keep-indices for ``group``, or a PlanError saying what is wrong with them."""
    if not group.prunable and len(indices) != group.channels:
        raise PlanError(f"group {group.id} is not prunable: {group.reason}")
    kept = sorted(int(i) for i in indices)
    if not kept:
        raise PlanError(f"group {group.id}: must keep at least one channel")
    if len(set(kept)) != len(kept):
        raise PlanError(f"group {group.id}: keep-indices repeat a channel")
    if kept[0] < 0 or kept[-1] >= group.channels:
        raise PlanError(f"group {group.id}: keep-indices must lie in [0, {group.channels})")
    if group.repeat > 1:
        block = group.channels // group.repeat
        local = [{i % block for i in kept if i // block == b} for b in range(group.repeat)]
        if any(positions != local[0] for positions in local):
            raise PlanError(
                f"group {group.id}: its channels form {group.repeat} blocks of {block} (a grouped convolution or "
                "a chunk), which need the same channel positions kept in every block")
    return kept
