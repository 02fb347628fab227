"""Where hwprune wraps torch-pruning's channel index mapping: the one internal it has to reach into.

torch-pruning offers extension points for layers (``customized_pruners``, ``unwrapped_parameters``; hwprune's
own pruners go through them, ``depgraph.pruners``), but none for its index mapping: the functions in
``torch_pruning.dependency.index_mapping`` that derive, op by op, which input channel becomes which output
channel (checked on 1.6.1 and on its development head). hwprune needs three things of it that it cannot ask for,
so they are done here and nowhere else: skip an op whose mapping fails instead of failing the model, compute the
mapping once while no channel count changes, and tell it that channels pass a node unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch_pruning import DependencyGraph
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.constants import INDEX_MAPPING_PLACEHOLDER
from torch_pruning.ops import OPTYPE


@contextlib.contextmanager
def tolerant_index_mapping(unmapped: dict[str, str]) -> Iterator[None]:
    """Let torch-pruning skip ops whose channel index mapping it cannot work out.

    torch-pruning derives index mappings op by op (when the graph is built and again for every
    group it forms) and raises on some it cannot follow (a channel shuffle's 5-D view divides by
    zero). Such an op is recorded in ``unmapped`` with the error, so the groups through it are
    reported as not prunable, instead of failing the whole model. Only hwprune's own calls into
    torch-pruning run under this; the library is restored afterwards.
    """
    originals = {name: getattr(index_mapping, name) for name in dir(index_mapping)
                 if name.startswith("update_") and name.endswith("_index_mapping") and name != "update_index_mapping"}

    def tolerant(name: str, update):
        def run(graph, node):
            try:
                update(graph, node)
            except Exception as exc:  # recorded per op, reported on its groups
                unmapped[node.name] = f"{type(exc).__name__}: {exc}"
        return run

    for name, update in originals.items():
        setattr(index_mapping, name, tolerant(name, update))
    try:
        yield
    finally:
        for name, update in originals.items():
            setattr(index_mapping, name, update)


@contextlib.contextmanager
def frozen_index_mapping(graph: DependencyGraph) -> Iterator[None]:
    """Compute torch-pruning's channel index mapping once for a stretch of calls that change no
    channel count, instead of once per group formed.

    torch-pruning re-derives every op's mapping each time it forms a group; on concat-heavy nets
    that is most of the time (densenet169: 0.11 s per group, 95 of the 110 s it took to realise a
    plan). The mapping depends only on channel counts, so while none changes (analysis,
    silencing, permuting, reading what pruning will remove) once is enough. Never around pruning
    itself. Nested uses are no-ops.
    """
    if getattr(graph, "hwprune_frozen", False):
        yield
        return
    with tolerant_index_mapping(graph.hwprune_unmapped):
        index_mapping.update_index_mapping(graph)
    original = index_mapping.update_index_mapping

    def update(other: DependencyGraph) -> None:
        if other is not graph:
            original(other)

    index_mapping.update_index_mapping = update
    graph.hwprune_frozen = True
    try:
        yield
    finally:
        index_mapping.update_index_mapping = original
        graph.hwprune_frozen = False


def remap(graph: DependencyGraph, unmapped: dict[str, str]) -> None:
    """Derive every op's index mapping again (after channel counts or concat sizes were set by hand)."""
    with tolerant_index_mapping(unmapped):
        index_mapping.update_index_mapping(graph)


def isolate_unmappable_concats(graph: DependencyGraph, unmapped: dict[str, str], sides: dict[str, str]) -> None:
    """Cut the dependencies through a concat whose channel offsets torch-pruning cannot map.

    Without offsets (e.g. a concat feeding flatten -> linear) torch-pruning passes indices
    through the concat unchanged, and with one tensor concatenated twice it maps both copies to
    one offset: groups come out wrong, and where the concat closes a cycle the index walk never
    ends. Cutting the concat out keeps the walk finite; its neighbours are recorded as unmapped,
    so every group that touches them is reported as not prunable. A neighbour that is a layer
    (its input and output channels apart) meets the concat on one side only: ``sides`` says which
    ("out" for a layer the concat reads, "in" for one that reads the concat), and the group of its
    other side is not touched (a detector's box conv writes an unmappable concat; the branch
    before it is still prunable).
    """
    for node in list(graph.module2node.values()):
        if node.type != OPTYPE.CONCAT:  # (spatial concats are element-wise nodes by now)
            continue
        if node.module.offsets is None:
            reason = "a concat whose channel offsets torch-pruning could not infer"
        elif len(node.grad_fn.next_functions) != len(set(node.inputs)):
            reason = "a concat of the same tensor more than once"
        else:
            continue
        for other in {*node.inputs, *node.outputs}:
            other.dependencies = [d for d in other.dependencies if d.target is not node]
            unmapped[other.name] = reason
            if _one_sided(other):
                side = "out" if other in node.inputs else "in"
                sides[other.name] = side if sides.get(other.name, side) == side else "both"
        node.dependencies = []
        unmapped[node.name] = reason



def _one_sided(node) -> bool:
    """Whether ``node`` is a layer whose input and output channels are apart (a depthwise conv's are one)."""
    if node.type == OPTYPE.LINEAR:
        return True
    return node.type == OPTYPE.CONV and getattr(node.module, "groups", 1) == 1


def identity_mapping(node) -> None:
    """Channels pass ``node`` unchanged, as through an add: torch-pruning is told so by making it an
    element-wise node (no offsets; its channel count is its input's, where torch-pruning would sum
    a concat's inputs or take a split's piece sizes as channel counts), and the offsets and sizes
    it derived for the node are dropped."""
    node.type = OPTYPE.ELEMENTWISE
    node.enable_index_mapping = False
    for attribute in ("offsets", "concat_sizes", "split_sizes"):
        if hasattr(node.module, attribute):
            setattr(node.module, attribute, None)
    slot, sides = (1, node.inputs) if node.grad_fn.name().startswith("Cat") else (0, node.outputs)
    for dep in node.dependencies:
        if dep.target in sides:
            dep.index_mapping[slot] = INDEX_MAPPING_PLACEHOLDER
    for other in sides:
        for dep in other.dependencies:
            if dep.target is node:
                dep.index_mapping[slot] = INDEX_MAPPING_PLACEHOLDER
