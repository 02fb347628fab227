"""Coupled channel groups: the sets of channels that must be removed together.

A group is built from one torch-pruning group (a root layer's output channels and every
dependent slice: BN, residual partners, concat offsets, flatten expansion, consumer inputs)
or, for attention, from one module whose inner width is whole heads (``graph.heads``: its
units). hwprune adds what the search and the user need: why the channels are coupled, whether
they may be pruned and why not, how much of the model's FLOPs and parameters they touch, and
the constraints a keep-set must meet (``repeat`` for grouped convolutions).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from hwprune.errors import UnsupportedOpError
from hwprune.graph import depgraph as tp
from hwprune.graph.capture import Capture
from hwprune.graph.depgraph import OPTYPE, FlattenIndexMapping
from hwprune.graph.depgraph.index_maps import frozen_index_mapping, tolerant_index_mapping
from hwprune.graph.heads import HEADS_SUFFIX, Heads, head_modules
from hwprune.graph.opaque import fixed_width_types
from hwprune.graph.plugins import end_pruners, norm_silencers

# Autograd ops that mix channels, so a channel cannot be removed in front of them without changing
# every output. Reductions are listed separately: they are fine unless they reduce the channel dim.
CHANNEL_MIXING_OPS = {
    "SoftmaxBackward0", "LogSoftmaxBackward0", "SortBackward0", "FlipBackward0", "CumsumBackward0",
    "GatherBackward0", "IndexSelectBackward0", "BmmBackward0", "MmBackward0", "TopkBackward0",
    "LinalgVectorNormBackward0", "NormBackward1", "ChannelShuffleBackward0", "PixelShuffleBackward0",
}
REDUCTION_OPS = {"MeanBackward1", "SumBackward1", "StdBackward0", "VarBackward0", "AmaxBackward0",
                 "MaxBackward1", "MinBackward1", "LogsumexpBackward0"}
KIND_PRIORITY = ("heads", "concat", "residual", "depthwise", "grouped", "flatten", "norm", "embedding", "plain")


@dataclass
class ChannelGroup:
    """One set of coupled channels; ``id`` is the root layer's name (``:heads`` for attention)."""

    id: str
    channels: int
    kind: str
    couplings: list[str]
    layers: list[str]
    prunable: bool
    reason: str | None = None
    repeat: int = 1
    exact_removal: bool = True
    flops_share: float = 0.0
    params_share: float = 0.0
    producers: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)  # layer -> its channels (out or in) in the group

    def to_json(self) -> dict:
        return {"id": self.id, "channels": self.channels, "kind": self.kind, "couplings": self.couplings,
                "layers": self.layers, "producers": self.producers, "positions": self.positions,
                "prunable": self.prunable,
                "reason": self.reason, "repeat": self.repeat, "exact_removal": self.exact_removal,
                "flops_share": round(self.flops_share, 6), "params_share": round(self.params_share, 6)}


def channel_groups(cap: Capture, exclude: Iterable[str] = (), strict: bool = True) -> list[ChannelGroup]:
    """All coupled channel groups of a captured model.

    ``exclude`` holds glob patterns of layer names whose channels must stay. With ``strict``, a
    channel-mixing op on a prunable path raises :class:`UnsupportedOpError`; otherwise that group
    is reported as not prunable, with the op as the reason.
    """
    patterns = list(exclude)
    attentions = head_modules(cap.model)
    graph = cap.dependency_graph
    roots = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    groups = []
    visited: set[nn.Module] = set()
    with tolerant_index_mapping(graph.hwprune_unmapped), frozen_index_mapping(graph):
        for module in _split_producers_first(cap):
            if not isinstance(module, roots) or module in visited:
                continue
            pruner = graph.get_pruner_of_module(module)
            channels = pruner.get_out_channels(module) if pruner is not None else None
            if channels is None:
                continue
            try:
                dg_group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
            except Exception as exc:  # torch-pruning cannot follow this layer's channels
                visited.add(module)
                groups.append(_unformed_group(cap, module, channels, exc))
                continue
            visited.update(dep.target.module for dep, _ in dg_group if graph.is_out_channel_pruning_fn(dep.handler))
            groups.append(_from_dependency_group(cap, dg_group, patterns, strict, attentions))
    groups.extend(_head_groups(cap, patterns, attentions))
    return groups


