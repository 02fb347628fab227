"""Detector decodes: from a detector's outputs to boxes (anchor grid, thresholds, NMS), per output format.

The decode has no weights, so pruning leaves it as it was: a frontend names the one for the format it
loaded (``Capabilities.detections``), and box agreement (``evaluate.boxes``) runs both models through it.
Every decode gives, per image, (n, 6) rows of x1, y1, x2, y2 (input pixels), score, class. Beside each, the
roles of its output's features (which are boxes, objectness, class scores), that recover distils by kind.
"""

from __future__ import annotations

import torch

from hwprune.frontends.base import Role

YOLOX_STRIDES = (8, 16, 32)
# (B, 4 + classes, anchors): cx, cy, w, h in pixels, then class scores (after their sigmoid)
ULTRALYTICS_ROLES = (Role("boxes", 0, 1, 0, 4), Role("classes", 0, 1, 4, kind="probability"))
# (B, anchors, 5 + classes): offsets and log-sizes, objectness, class scores (after their sigmoid)
YOLOX_ROLES = (Role("boxes", 0, -1, 0, 4), Role("objectness", 0, -1, 4, 5, "probability"),
               Role("classes", 0, -1, 5, kind="probability"))


def ultralytics_boxes(predictions: torch.Tensor, conf: float = 0.25, iou: float = 0.7, max_det: int = 300
                      ) -> list[torch.Tensor]:
    """Boxes from (B, 4 + classes, anchors) predictions, cx, cy, w, h in pixels then class scores in [0, 1], as
    Ultralytics' predict keeps them (its ``non_max_suppression`` at the predict defaults): each anchor's best
    class above ``conf``, NMS per class at ``iou``, the ``max_det`` best."""
    rows = predictions.transpose(1, 2)
    return [_nms(_xyxy(image[:, :4]), image[:, 4:], conf, iou, agnostic=False, max_det=max_det) for image in rows]


def yolox_anchors(height: int, width: int, strides: tuple[int, ...] = YOLOX_STRIDES) -> int:
    """How many anchors a YOLOX head has on an input of ``height`` x ``width``: one per cell of each level."""
    return sum((height // s) * (width // s) for s in strides)


def yolox_boxes(output: torch.Tensor, input_shape: tuple[int, ...], conf: float = 0.1, iou: float = 0.45,
                strides: tuple[int, ...] = YOLOX_STRIDES) -> list[torch.Tensor]:
    """Boxes from a YOLOX head's (B, anchors, 5 + classes) output before its grid decode, as ddddocr's detector
    postprocess does (``demo_postprocess`` and ``multiclass_nms_class_agnostic``): xy = (p + cell) * stride,
    wh = exp(p) * stride, score = objectness x the best class's score, above ``conf``, NMS over all classes at
    ``iou`` (ddddocr counts a box's area with +1 pixel; torchvision's NMS does not)."""
    height, width = input_shape[-2:]
    cells, scale = [], []
    for stride in strides:
        y, x = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
        cells.append(torch.stack((x, y), -1).reshape(-1, 2))
        scale.append(torch.full((cells[-1].shape[0], 1), float(stride)))
    cell, stride = torch.cat(cells).to(output), torch.cat(scale).to(output)
    centres = (output[..., :2] + cell) * stride
    sizes = output[..., 2:4].exp() * stride
    scores = output[..., 4:5] * output[..., 5:]
    return [_nms(_xyxy(torch.cat((c, s), -1)), p, conf, iou, agnostic=True)
            for c, s, p in zip(centres, sizes, scores, strict=True)]


def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    centre, half = boxes[:, :2], boxes[:, 2:4] / 2
    return torch.cat((centre - half, centre + half), 1)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, conf: float, iou: float, agnostic: bool,
         max_det: int | None = None) -> torch.Tensor:
    """(n, 6) rows of the boxes whose best class scores above ``conf`` that NMS keeps, best first."""
    from torchvision.ops import batched_nms

    score, label = scores.max(1)
    kept = score > conf
    boxes, score, label = boxes[kept], score[kept], label[kept]
    order = batched_nms(boxes, score, torch.zeros_like(label) if agnostic else label, iou)[:max_det]
    return torch.cat((boxes[order], score[order, None], label[order, None].to(boxes)), 1)
