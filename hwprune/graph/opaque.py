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
from collections.abc import Iterator

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from hwprune.errors import PlanError


def opaque_types() -> tuple[type, ...]:
    """Module types traced as one fixed-width layer (channels last)."""
    found: list[type] = []
    try:
        from torchvision.models import maxvit, swin_transformer
    except ImportError:
        return ()
    found += [swin_transformer.ShiftedWindowAttention, swin_transformer.ShiftedWindowAttentionV2,
              maxvit.RelativePositionalMultiHeadAttention]
    return tuple(found)


class _RunWhole(torch.autograd.Function):
    """Runs a module's forward as one autograd op (the trace only needs the op's ends)."""

    @staticmethod
    def forward(ctx, call, x):  # noqa: ANN001 - autograd.Function signature
        return call(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        raise RuntimeError("hwprune traces opaque blocks for their dependencies only")


class FixedWidthPruner(BasePruningFunc):
    """Reports an opaque module's channel counts (last dim) and refuses to prune it."""

    def __init__(self, widths: dict[nn.Module, tuple[int, int]]):
        super().__init__(pruning_dim=-1)
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
    types = opaque_types()
    modules = {name: m for name, m in model.named_modules() if types and isinstance(m, types)}
    widths = {m: (shapes_in[name][-1], shapes_out[name][-1]) for name, m in modules.items()
              if name in shapes_in and name in shapes_out}
    for module in modules.values():
        original = module.forward
        module.forward = lambda x, _call=original: _RunWhole.apply(_call, x)
    try:
        yield {t: FixedWidthPruner(widths) for t in {type(m) for m in modules.values()}}
    finally:
        for module in modules.values():
            del module.forward
