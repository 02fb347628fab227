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
from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.importance.scores import Importance, select
from hwprune.transform.recalibrate import recalibrate_batchnorm
from hwprune.transform.silence import silence_channels

PROBE_FRACTION = 0.5
FLOOR = 1e-6  # a group whose silencing changes nothing measurable still costs something to cut


def group_sensitivity(analysis: Analysis, importance: Importance, batch: torch.Tensor,
                      progress: object | None = None, recalibration: list[torch.Tensor] = ()) -> dict[str, float]:
    """Per prunable group, the output change when its least important half is silenced (and, with
    ``recalibration`` batches, BatchNorm statistics re-estimated as the compile will)."""
    model = analysis.model.eval()
    groups = analysis.prunable()
    trained_statistics = ({k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
                          if recalibration else {})
    task = progress.add_task("sensitivity", total=len(groups)) if progress is not None else None
    sensitivity = {}
    with torch.no_grad():
        reference = _flat(model(batch))
        for group in groups:
            block = group.channels // group.repeat
            keep_per_block = max(1, round(block * (1 - PROBE_FRACTION)))
            kept = set(select(importance.scores[group.id], keep_per_block * group.repeat, group.repeat))
            restore = silence_channels(analysis, group, [c for c in range(group.channels) if c not in kept])
            try:
                if recalibration:
                    recalibrate_batchnorm(model, recalibration)
                probed = _flat(model(batch))
            finally:
                restore()
                if recalibration:
                    model.load_state_dict(trained_statistics, strict=False)
            cosine = nn.functional.cosine_similarity(reference, probed, dim=1).mean()
            sensitivity[group.id] = max(float(1 - cosine), FLOOR)
            if task is not None:
                progress.advance(task)
    return sensitivity


def _flat(output: object) -> torch.Tensor:
    tensor = output[0] if isinstance(output, tuple | list) else output
    return tensor.reshape(tensor.shape[0], -1).double()
