"""Capture a model once: dependency graph, op graph with shapes, and per-layer FLOPs.

The channel dependencies come from torch-pruning's DependencyGraph, which traces the autograd
graph of one forward and already models residual adds, concat/split offsets, flatten and
reshape index mappings; re-deriving that would only add bugs. hwprune adds what the pruning
search needs on top: a networkx view of the ops with output shapes, and FLOPs per layer from
``torch.utils.flop_counter``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwprune.errors import CaptureError
from hwprune.graph import depgraph as tp
from hwprune.graph.attention import convert_multihead_attention
from hwprune.graph.constants import channel_constants_as_parameters, constant_dims, leave_constants_alone
from hwprune.graph.depgraph import OPTYPE
from hwprune.graph.depgraph.index_maps import (
    identity_mapping,
    isolate_unmappable_concats,
    remap,
    tolerant_index_mapping,
)
from hwprune.graph.depgraph.pruners import as_customized
from hwprune.graph.opaque import opaque_types, traced_whole
from hwprune.graph.origins import recording_origins
from hwprune.graph.pieces import Piece, splits_as_slices


@dataclass
class Capture:
    """A traced model: the dependency graph hwprune prunes with and the op graph it reasons on."""

    model: nn.Module
    example_input: torch.Tensor
    dependency_graph: tp.DependencyGraph
    ops: nx.DiGraph
    layer_flops: dict[str, int] = field(default_factory=dict)
    flops: int = 0
    params: int = 0

    def module_name(self, module: nn.Module) -> str:
        return self.dependency_graph._module2name.get(module, type(module).__name__)


def capture(model: nn.Module, example_input: torch.Tensor) -> Capture:
    """Trace ``model`` on ``example_input``; raises CaptureError naming the failing module."""
    example_input = _one_tensor(example_input)
    model.eval()
    convert_multihead_attention(model)
    counter = FlopCounterMode(display=False)
    with counter:
        shapes_in, shapes = _run_recording_shapes(model, example_input)
    flops, layer_flops = _flops_by_module(counter)
    converted = channel_constants_as_parameters(model)
    graph, traced_pieces, origins, unmapped = _trace(model, example_input, shapes_in, shapes)
    dims = constant_dims(graph)
    if dims:  # torch-pruning would slice a constant along a dim that does not carry its group's channels
        hidden = leave_constants_alone(converted, [p for p, dim in dims.items() if dim is None])
        graph, traced_pieces, origins, unmapped = _trace(
            model, example_input, shapes_in, shapes, [(p, dim) for p, dim in dims.items() if dim is not None], hidden)
    graph.hwprune_origins = {node.name: origins[id(node.grad_fn)][1] for node in graph.module2node.values()
                             if id(node.grad_fn) in origins and origins[id(node.grad_fn)][0] is node.grad_fn}
    by_grad_fn = {id(grad_fn): piece for grad_fn, piece in traced_pieces}
    graph.hwprune_pieces = {node.name: by_grad_fn[id(node.grad_fn)] for node in graph.module2node.values()
                            if id(node.grad_fn) in by_grad_fn}
    graph.hwprune_spatial = _spatial_splits_and_concats(graph, shapes)
    if graph.hwprune_spatial or graph.hwprune_pieces:
        # Channel concats take their sizes from the traced shapes (torch-pruning would count a
        # slice's input, or a spatial op's summed inputs, as channels) and the mapping is redone.
        for node in graph.module2node.values():
            if node.type == OPTYPE.CONCAT:
                node.module.concat_sizes = _traced_concat_sizes(node)
                node.module.offsets = None
        unmapped.clear()
        remap(graph, unmapped)
    graph.hwprune_unmapped_sides = {}
    isolate_unmappable_concats(graph, unmapped, graph.hwprune_unmapped_sides)
    graph.hwprune_unmapped = unmapped
    _check_every_layer_traced(model, graph, shapes)
    params = sum(p.numel() for p in model.parameters())
    return Capture(model, example_input, graph, _op_graph(graph, shapes, layer_flops), layer_flops, flops, params)


def _trace(model: nn.Module, example_input: torch.Tensor, shapes_in: dict, shapes: dict,
           unwrapped: list[tuple[nn.Parameter, int]] | None = None, hidden: tuple[nn.Parameter, ...] = ()
           ) -> tuple[tp.DependencyGraph, list[tuple[object, Piece]], dict[int, tuple[object, str]], dict[str, str]]:
    """torch-pruning's dependency graph of ``model``, with the pieces, origins and unmapped index maps
    recorded on the way; ``unwrapped`` gives the dim to slice a bare parameter along (torch-pruning's
    default: its last non-singleton dim), and ``hidden`` parameters stay out of the graph."""
    traced_pieces: list[tuple[object, Piece]] = []
    origins: dict[int, tuple[object, str]] = {}
    unmapped: dict[str, str] = {}
    try:
        with traced_whole(model, shapes_in, shapes) as pruners, tolerant_index_mapping(unmapped), \
                _visible_to_autograd(model, hidden), splits_as_slices(traced_pieces), \
                recording_origins(model, origins), _no_saved_activations():
            # A tuple: given a bare tensor, torch-pruning first tries model(*tensor), which for a batch of
            # one runs the model on an unbatched sample (and traces wrong shapes) without failing.
            graph = tp.DependencyGraph().build_dependency(model, (example_input,), verbose=False,
                                                          customized_pruners=as_customized(pruners),
                                                          unwrapped_parameters=list(unwrapped or []))
    except Exception as exc:  # torch-pruning raises many kinds; each means "cannot trace this model"
        raise CaptureError(f"tracing channel dependencies failed: {type(exc).__name__}: {exc}") from exc
    return graph, traced_pieces, origins, unmapped


def _no_saved_activations() -> contextlib.AbstractContextManager:
    """The trace keeps autograd's graph (its ops, their sizes and dims) but none of the activations the ops
    save for a backward that never runs on it: the analysis of a 0.5B decoder held 0.25 GB of them."""
    def dropped(_saved: object) -> torch.Tensor:
        raise CaptureError("the channel trace keeps no activations: nothing runs backward through it")
    return torch.autograd.graph.saved_tensors_hooks(lambda _tensor: None, dropped)


@contextlib.contextmanager
def _visible_to_autograd(model: nn.Module, hidden: tuple[nn.Parameter, ...] = ()) -> Iterator[None]:
    """Frozen parameters take part in the trace (torch-pruning follows autograd) and are frozen again
    after; ``hidden`` ones are kept out of it."""
    frozen = [p for p in model.parameters() if not p.requires_grad and all(p is not h for h in hidden)]
    shown = [p for p in hidden if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    for parameter in shown:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)
        for parameter in shown:
            parameter.requires_grad_(True)


def _one_tensor(example: object) -> torch.Tensor:
    """The example input as one tensor (a 1-tuple is unwrapped); anything else is a CaptureError."""
    if isinstance(example, (tuple, list)) and len(example) == 1:
        example = example[0]
    if not isinstance(example, torch.Tensor):
        count = f" of {len(example)}" if isinstance(example, tuple | list) else ""
        raise CaptureError(f"the example input must be one tensor (the model's single input), not "
                           f"{type(example).__name__}{count}")
    return example


def _traced_concat_sizes(node) -> list[int] | None:
    """The channel count of each input of a channel concat, from the shapes autograd recorded; None
    (torch-pruning infers them) where its inputs are not one node per concatenated tensor."""
    if len(node.inputs) != len(node.grad_fn.next_functions):
        return None
    sizes = []
    for source in node.inputs:
        metadata = getattr(source.grad_fn, "_input_metadata", None)
        if not metadata or len(metadata[0].shape) < 2:
            return None
        sizes.append(int(metadata[0].shape[1]))
    return sizes


def _spatial_splits_and_concats(graph: tp.DependencyGraph, shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """The split/chunk/unbind and concat nodes that act along a dim other than channels (1).

    Along height, width or time they keep every channel, so channels pass through them unchanged
    (as through an add) and need no offsets; along channels they need the offsets torch-pruning
    maps. A dim that cannot be resolved counts as channels: refusing is safer than guessing.
    """
    spatial = set()
    for node in graph.module2node.values():
        if node.type not in (OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.UNBIND):
            continue
        dim = getattr(node.grad_fn, "_saved_dim", None)
        if dim is None:
            continue
        dim = dim - 2**64 if dim >= 2**63 else dim  # autograd stores a negative dim as unsigned
        if dim < 0:
            ndim = _ndim(graph, node, shapes)
            if ndim is None:
                continue
            dim += ndim
        if dim != 1:
            spatial.add(node.name)
            identity_mapping(node)
    return spatial


def _ndim(graph: tp.DependencyGraph, node, shapes: dict[str, tuple[int, ...]], depth: int = 8) -> int | None:
    """The rank of the tensor ``node`` reads, from its own saved sizes or the nearest layer before it."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if sizes is not None:
        return len(sizes)
    for source in node.inputs:
        name = graph._module2name.get(source.module)
        if name in shapes:
            return len(shapes[name])
        if depth and source.type in (OPTYPE.ELEMENTWISE, OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.UNBIND):
            found = _ndim(graph, source, shapes, depth - 1)
            if found is not None:
                return found
    return None


