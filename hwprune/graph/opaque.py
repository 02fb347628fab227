"""Blocks hwprune traces as one layer: kept at their width, or pruned at their ends.

Some blocks move channels in ways the dependency tracer cannot follow (window attention that
rolls, partitions and re-assembles tokens), and tracing their insides makes it fail or explode.
While the dependency graph is traced, each such module runs inside one autograd Function, so
the trace sees a single op from its input to its output. For most, a pruner registered for it
reports its widths and refuses to change them, and every group that touches it is reported as
not prunable; transformers' grouped-query attention and RMSNorm get pruners that prune their
ends (the hidden size: ``frontends/hf/layers.py``, through ``graph.plugins``). The model itself
is never changed: the wrapping lasts only for the trace.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.depgraph.pruners import ChannelPruner
from hwprune.graph.plugins import end_pruners, fixed_widths


def opaque_types() -> tuple[type, ...]:
    """Module types traced as one layer."""
    return (*_channel_dims(), *end_pruners())


def fixed_width_types() -> tuple[type, ...]:
    """Module types traced as one layer and kept at their width."""
    return tuple(_channel_dims())


def _channel_dims() -> dict[type, int]:
    """Each fixed-width type with the dim that holds its channels: torchvision's window attentions work
    channels last; Ultralytics' PSA attention (YOLO11's C2PSA) works channels first, and its
    views and splits of q/k/v make torch-pruning's index walk grow without bound (yolo11n ran out
    of memory). Ultralytics is looked up only once a model of it is loaded (it is then imported)."""
    found: dict[type, int] = {}
    try:
        from torchvision.models import maxvit, swin_transformer
    except ImportError:
        pass
    else:
        found.update(dict.fromkeys((swin_transformer.ShiftedWindowAttention,
                                    swin_transformer.ShiftedWindowAttentionV2,
                                    maxvit.RelativePositionalMultiHeadAttention), -1))
    block = sys.modules.get("ultralytics.nn.modules.block")
    if block is not None and hasattr(block, "Attention"):
        found[block.Attention] = 1
    found.update(fixed_widths())
    return found


class _RunWhole(torch.autograd.Function):
    """Runs a module's forward as one autograd op (the trace only needs the op's ends)."""

    @staticmethod
    def forward(ctx, call, x):  # noqa: ANN001 - autograd.Function signature
        return call(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        raise RuntimeError("hwprune traces opaque blocks for their dependencies only")


class FixedWidthPruner(ChannelPruner):
    """Reports an opaque module's channel counts (along ``dim``) and refuses to prune it."""

    def __init__(self, widths: dict[nn.Module, tuple[int, int]], dim: int):
        self.widths = widths
        self.dim = dim

    def prune_out(self, layer: nn.Module, removed: list[int]) -> None:
        raise PlanError(f"{type(layer).__name__} is kept at its width")

    prune_in = prune_out

    def out_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer, (None, None))[1]

    def in_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer, (None, None))[0]


def _whole(call):
    """``call`` as one op from its first input (positional, or ``hidden_states`` as transformers passes it) to
    its first output; the other arguments pass through, and a tuple output keeps its other items as None."""

    def run(*args, **kwargs):
        x = args[0] if args else kwargs.pop("hidden_states")
        rest = args[1:]
        shaped = {}

        def first(h):
            out = call(h, *rest, **kwargs)
            shaped["tuple"] = len(out) if isinstance(out, tuple) else 0
            return out[0] if isinstance(out, tuple) else out

        y = _RunWhole.apply(first, x)
        return (y, *[None] * (shaped["tuple"] - 1)) if shaped["tuple"] else y

    return run


@contextlib.contextmanager
def traced_whole(model: nn.Module, shapes_in: dict[str, tuple], shapes_out: dict[str, tuple]
                 ) -> Iterator[dict[type, ChannelPruner]]:
    """Within the block, opaque modules run as one op; yields the pruners to register per type."""
    dims, ends = _channel_dims(), end_pruners()
    modules = {name: m for name, m in model.named_modules() if type(m) in dims or type(m) in ends}
    widths = {m: (shapes_in[name][dims[type(m)]], shapes_out[name][dims[type(m)]]) for name, m in modules.items()
              if type(m) in dims and name in shapes_in and name in shapes_out}
    for module in modules.values():
        module.forward = _whole(module.forward)
    try:
        yield {t: ends[t] if t in ends else FixedWidthPruner(widths, dims[t])
               for t in {type(m) for m in modules.values()}}
    finally:
        for module in modules.values():
            del module.forward
