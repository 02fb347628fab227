"""Readers of an unconstrained segment read only their own channels: a ChannelSelect in front of each.

After ``PruneChannels`` a segment keeps its readers' union; a reader that reads fewer keeps only
those columns of its weight and picks its channels out of its input through a
:class:`~hwprune.graph.select.ChannelSelect`: a slice for one run of channels (a view in PyTorch,
a ``Slice`` in ONNX), a gather otherwise. ``ReorderSegments`` before pruning makes runs longer.
The result computes what the unpruned model does with each reader's unread columns zeroed
(``evaluate.mask.masked_readers``), which the tests check.
"""

from __future__ import annotations

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.select import ChannelSelect
from hwprune.transform.passes import Pass, Surgery, TransformError
from hwprune.transform.prune import input_width


class SelectReaders(Pass[Surgery]):
    name = "select-readers"

    def requires(self, surgery: Surgery) -> None:
        missing = sorted(self._reads(surgery).keys() - surgery.removed_inputs.keys())
        if missing:
            raise PlanError(f"reader selection needs pruning first; no record for {', '.join(missing)}")

    def call(self, surgery: Surgery) -> bool:
        model = surgery.analysis.model
        self._selected: dict[str, int] = {}
        for layer, unread in self._reads(surgery).items():
            width, removed = surgery.removed_inputs[layer]
            surviving = [i for i in range(width) if i not in removed]
            positions = [p for p, i in enumerate(surviving) if i not in unread]
            if len(positions) < len(surviving):
                _select_inputs(model, layer, model.get_submodule(layer), positions)
                self._selected[layer] = len(positions)
        return bool(self._selected)

    def ensures(self, surgery: Surgery) -> None:
        model = surgery.analysis.model
        for layer, count in self._selected.items():
            select, module = model.get_submodule(layer)
            if not isinstance(select, ChannelSelect) or input_width(module) != count:
                raise TransformError(f"{layer}: expected a ChannelSelect of {count} channels in front")
        with torch.no_grad():
            model(surgery.analysis.capture.example_input)  # every selection fits its input

    @staticmethod
    def _reads(surgery: Surgery) -> dict[str, set[int]]:
        """Per reader layer, the input indices carrying group channels it does not read."""
        unread: dict[str, set[int]] = {}
        for gid, decision in surgery.width.items():
            if decision.readers is None:
                continue
            for reader in surgery.segments[gid].readers:
                unread.setdefault(reader.layer, set()).update(reader.unread(decision.readers[reader.layer]))
        return unread


def _select_inputs(model: nn.Module, layer: str, module: nn.Module, positions: list[int]) -> None:
    """Keep only ``positions`` of ``module``'s inputs and read them through a ChannelSelect."""
    with torch.no_grad():
        module.weight = nn.Parameter(module.weight[:, positions].clone())
    if isinstance(module, nn.Linear):
        module.in_features = len(positions)
        dim = -1
    else:
        module.in_channels = len(positions)
        dim = 1
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Sequential(ChannelSelect(positions, dim), module))