@dataclass
class Found:
    """What the members of one dependency group tell about it, as the handlers find it."""

    couplings: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)  # why it cannot be pruned (none: prunable)
    exact: bool = True  # removing zeroed channels leaves the outputs unchanged
    embeddings: list[str] = field(default_factory=list)  # token embeddings writing it (a decoder's hidden size)


def _on_elementwise(cap: Capture, dep, found: Found) -> None:
    op = dep.target.grad_fn.name()
    if op.startswith(("AddBackward", "SubBackward")):
        found.couplings.add("residual")
    mixing = _mixing_reason(op, dep.target.grad_fn)
    if mixing:
        found.reasons.append(f"unsupported op {op} ({mixing}) after {cap.module_name(dep.source.module)}"
                             + _in(cap.dependency_graph, dep.target))


def _on_concat(cap: Capture, dep, found: Found) -> None:
    found.couplings.add("concat")


def _on_split(cap: Capture, dep, found: Found) -> None:
    found.couplings.add("split")
    found.reasons.append("passes a torch.split/chunk whose sizes are fixed in the model's code")


def _on_norm(cap: Capture, dep, found: Found) -> None:
    found.couplings.add("norm")
    found.exact = False  # the norm's statistics run over these channels: removal is never exact


def _on_embedding(cap: Capture, dep, found: Found) -> None:
    found.couplings.add("embedding")
    found.embeddings.append(cap.module_name(dep.target.module))


def _on_slice(cap: Capture, dep, found: Found) -> None:
    bounds = _channel_slice(dep.target)
    if bounds:
        found.reasons.append(f"passes a slice [:, {bounds}] along channels fixed in the model's code"
                             + _in(cap.dependency_graph, dep.target))


# What a group member of each op type tells about the group (torch-pruning's op types; the rest say nothing).
HANDLERS: dict[object, Callable[[Capture, object, Found], None]] = {
    OPTYPE.ELEMENTWISE: _on_elementwise, OPTYPE.CONCAT: _on_concat, OPTYPE.SPLIT: _on_split,
    OPTYPE.UNBIND: _on_split, OPTYPE.LN: _on_norm, OPTYPE.GN: _on_norm, OPTYPE.EMBED: _on_embedding,
    OPTYPE.SLICE: _on_slice,
}


