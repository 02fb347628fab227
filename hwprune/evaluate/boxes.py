"""How far a pruned detector's boxes agree with the unpruned model's: both models' outputs through the
decode the frontend names for the format it loaded (``Capabilities.detections``, ``frontends.decodes``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from hwprune.evaluate.calibration import output_tensors
from hwprune.frontends.base import Decode


def box_agreement(original: nn.Module, pruned: nn.Module, batches: list[torch.Tensor], decode: Decode,
                  iou: float = 0.5) -> float | None:
    """F1 of the pruned model's boxes against the original's on ``batches``, both decoded by ``decode``
    (``box_f1``)."""
    with torch.no_grad():
        pairs = [(decode(output_tensors(original(batch)), tuple(batch.shape)),
                  decode(output_tensors(pruned(batch)), tuple(batch.shape))) for batch in batches]
    return box_f1(pairs, iou)


def box_f1(pairs: Iterable[tuple[list[torch.Tensor], list[torch.Tensor]]], iou: float = 0.5) -> float | None:
    """F1 over every image of ``pairs`` (per batch: the original's boxes per image, the pruned model's):
    each original box, by descending score, takes the best unmatched box of its class at IoU >= ``iou``;
    None where neither model finds a box (``Fidelity.box_agreement``)."""
    from torchvision.ops import box_iou

    matched = found = expected = 0
    for references, outputs in pairs:
        for reference, boxes in zip(references, outputs, strict=True):
            expected, found = expected + len(reference), found + len(boxes)
            if not len(reference) or not len(boxes):
                continue
            overlap = box_iou(reference[:, :4], boxes[:, :4]) * (reference[:, 5:6] == boxes[:, 5].unsqueeze(0))
            for index in reference[:, 4].argsort(descending=True):
                row = overlap[index]  # a view: columns taken by earlier rows are zero here
                best = int(row.argmax())
                if row[best] >= iou:
                    matched += 1
                    overlap[:, best] = 0
    return None if expected + found == 0 else 2 * matched / (expected + found)
