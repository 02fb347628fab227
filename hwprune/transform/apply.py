"""A Plan applied to a model: the transform passes in their fixed order.

Order: reorder unconstrained segments (before pruning, while every channel still exists), prune
channels, select readers' channels. Later passes (fold BatchNorm and merge convolutions, drop
blocks, sparsify N:M) join this list; until they exist, a plan that fills their sections is
refused whole rather than half-applied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.segments import segments
from hwprune.plan import Plan, WidthDecision
from hwprune.transform.passes import Pass, Surgery, run_passes
from hwprune.transform.prune import PruneChannels
from hwprune.transform.reorder import ReorderSegments
from hwprune.transform.select import SelectReaders


def apply_plan(plan: Plan, analysis: Analysis, reorder: bool = True) -> nn.Module:
    """Prune ``analysis``'s model in place as the plan says, after checking that it fits; unconstrained
    segments are reordered unless ``reorder`` is False (the naive export). ``analysis`` describes the
    unpruned model afterwards, so it must not be used for a second application."""
    for section in ("depth", "merge"):
        if getattr(plan, section):
            raise PlanError(f"the plan's {section} section is not empty; this hwprune cannot apply it yet")
    if any(plan.sparsity.values()):
        raise PlanError("the plan has sparsity decisions; this hwprune cannot apply them yet")
    width = {gid: WidthDecision(d.keep, d.of, list(d.indices), None if d.readers is None else dict(d.readers))
             for gid, d in plan.width.items()}
    found = {s.group: s for s in segments(analysis)} if any(d.readers for d in width.values()) else {}
    passes: list[Pass] = [ReorderSegments()] if reorder and found else []
    run_passes([*passes, PruneChannels(), SelectReaders()], Surgery(analysis, width, found))
    return analysis.model


def realise(plan: Plan, analysis: Analysis, recalibration: Sequence[torch.Tensor] = (), reorder: bool = True
            ) -> nn.Module:
    """``plan`` applied to a fresh copy of the analysed model (which stays whole), in eval mode, with
    BatchNorm statistics re-estimated on ``recalibration`` batches when given."""
    fresh = analyze(copy.deepcopy(analysis.model), analysis.capture.example_input, analysis.name, strict=False)
    model = apply_plan(plan, fresh, reorder).eval()
    if recalibration:
        recalibrate_batchnorm(model, recalibration)
    return model
