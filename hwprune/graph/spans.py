"""Depth candidates: runs of convolutions that can merge into one, and residual blocks that can go.

A *chain* is a run of 2-D convolutions where each one's output reaches the next through nothing
but its own BatchNorm, at most one element-wise activation and layers that do nothing in
inference (Identity, Dropout), with no other reader on the way. Any consecutive part of a chain
is a *span*: with its BatchNorms folded, the activations inside it removed and its padding moved
to the first convolution, its convolutions are exactly one convolution (kernel k1 + k2 - 1 per
pair, stride the product, padding the sum), as in Efficient Depth Compression (ICML'23) and
LayerMerge (ICML'24). A span is legal when every convolution after a strided one is 1x1 without
padding, none is dilated or pads other than with zeros, and the merged kernel stays within
``max_kernel``; it stays depthwise only if every convolution in it is.

A *block* is an ``x + f(x)`` whose branch ``f`` is read by nothing but the add: dropping it
leaves ``x`` (what the model computes with the branch's output zeroed). When a span is exactly
such a branch and the merged convolution maps its input channels onto themselves at stride 1,
the skip folds into the merged kernel's centre tap and the add goes too.

The candidates come from a torch.fx trace, which names every node. A model fx cannot trace
(data-dependent control flow, as in every Hugging Face transformer) has no spans; its blocks are
the layers of its layer stacks, found on the example input (``graph.stack``), or none, with the
reason. Activations may be modules, shared modules or functions; convolutions and BatchNorms must
each be called once.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from hwprune.graph.candidates import Block, DepthCandidates, Span
from hwprune.graph.stack import stack_blocks

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU,
                      nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.PReLU, nn.SELU, nn.CELU)
ACTIVATION_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.silu,
                        torch.nn.functional.hardswish, torch.nn.functional.gelu, torch.nn.functional.leaky_relu,
                        torch.nn.functional.hardtanh, torch.sigmoid, torch.tanh, torch.nn.functional.mish,
                        torch.nn.functional.elu}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
TRANSPARENT = (nn.Identity, nn.Dropout, nn.Dropout2d)
ADDS = {operator.add, operator.iadd, torch.add}
MAX_KERNEL = 7


@dataclass(frozen=True)
class Link:
    """One convolution of a chain and what follows it up to the next one (FX node names)."""

    conv: str  # the module path
    norm: str | None  # its BatchNorm's module path
    activation: str | None  # the FX node of the activation after it
    between: tuple[str, ...]  # every FX node after the conv up to the next conv (norm, activation, identities)


def trace(model: nn.Module) -> fx.GraphModule:
    """The model as an FX graph (raises whatever fx raises on untraceable code)."""
    return fx.symbolic_trace(model)


def depth_candidates(model: nn.Module, example_input: torch.Tensor | None = None, max_kernel: int = MAX_KERNEL
                     ) -> DepthCandidates:
    """Every legal span and droppable block of ``model``; if fx cannot trace it, the whole layers of
    its layer stacks (given ``example_input``), or nothing, with the reason."""
    try:
        graph = trace(model)
    except Exception as exc:  # fx raises many kinds; each means "no graph to rewrite"
        blocks = stack_blocks(model, example_input) if example_input is not None else []
        reason = (f"torch.fx cannot trace the model ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''})")
        return DepthCandidates(blocks=blocks, reason=None if blocks else reason)
    return candidates_of(graph, max_kernel)


def candidates_of(graph: fx.GraphModule, max_kernel: int = MAX_KERNEL) -> DepthCandidates:
    modules = dict(graph.named_modules())
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    branches = _blocks(graph, modules, calls)
    blocks = list(branches)
    chains = _chains(graph, modules, calls)
    spans = [span for chain in chains for span in _spans(chain, modules, max_kernel)]
    spans += [s for s in (_with_skip(span, branches, modules) for span in spans) if s is not None]
    merging = [tuple(link.conv for link in chain) for chain in chains]
    return DepthCandidates(spans, blocks, None, [c for c in merging if any(set(s.convs) <= set(c) for s in spans)])


def is_conv(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and type(modules[node.target]) is nn.Conv2d


def is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _follow(conv: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> tuple[Link, fx.Node | None]:
    """The link after ``conv`` and the next convolution of its chain (None where the chain ends)."""
    norm = activation = None
    between: list[str] = []
    current = conv
    while len(current.users) == 1:
        user = next(iter(current.users))
        if user.op == "call_module" and calls[user.target] > 1:
            if not is_activation(user, modules):
                break  # a shared layer cannot be rewritten for one of its calls
        if is_conv(user, modules) and len(user.all_input_nodes) == 1:
            return Link(conv.target, norm, activation, tuple(between)), user
        if (user.op == "call_module" and type(modules[user.target]) is nn.BatchNorm2d and current is conv
                and len(user.all_input_nodes) == 1):
            norm = user.target
        elif is_activation(user, modules) and activation is None and len(user.all_input_nodes) == 1:
            activation = user.name
        elif not (user.op == "call_module" and isinstance(modules[user.target], TRANSPARENT)
                  and len(user.all_input_nodes) == 1):
            break
        between.append(user.name)
        current = user
    return Link(conv.target, norm, activation, tuple(between)), None


def _chains(graph: fx.GraphModule, modules: dict[str, nn.Module], calls: dict[str, int]) -> list[list[Link]]:
    links: dict[str, tuple[Link, fx.Node | None]] = {}
    for node in graph.graph.nodes:
        if is_conv(node, modules) and calls[node.target] == 1:
            links[node.name] = _follow(node, modules, calls)
    heads = set(links) - {nxt.name for _, nxt in links.values() if nxt is not None}
    chains = []
    for head in (n.name for n in graph.graph.nodes if n.name in heads):
        chain, name = [], head
        while name in links:
            link, nxt = links[name]
            chain.append(link)
            name = nxt.name if nxt is not None else None
        if len(chain) > 1:
            chains.append(chain)
    return chains


def _spans(chain: list[Link], modules: dict[str, nn.Module], max_kernel: int) -> Iterable[Span]:
    for first in range(len(chain)):
        for last in range(first + 1, len(chain)):
            span = _span(chain[first:last + 1], modules, max_kernel)
            if span is None:
                break  # a longer span only grows the kernel or keeps the illegal pair
            yield span


def _span(links: list[Link], modules: dict[str, nn.Module], max_kernel: int) -> Span | None:
    convs = [modules[link.conv] for link in links]
    if any(c.dilation != (1, 1) or c.padding_mode != "zeros" or isinstance(c.padding, str) for c in convs):
        return None
    strided = False
    kernel, stride, padding = [1, 1], [1, 1], [0, 0]
    for conv in convs:
        if strided and (conv.kernel_size != (1, 1) or conv.padding != (0, 0)):
            return None
        for d in (0, 1):
            kernel[d] += (conv.kernel_size[d] - 1) * stride[d]
            padding[d] += conv.padding[d] * stride[d]
            stride[d] *= conv.stride[d]
        strided = strided or conv.stride != (1, 1)
    if max(kernel) > max_kernel:
        return None
    depthwise = all(c.groups == c.in_channels == c.out_channels for c in convs)
    activations = tuple(link.activation for link in links[:-1] if link.activation is not None)
    return Span(tuple(link.conv for link in links), tuple(link.norm for link in links), activations,
                tuple(kernel), tuple(stride), tuple(padding), convs[0].in_channels, convs[-1].out_channels,
                depthwise)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    return _reach(node, lambda n: n.all_input_nodes)


def _descendants(node: fx.Node) -> set[fx.Node]:
    return _reach(node, lambda n: n.users)


def _reach(node: fx.Node, step) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(step(node))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(step(current))
    return seen


def _is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in ADDS)
            or (node.op == "call_method" and node.target in {"add", "add_"})) and len(node.args) == 2 \
        and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs


def branch_of(add: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The skip input and the branch nodes (in graph order) of ``x + f(x)``, if the add is one."""
    a, b = add.args
    for skip, out in ((a, b), (b, a)):
        above = _ancestors(out)
        if skip not in above:
            continue
        below = _descendants(skip)
        branch = [n for n in above if n in below] + [out]
        inside = set(branch) | {add}
        if all(set(n.users) <= inside for n in branch) and all(
                p is skip or p in inside or p.op == "get_attr" for n in branch for p in n.all_input_nodes):
            order = {n: i for i, n in enumerate(add.graph.nodes)}
            return skip, sorted(branch, key=order.__getitem__)
    return None


