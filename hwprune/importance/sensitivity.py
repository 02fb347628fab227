"""How much each group matters to the model's output: silence half of it and measure.

Channel scores rank channels *within* a group; they say little about how groups compare (a
weight norm in the stem and one in the classifier head are not in the same units). So for each
prunable group the least important half (by its scores) is silenced, the model runs on a
calibration batch, and the group's sensitivity is 1 - mean cosine between those outputs and
the unpruned ones (NetAdapt/AMC-style layer sensitivity, one forward per group). The width
search weighs each group's retained fraction by it.
"""

from __future__ import annotations

import torch

from hwprune.evaluate.calibration import output_tensors, sample_cosines
from hwprune.evaluate.mask import silenced
from hwprune.graph.analyze import Analysis
from hwprune.graph.depgraph.index_maps import frozen_index_mapping
from hwprune.importance.scores import Importance, select

PROBE_FRACTION = 0.5
FLOOR = 1e-6  # a group whose silencing changes nothing measurable still costs something to cut


def group_sensitivity(analysis: Analysis, importance: Importance, batch: torch.Tensor,
                      progress: object | None = None, recalibration: list[torch.Tensor] = ()) -> dict[str, float]:
    """Per prunable group, the output change when its least important half is silenced (and, with
    ``recalibration`` batches, BatchNorm statistics re-estimated as the compile will)."""
    model = analysis.model.eval()
    groups = analysis.prunable()
    task = progress.add_task("sensitivity", total=len(groups)) if progress is not None else None
    sensitivity = {}
    with torch.no_grad(), frozen_index_mapping(analysis.capture.dependency_graph):
        reference = flat_outputs(model(batch))  # every output: a detector's boxes and its classes alike
        for group in groups:
            block = group.channels // group.repeat
            keep_per_block = max(1, round(block * (1 - PROBE_FRACTION)))
            kept = set(select(importance.scores[group.id], keep_per_block * group.repeat, group.repeat))
            with silenced(analysis, {group.id: [c for c in range(group.channels) if c not in kept]},
                          recalibration) as probe:
                sensitivity[group.id] = output_change(reference, probe(batch))
            if task is not None:
                progress.advance(task)
    return sensitivity


def flat_outputs(output: object) -> list[torch.Tensor]:
    """Every output tensor as (batch, values)."""
    return [tensor.reshape(tensor.shape[0], -1) for tensor in output_tensors(output)]


def output_change(reference: list[torch.Tensor], output: object) -> float:
    """1 - the mean per-sample cosine (float64) to ``reference`` over every output (never below ``FLOOR``): the
    one measure group sensitivity and depth costs share, so the joint search weighs them alike."""
    outputs = flat_outputs(output)
    cosine = sum(sample_cosines(r, o).mean() for r, o in zip(reference, outputs, strict=True))
    return max(float(1 - cosine / len(reference)), FLOOR)
