"""The weight-free decodes from a detector's outputs to boxes, on outputs made by hand, and the matching
that box agreement counts."""

import math

import pytest
import torch

from hwprune.evaluate.boxes import box_f1
from hwprune.frontends.decodes import ultralytics_boxes, yolox_anchors, yolox_boxes


def test_yolox_decode_follows_ddddocrs_postprocess():
    """xy = (p + cell) * stride, wh = exp(p) * stride, score = objectness x class, above 0.1, NMS over all
    classes at IoU 0.45: one box kept, one it suppresses, one under the threshold."""
    shape = (1, 3, 32, 32)  # 4x4 cells at stride 8, 2x2 at 16, 1 at 32
    output = torch.zeros(1, yolox_anchors(32, 32), 7)
    assert output.shape[1] == 21
    output[0, 2 * 4 + 1] = torch.tensor([0.5, 0.5, math.log(2), 0, 0.9, 0.8, 0.1])  # stride 8, cell x 1, y 2
    output[0, 16 + 3] = torch.tensor([0.5, 0.25, math.log(1.25), math.log(0.5), 0.9, 0.1, 0.7])  # stride 16, x 1, y 1
    output[0, 20] = torch.tensor([0.5, 0.5, 0, 0, 0.3, 0.3, 0.0])  # stride 32: score 0.09, under 0.1
    second = output[0, 2 * 4 + 1].clone()
    second[0] += 0.125  # one pixel right of the first, less sure: suppressed
    second[4] = 0.5
    output[0, 2 * 4 + 2] = second - torch.tensor([1, 0, 0, 0, 0, 0, 0])  # the next cell, offset back by one
    (boxes,) = yolox_boxes(output, shape)
    expected = torch.tensor([[4, 16, 20, 24, 0.72, 0],  # centre (12, 20), 16 x 8, 0.9 x 0.8, class 0
                             [14, 16, 34, 24, 0.63, 1]])  # centre (24, 20), 20 x 8, 0.9 x 0.7, class 1: IoU 0.2
    torch.testing.assert_close(boxes, expected)


def test_ultralytics_decode_follows_its_predict():
    """cx, cy, w, h then class scores: the best class above 0.25, NMS per class at IoU 0.7."""
    predictions = torch.tensor([[50, 52, 60, 30, 10],  # cx
                                [50, 50, 60, 30, 10],  # cy
                                [20, 20, 20, 8, 4],  # w
                                [10, 10, 10, 8, 4],  # h
                                [0.9, 0.1, 0.8, 0.2, 0.0],  # class 0
                                [0.1, 0.85, 0.1, 0.1, 0.0]])[None]  # class 1
    (boxes,) = ultralytics_boxes(predictions)
    expected = torch.tensor([[40, 45, 60, 55, 0.9, 0],  # the same place as the next, another class: both kept
                             [42, 45, 62, 55, 0.85, 1],
                             [50, 55, 70, 65, 0.8, 0]])  # the fourth (0.2) and fifth (0) are under 0.25
    torch.testing.assert_close(boxes, expected)
    same = predictions.clone()
    same[0, 5, 1] = 0.0
    same[0, 4, 1] = 0.85  # now class 0 too: IoU 0.82 with the first, suppressed
    assert len(ultralytics_boxes(same)[0]) == 2


def test_box_f1_matches_by_class_and_iou():
    reference = torch.tensor([[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.8, 2], [40, 40, 50, 50, 0.7, 2.]])
    other = torch.tensor([[1, 1, 10, 10, 0.5, 1],  # IoU 0.81, same class: agrees
                          [20, 20, 30, 30, 0.9, 3],  # same place, another class: no
                          [45, 45, 55, 55, 0.6, 2.]])  # same class, IoU 0.14: no
    assert box_f1([([reference, reference], [other, other])]) == pytest.approx(2 * 2 / 12)
    assert box_f1([([reference], [reference])]) == 1.0
    assert box_f1([([reference[:0]], [reference[:0]])]) is None  # neither finds anything: no number
