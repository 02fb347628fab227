"""Blocks hwprune keeps at their width and traces as one layer.

Some blocks move channels in ways the dependency tracer cannot follow (window attention that
rolls, partitions and re-assembles tokens), and tracing their insides makes it fail or explode.
While the dependency graph is traced, each such module runs inside one autograd Function, so
the trace sees a single op from its input to its output; a pruner registered for it reports its
widths and refuses to change them, and every group that touches it is reported as not
prunable. The model itself is never changed: the wrapping lasts only for the trace.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from hwprune.errors import PlanError


def opaque_types() -> tuple[type, ...]:
    """Module types traced as one fixed-width layer."""
    return tuple(_channel_dims())


def _channel_dims() -> dict[type, int]:
    """Each opaque type with the dim that holds its channels: torchvision's window attentions work
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
    return found


class _RunWhole(torch.autograd.Function):
    """Runs a module's forward as one autograd op (the trace only needs the op's ends)."""

    @staticmethod
    def forward(ctx, call, x):  # noqa: ANN001 - autograd.Function signature
        return call(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        raise RuntimeError("hwprune traces opaque blocks for their dependencies only")


class FixedWidthPruner(BasePruningFunc):
    """Reports an opaque module's channel counts (along ``dim``) and refuses to prune it."""

    def __init__(self, widths: dict[nn.Module, tuple[int, int]], dim: int):
        super().__init__(pruning_dim=dim)
        self.widths = widths

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise PlanError(f"{type(layer).__name__} is kept at its width")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer, (None, None))[1]

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer, (None, None))[0]


@contextlib.contextmanager
def traced_whole(model: nn.Module, shapes_in: dict[str, tuple], shapes_out: dict[str, tuple]
                 ) -> Iterator[dict[type, FixedWidthPruner]]:
    """Within the block, opaque modules run as one op; yields the pruners to register per type."""
    dims = _channel_dims()
    modules = {name: m for name, m in model.named_modules() if type(m) in dims}
    widths = {m: (shapes_in[name][dims[type(m)]], shapes_out[name][dims[type(m)]]) for name, m in modules.items()
              if name in shapes_in and name in shapes_out}
    for module in modules.values():
        original = module.forward
        module.forward = lambda x, _call=original: _RunWhole.apply(_call, x)
    try:
        yield {t: FixedWidthPruner(widths, dims[t]) for t in {type(m) for m in modules.values()}}
    finally:
        for module in modules.values():
            del module.forward