def _blocks(graph: fx.GraphModule, modules: dict[str, nn.Module], calls: dict[str, int]
            ) -> dict[Block, tuple[fx.Node, list[fx.Node]]]:
    """Each droppable block with its skip input and branch nodes."""
    blocks = {}
    for node in graph.graph.nodes:
        if not _is_add(node):
            continue
        found = branch_of(node)
        if found is None:
            continue
        _, branch = found
        inside: dict[str, int] = {}
        for n in branch:
            if n.op == "call_module":
                inside[n.target] = inside.get(n.target, 0) + 1
        # a module also called outside the branch (a ResNet block's one ReLU, used after the add too) stays
        layers = tuple(target for target, count in inside.items() if count == calls[target])
        if not any(isinstance(modules[t], nn.Conv2d | nn.Linear) for t in layers):
            continue
        blocks[Block(_owner([node, *branch]), node.name, layers)] = found
    return blocks


def _owner(nodes: list[fx.Node]) -> str:
    """The innermost module whose forward holds all ``nodes`` (from fx's module stack)."""
    stacks = [list(n.meta.get("nn_module_stack", {}).keys()) for n in nodes]
    common = []
    for level in zip(*stacks, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    # fx's keys are the modules' paths (possibly with a "L__self__" style prefix in some versions)
    return common[-1] if common else nodes[0].name


def _with_skip(span: Span, branches: dict[Block, tuple[fx.Node, list[fx.Node]]], modules: dict[str, nn.Module]
               ) -> Span | None:
    """``span`` with its block's skip folded in, where the span is that block's whole branch."""
    if span.skip or span.stride != (1, 1) or span.in_channels != span.out_channels or any(
            k != 2 * p + 1 for k, p in zip(span.kernel, span.padding, strict=True)):
        return None  # the output must keep the input's size for x to add at the centre tap
    for block, (skip, branch) in branches.items():
        convs = tuple(n.target for n in branch if is_conv(n, modules))
        if convs != span.convs or branch[-1].target not in {span.convs[-1], span.norms[-1]}:
            continue
        if branch[0].all_input_nodes != [skip] or not is_conv(branch[0], modules):
            continue
        return Span(span.convs, span.norms, span.activations, span.kernel, span.stride, span.padding,
                    span.in_channels, span.out_channels, span.depthwise, block.add)
    return None