def _check_every_layer_traced(model: nn.Module, graph: tp.DependencyGraph, shapes: dict) -> None:
    """A conv/linear that ran but is missing from the trace means the forward left autograd."""
    traced = {graph._module2name.get(m) for m in graph.module2node}
    whole = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, opaque_types() or ()))
    lost = [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) and name in shapes and name not in traced
            and not name.startswith(whole)]
    if lost:
        raise CaptureError(
            f"the trace lost layers {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}: the forward leaves "
            "autograd between them and the output (.item(), .numpy(), Python numbers or torch.no_grad)")


def _run_recording_shapes(model: nn.Module, example_input: torch.Tensor
                          ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """One forward recording each module's input and output shapes; names the module that fails."""
    shapes: dict[str, tuple[int, ...]] = {}
    shapes_in: dict[str, tuple[int, ...]] = {}
    stack: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    opaque = opaque_types()

    def enter(module: nn.Module, inputs: tuple, kwargs: dict) -> None:
        stack.append(names.get(module, type(module).__name__))
        first = inputs[0] if inputs else kwargs.get("hidden_states")  # transformers passes it by name
        if isinstance(first, torch.Tensor):
            shapes_in[stack[-1]] = tuple(first.shape)

    def leave(module: nn.Module, _inputs: object, output: object) -> None:
        name = stack.pop()
        if isinstance(output, tuple) and output and isinstance(module, opaque):  # (attention output, weights)
            output = output[0]
        if isinstance(output, torch.Tensor):
            shapes[name] = tuple(output.shape)

    handles = [m.register_forward_pre_hook(enter, with_kwargs=True) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example_input)
    except Exception as exc:
        where = stack[-1] if stack and stack[-1] else type(model).__name__
        module = dict(model.named_modules()).get(where, model)
        shape = list(example_input.shape)
        raise CaptureError(
            f"forward on input shape {shape} failed in module '{where or '<root>'}' ({type(module).__name__}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return shapes_in, shapes


def _flops_by_module(counter: FlopCounterMode) -> tuple[int, dict[str, int]]:
    per_module: dict[str, int] = {}
    for key, by_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key.split(".", 1)[1] if "." in key else ""
        per_module[name] = int(sum(by_op.values()))
    return int(counter.get_total_flops()), per_module


def _op_graph(graph: tp.DependencyGraph, shapes: dict[str, tuple[int, ...]],
              layer_flops: dict[str, int]) -> nx.DiGraph:
    """A DiGraph with one node per traced op (layers and functional ops), edges along tensors."""
    ops = nx.DiGraph()
    for module, node in graph.module2node.items():
        name = graph._module2name.get(module, node.name)
        op = node.grad_fn.name() if type(module).__name__ == "_ElementWiseOp" else type(module).__name__
        ops.add_node(node.name, module=name, op=op, shape=shapes.get(name), flops=layer_flops.get(name, 0))
    for node in graph.module2node.values():
        for out in node.outputs:
            ops.add_edge(node.name, out.name)
    return ops
