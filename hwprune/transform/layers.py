"""Whole layers removed from a layer stack (``graph.stack``): list entries deleted, the rest renumbered,
and, for a run the plan replaces by a linear map (ReplaceMe, ``transform.linear_map``), the map fitted
before and folded into the kept projection after.

``graph.stack.without_layers`` does the surgery (the analysis uses it to check that removing a layer
is what skipping it computes); the passes check the plan's layers are stack layers before, and after
that they are gone, every kept layer's ``layer_idx`` is its position and each fold computes what the
unfolded projection followed by its map computes. The result is a copy sharing the caller's weights
(a folded projection is a new module): the caller's model keeps all its layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.candidates import Block
from hwprune.graph.stack import without_layers
from hwprune.plan import DroppedBlock
from hwprune.transform.linear_map import Run, as_linear, fit_maps, folded, replaced_runs
from hwprune.transform.passes import Pass, TransformError, run_passes

EXACT = 1e-4  # a fold's outputs against the unfolded projection and map, relative to their largest magnitude


@dataclass
class LayerStack:
    """The model under change, the stack layers to remove (their module paths), the replaced runs and
    the calibration batches their maps are fitted on; the passes fill in the maps and the projections
    the folds replaced."""

    model: nn.Module
    blocks: Sequence[Block]
    runs: Sequence[Run] = ()
    calibration: Sequence[torch.Tensor] = ()
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    unfolded: dict[str, nn.Linear] = field(default_factory=dict)


def drop_layers(model: nn.Module, blocks: Sequence[Block], entries: Sequence[DroppedBlock] = (),
                calibration: Sequence[torch.Tensor] = ()) -> nn.Module:
    """``model`` without the stack layers ``blocks`` (each ``add`` is None), as a new module; the runs the
    plan's ``entries`` fold are replaced by maps fitted on ``calibration``."""
    surgery = LayerStack(model, blocks, replaced_runs(entries), calibration)
    run_passes([FitMaps(), DropLayers(), FoldMaps()], surgery)
    return surgery.model


class FitMaps(Pass[LayerStack]):
    name = "fit-linear-maps"

    def requires(self, surgery: LayerStack) -> None:
        if surgery.runs and not surgery.calibration:
            raise PlanError("the plan replaces layers by a linear map fitted on calibration data: pass the "
                            "calibration data (--calib-data) the plan was made with")
        for run in surgery.runs:
            if not isinstance(surgery.model.get_submodule(run.fold), nn.Linear):
                raise PlanError(f"{run.fold}: a run's map folds into a linear layer")

    def call(self, surgery: LayerStack) -> bool:
        surgery.maps = fit_maps(surgery.model, surgery.runs, surgery.calibration) if surgery.runs else {}
        return bool(surgery.maps)

    def ensures(self, surgery: LayerStack) -> None:
        for fold, transform in surgery.maps.items():
            if not bool(torch.isfinite(transform).all()):
                raise TransformError(f"{fold}: the fitted map is not finite")


class DropLayers(Pass[LayerStack]):
    name = "drop-layers"

    def requires(self, surgery: LayerStack) -> None:
        for block in surgery.blocks:
            parent, _, index = block.name.rpartition(".")
            if block.add is not None or not index.isdigit() or not isinstance(
                    surgery.model.get_submodule(parent), nn.ModuleList):
                raise TransformError(f"{block.name} is not a layer of a layer stack")

    def call(self, surgery: LayerStack) -> bool:
        surgery.model = without_layers(surgery.model, [block.name for block in surgery.blocks])
        return bool(surgery.blocks)

    def ensures(self, surgery: LayerStack) -> None:
        for parent in {b.name.rpartition(".")[0] for b in surgery.blocks}:
            for i, layer in enumerate(surgery.model.get_submodule(parent)):
                if any(getattr(m, "layer_idx", i) != i for m in layer.modules()):
                    raise TransformError(f"{parent}.{i}: its layer_idx is not its position")


class FoldMaps(Pass[LayerStack]):
    """Each map into its projection (on the copy ``DropLayers`` made: the caller's layer is untouched)."""

    name = "fold-linear-maps"

    def requires(self, surgery: LayerStack) -> None:
        dropped = {block.name for block in surgery.blocks}
        for run in surgery.runs:
            if run.before in dropped or run.last not in dropped:
                raise PlanError(f"{run.fold}: its layer must be kept and its run dropped")

    def call(self, surgery: LayerStack) -> bool:
        for run in surgery.runs:
            linear = surgery.model.get_submodule(run.fold)
            surgery.unfolded[run.fold] = linear
            _replace(surgery.model, run.fold, folded(linear, surgery.maps[run.fold]))
        return bool(surgery.runs)

    def ensures(self, surgery: LayerStack) -> None:
        if not surgery.runs:
            return
        batch = surgery.calibration[0][:1]
        with torch.no_grad():
            after = _flat(surgery.model(batch))
            folds = {path: surgery.model.get_submodule(path) for path in surgery.unfolded}
            for path, linear in surgery.unfolded.items():
                _replace(surgery.model, path, nn.Sequential(linear, as_linear(surgery.maps[path], linear)))
            try:
                before = _flat(surgery.model(batch))
            finally:
                for path, fold in folds.items():
                    _replace(surgery.model, path, fold)
        error = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
        if error > EXACT:
            raise TransformError(f"folding the linear maps changed the model's outputs (relative error {error:.2e})")


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


def _flat(output: object) -> torch.Tensor:
    return torch.cat([t.flatten() for t in (output if isinstance(output, tuple | list) else (output,))])