def _from_dependency_group(cap: Capture, dg_group: tp.Group, patterns: list[str],
                           strict: bool, attentions: dict[str, Heads]) -> ChannelGroup:
    graph = cap.dependency_graph
    root = dg_group[0].dep.target.module
    root_name = cap.module_name(root)
    found = Found()
    couplings, reasons, embeddings = found.couplings, found.reasons, found.embeddings
    layers: list[str] = []
    producers: list[str] = []
    positions: dict[str, int] = {}
    repeat = 1
    passes_ends = False
    fixed, norms = fixed_width_types(), tuple(norm_silencers())
    pieces: dict[int, dict[int, set[int]]] = {}  # split call -> piece -> the root channels it holds
    aliased = _aliased_layer(cap, dg_group)
    if aliased is not None:
        reasons.append(f"{aliased} holds some of its channels more than once in the group (a tensor combined with "
                       "a function of itself), so they cannot be removed one by one")
    for item in dg_group.items:
        dep = item.dep
        target = dep.target
        module = target.module
        out_pruning = graph.is_out_channel_pruning_fn(dep.handler)
        if target.name in graph.hwprune_unmapped and graph.hwprune_unmapped_sides.get(
                target.name, "both") in ("both", "out" if out_pruning else "in"):
            reasons.append(f"torch-pruning could not map channels at {_at(graph, target)} "
                           f"({graph.hwprune_unmapped[target.name]})")
        if fixed and isinstance(module, fixed):
            reasons.append(f"passes {cap.module_name(module)} ({type(module).__name__}), kept at its width")
        if target.type == OPTYPE.RESHAPE and not any(isinstance(m, FlattenIndexMapping) for m in dep.index_mapping):
            moved = _reshape_moves_channels(target.grad_fn)
            if moved:
                reasons.append(f"passes a reshape {moved} that splits or reorders channels ({_at(graph, target)})")
        if target.type == OPTYPE.OUTPUT or (out_pruning and not target.outputs):
            found.reasons.append("feeds a model output")
        elif target.name in graph.hwprune_pieces:
            found.couplings.add("split")
            piece = graph.hwprune_pieces[target.name]
            pieces.setdefault(piece.call, {}).setdefault(piece.index, set()).update(int(i) for i in item.root_idxs)
        elif target.name not in graph.hwprune_spatial:  # a split or concat along height/width passes channels
            handler = HANDLERS.get(target.type)
            if handler is not None:
                handler(cap, dep, found)
            elif norms and isinstance(module, norms):
                found.couplings.add("norm")
                found.exact = False  # RMSNorm: its mean of squares runs over these channels
        ends = _attention_ends(cap, module, out_pruning, attentions)
        if ends:  # an attention traced whole: its projections hold the channels
            passes_ends = True
            for name, width in ends.items():
                layers.append(name)
                positions[name] = width
                if out_pruning:
                    producers.append(name)
        elif isinstance(module, nn.Module) and target.type not in (OPTYPE.ELEMENTWISE, OPTYPE.CONCAT,
                                                                 OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.OUTPUT,
                                                                 OPTYPE.SLICE, OPTYPE.UNBIND, OPTYPE.EXPAND):
            name = cap.module_name(module)
            if name not in layers:
                layers.append(name)
            if out_pruning and _has_weight(module) and name not in producers:
                producers.append(name)
            if _has_weight(module) and (out_pruning or name not in producers):
                positions[name] = max(positions.get(name, 0), len(item.idxs))
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d) and module.groups > 1:
            if module.groups == module.in_channels == module.out_channels:
                couplings.add("depthwise")
            else:
                couplings.add("grouped")
                repeat = max(repeat, module.groups)
        if any(isinstance(m, FlattenIndexMapping) for m in dep.index_mapping):
            couplings.add("flatten")
    channels = graph.get_out_channels(root)
    for call in sorted(pieces):
        blocks, reason = _piece_blocks(graph, call, pieces[call], int(channels or 0))
        if reason:
            reasons.append(reason)
        elif (channels or 0) % math.lcm(repeat, blocks):
            reasons.append(f"a torch.chunk({blocks}) and a grouped convolution ({repeat} groups) tie "
                           f"{channels} channels into blocks that do not divide them")
        else:
            repeat = math.lcm(repeat, blocks)
    excluded = [p for p in producers if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]
    if excluded:
        reasons.append(f"excluded by the user ({', '.join(excluded)})")
    hidden = _fixed_hidden(attentions, producers)
    if hidden is not None:
        reasons.append(f"the hidden size of a transformers model (written by {hidden}) is kept")
    attention = _enclosing_attention(attentions, producers)
    if attention is not None:
        reasons = [f"inner width of attention {attention}: pruned in whole heads ({attention}{HEADS_SUFFIX})"]
    unsupported = [r for r in reasons if r.startswith("unsupported op")]
    if strict and unsupported and not any(r.startswith(("feeds", "excluded")) for r in reasons):
        raise UnsupportedOpError(
            f"group {root_name}: {unsupported[0]}; exclude it with --exclude '{root_name}' "
            "or pass --skip-unsupported to keep such groups unpruned")
    if channels is not None and channels < 2:
        reasons.append("fewer than 2 channels")
    if passes_ends and len(embeddings) == 1:
        root_name = embeddings[0]  # a decoder's hidden size, named by the embedding that writes it
    return ChannelGroup(
        id=root_name, channels=int(channels or 0), kind=_primary_kind(couplings), couplings=sorted(couplings),
        layers=layers, producers=producers, positions=positions, prunable=not reasons,
        reason="; ".join(dict.fromkeys(reasons)) or None,
        repeat=repeat, exact_removal=found.exact, flops_share=_share(layers, cap.layer_flops, cap.flops),
        params_share=_params_share(cap, layers))


def _at(graph: tp.DependencyGraph, node) -> str:
    """A traced op as the user's model names it: a module of the model by itself (its ONNX node, for a converted
    model), an op between modules by torch-pruning's name and the module that computed it."""
    where = graph.hwprune_origins.get(node.name)
    if where and node.module in graph._module2name:
        return where
    return node.name + _in(graph, node)


def _in(graph: tp.DependencyGraph, node) -> str:
    where = graph.hwprune_origins.get(node.name)
    return f", in {where}" if where else ""


