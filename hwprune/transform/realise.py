"""A Plan applied to a model: the transform passes in their fixed order.

Order: reorder unconstrained segments and permute groups for N:M (before pruning, while every
channel still exists), prune channels, select readers' channels; then the depth passes on the
pruned model (drop blocks, remove activations, move padding: ``transform/depth.py``), the N:M
masks (``transform/nm.py``), and last the merge (fold BatchNorm, merge convolutions). A layer
that takes N:M is never inside a merged span (the search treats the two as exclusive).
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
from hwprune.graph.spans import depth_candidates
from hwprune.plan import Plan
from hwprune.transform.passes import Pass, Surgery, run_passes
from hwprune.transform.prune import PruneChannels, sharing_copy
from hwprune.transform.reorder import ReorderSegments
from hwprune.transform.rewrite import merged, resolve, unmerged
from hwprune.transform.select import SelectReaders
from hwprune.transform.sparsify import PermuteForSparsity, check_layers, sparsify


def apply_plan(plan: Plan, analysis: Analysis, reorder: bool = True, merge: bool = True,
               calibration: Sequence[torch.Tensor] = ()) -> nn.Module:
    """Prune ``analysis``'s model in place as the plan says, after checking that it fits; unconstrained
    segments are reordered unless ``reorder`` is False (the naive export). ``analysis`` describes the
    unpruned model afterwards, so it must not be used for a second application. With depth or merge
    decisions the result is a new module (an fx ``GraphModule``), not ``analysis.model``; with
    ``merge`` False its spans are left unmerged (activations removed, padding moved), the form
    BatchNorm re-estimation and training see, and ``transform.rewrite.merged`` finishes them. Runs of
    layers the plan replaces by a linear map have it fitted on ``calibration``, on the width-pruned model."""
    width = dict(plan.groups())  # the passes renumber decisions in this copy (frozen, replaced whole)
    found = {s.group: s for s in segments(analysis)} if any(d.readers for d in width.values()) else {}
    passes: list[Pass] = [ReorderSegments()] if reorder and found else []
    sparse = plan.sparsity.layers
    merged_convs = {name for entry in plan.merge for name in entry.convs}
    if merged_convs & set(sparse):
        raise PlanError(f"sparsity: {', '.join(sorted(merged_convs & set(sparse)))} both merged and N:M")
    check_layers(analysis.model, sparse)  # checked before any layer is touched
    if plan.merge or plan.depth:
        resolve(plan.merge, plan.depth, depth_candidates(analysis.model, analysis.capture.example_input))
    permutations = plan.sparsity.permutations
    if permutations:
        passes.append(PermuteForSparsity(permutations))
    run_passes([*passes, PruneChannels(), SelectReaders()], Surgery(analysis, width, found))
    example = analysis.capture.example_input
    model = unmerged(analysis.model, example, plan.merge, plan.depth, calibration)
    sparsify(model, sparse)
    return merged(model, example, plan.merge) if merge else model


def realise(plan: Plan, analysis: Analysis, recalibration: Sequence[torch.Tensor] = (), reorder: bool = True,
            calibration: Sequence[torch.Tensor] = ()) -> nn.Module:
    """``plan`` applied to a fresh copy of the analysed model (which stays whole), in eval mode, with
    BatchNorm statistics re-estimated on ``recalibration`` batches when given and linear maps fitted on
    ``calibration``."""
    return finish(plan, analysis, realise_unmerged(plan, analysis, reorder, calibration), recalibration)


def realise_unmerged(plan: Plan, analysis: Analysis, reorder: bool = True,
                     calibration: Sequence[torch.Tensor] = (), share: bool = False) -> nn.Module:
    """``plan`` applied to a fresh copy of the analysed model, its spans not yet merged. With ``share`` the
    copy shares the weights pruning leaves alone (:func:`~hwprune.transform.prune.sharing_copy`: a 2 GB
    model's realisation costs its pruned tensors, not a second 2 GB); such a model is read, exported and
    timed, and goes through :func:`~hwprune.transform.prune.unshared` before it is trained or handed out."""
    copied = sharing_copy(analysis.model) if share else copy.deepcopy(analysis.model)
    fresh = analyze(copied, analysis.capture.example_input, analysis.name, strict=False)
    return apply_plan(plan, fresh, reorder, merge=False, calibration=calibration).eval()


def finish(plan: Plan, analysis: Analysis, model: nn.Module, recalibration: Sequence[torch.Tensor] = ()
           ) -> nn.Module:
    """An unmerged realisation with BatchNorm re-estimated (when given batches), then merged: a
    BatchNorm folded into a merged conv can no longer be re-estimated."""
    if recalibration:
        recalibrate_batchnorm(model, recalibration)
    return merged(model, analysis.capture.example_input, plan.merge).eval()