def _split_producers_first(cap: Capture) -> list[nn.Module]:
    """The traced modules, those whose output is split along channels first: the group rooted at
    the split tensor's producer holds every piece, where one rooted at a reader of one piece (a
    residual partner) would hold that piece alone and leave the others without a group."""
    graph = cap.dependency_graph
    first: list[nn.Module] = []
    for node in graph.module2node.values():
        if node.name not in graph.hwprune_pieces:
            continue
        stack = list(node.inputs)
        while stack:
            source = stack.pop()
            if isinstance(source.module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
                if source.module not in first:
                    first.append(source.module)
            elif source.type in (OPTYPE.ELEMENTWISE, OPTYPE.BN):
                stack.extend(source.inputs)
    return first + [m for m in graph.module2node if m not in first]


def _piece_blocks(graph: tp.DependencyGraph, call: int, held: dict[int, set[int]],
                  channels: int) -> tuple[int, str | None]:
    """For a split the group passes: the number of equal blocks its root channels must keep equal
    counts in, or the reason it cannot be pruned (fixed sizes, unequal pieces, pieces held by
    other groups)."""
    piece = next(p for p in graph.hwprune_pieces.values() if p.call == call)
    sizes = piece.sizes
    if not piece.adaptive:
        return 1, f"passes {piece.describe()}, whose sizes are fixed in the model's code"
    if len(set(sizes)) != 1:
        return 1, f"passes {piece.describe()} of unequal pieces {list(sizes)}"
    size = sizes[0]
    expected = {k: set(range(k * size, (k + 1) * size)) for k in range(len(sizes))}
    if sum(sizes) != channels or held != expected:
        return 1, (f"holds only part of {piece.describe()} (its pieces are not blocks of this group's "
                   f"{channels} channels)")
    return len(sizes), None


def _aliased_layer(cap: Capture, dg_group: tp.Group) -> str | None:
    """The first layer that holds only some channels of the group, if any: torch-pruning keeps one
    root per layer channel, so a layer channel that is two channels of the group (a tensor combined
    with a function of itself) hides one of them, and removing either removes both. Behind a traced
    split a layer may hold some pieces only; a reader holding a channel twice (the concat of ``y``
    and ``y + f(y)``) loses both copies with it, exactly."""
    graph = cap.dependency_graph
    channels = len(dg_group.items[0].root_idxs)
    if any(item.dep.target.name in graph.hwprune_pieces for item in dg_group.items):
        return None
    for item in dg_group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or next(module.parameters(), None) is None:
            continue
        if len({int(c) for c in item.root_idxs}) != channels:
            return cap.module_name(module)
    return None


def _channel_slice(node) -> str | None:
    """``"start:end"`` for a slice along channels written in the model's code (its bounds stay as
    written when the group shrinks), None for one along another dim."""
    grad_fn = node.grad_fn
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    dim = getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dim is None:
        return f"{node.module.start}:{node.module.end}"
    rank = len(sizes)
    dim = dim - 2**64 if dim >= 2**63 else dim
    if dim % rank != (rank - 1 if rank == 3 else 1):
        return None
    return f"{node.module.start}:{node.module.end}"


def _unformed_group(cap: Capture, module: nn.Module, channels: int, exc: Exception) -> ChannelGroup:
    name = cap.module_name(module)
    return ChannelGroup(id=name, channels=int(channels), kind="plain", couplings=[], layers=[name],
                        producers=[name], prunable=False,
                        reason=f"torch-pruning could not follow its channels ({type(exc).__name__}: {exc})",
                        flops_share=_share([name], cap.layer_flops, cap.flops), params_share=_params_share(cap, [name]))


def _head_groups(cap: Capture, patterns: list[str], attentions: dict[str, Heads]) -> list[ChannelGroup]:
    """One group per attention module: its units (heads; key/value heads with grouped-query attention)."""
    groups = []
    for name, heads in attentions.items():
        layers = [f"{name}.{proj}" for proj in heads.projections]
        excluded = any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        unit = "key/value heads" if heads.queries > 1 else "heads"
        reason = "excluded by the user" if excluded else (f"fewer than 2 {unit}" if heads.units < 2 else None)
        groups.append(ChannelGroup(
            id=f"{name}{HEADS_SUFFIX}", channels=heads.units, kind="heads", couplings=["heads"], layers=layers,
            producers=layers[:3], prunable=reason is None, reason=reason,
            flops_share=_share([name], cap.layer_flops, cap.flops), params_share=_params_share(cap, [name])))
    return groups


def _enclosing_attention(attentions: dict[str, Heads], producers: list[str]) -> str | None:
    """The attention module whose q/k/v projections are this group's only producers, if any."""
    owners = {f"{name}.{proj}": name for name, heads in attentions.items() for proj in heads.projections[:3]}
    found = {owners.get(name) for name in producers}
    return found.pop() if len(producers) >= 2 and len(found) == 1 and None not in found else None


def _attention_ends(cap: Capture, module: object, out_pruning: bool, attentions: dict[str, Heads]
                    ) -> dict[str, int]:
    """For an attention traced as one op and pruned at its ends (transformers' grouped-query attention), the
    projections at the end a group holds, with their widths: o_proj's outputs, or the q/k/v projections' inputs;
    empty for any other module."""
    name = cap.module_name(module)
    if type(module) not in end_pruners() or name not in attentions:
        return {}
    heads = attentions[name]
    if out_pruning:
        return {f"{name}.{heads.projections[3]}": heads.layer(3).out_features}
    return {f"{name}.{proj}": heads.layer(i).in_features for i, proj in enumerate(heads.projections[:3])}


def _fixed_hidden(attentions: dict[str, Heads], producers: list[str]) -> str | None:
    """The output projection among ``producers`` of an attention whose hidden size is kept, if any."""
    fixed = {f"{name}.{heads.projections[3]}" for name, heads in attentions.items() if heads.fixed_hidden}
    return next((name for name in producers if name in fixed), None)


def _reshape_moves_channels(grad_fn: object) -> str | None:
    """``"in -> out"`` when a view/reshape does not keep the channel dim whole, else None.

    The channel dim is dim 1 (channels first) or the last dim (channels last, as in window
    transformers and in linear layers applied to 3-D/4-D inputs); merging or splitting only the
    other dims keeps every channel intact.
    """
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    metadata = getattr(grad_fn, "_input_metadata", None)
    if sizes is None or not metadata:
        return None
    before, after = [int(d) for d in sizes], [int(d) for d in metadata[0].shape]
    channels_first = len(before) == 4 and len(after) >= 2 and after[1] == before[1]
    channels_last = bool(after) and after[-1] == before[-1]
    return None if channels_first or channels_last else f"{before} -> {after}"


def _multiplies_a_weight(grad_fn: object) -> bool:
    """A matmul with a parameter (a linear layer on a >2-D input), not between two activations."""
    for parent, _ in getattr(grad_fn, "next_functions", ()):
        if parent is None:
            continue
        if parent.name() == "torch::autograd::AccumulateGrad":
            return True
        if parent.name() in ("TBackward0", "TransposeBackward0", "PermuteBackward0") and any(
                p is not None and p.name() == "torch::autograd::AccumulateGrad" for p, _ in parent.next_functions):
            return True
    return False


def _mixing_reason(op: str, grad_fn: object) -> str | None:
    if op in ("MmBackward0", "BmmBackward0") and _multiplies_a_weight(grad_fn):
        return None
    if op in CHANNEL_MIXING_OPS:
        return "mixes channels"
    if op in REDUCTION_OPS:
        sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
        dims = getattr(grad_fn, "_saved_dim", None)
        if sizes is None or dims is None:
            return "reduces over all dims"
        rank = len(sizes)
        dims = [d % rank for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        channel_dim = 1 if rank == 4 else rank - 1
        if channel_dim in dims:
            return "reduces over the channel dim"
    return None


def _has_weight(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), nn.Parameter)


def _primary_kind(couplings: set[str]) -> str:
    if "split" in couplings:
        couplings = couplings | {"concat"}
    return next(kind for kind in KIND_PRIORITY if kind in couplings or kind == "plain")


def _share(layers: list[str], layer_flops: dict[str, int], total: int) -> float:
    return sum(layer_flops.get(name, 0) for name in layers) / total if total else 0.0


def _params_share(cap: Capture, layers: list[str]) -> float:
    modules = dict(cap.model.named_modules())
    total = cap.params or 1
    return sum(p.numel() for name in layers if name in modules for p in modules[name].parameters()) / total
