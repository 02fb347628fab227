"""recover's distillation loss: the generic terms exactly as before; a detector's outputs, whose roles its frontend
names (boxes, objectness, class scores), by the KL divergence per feature: Bernoulli for scores, Gaussian with the
teacher's variance across the training inputs for values."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from hwprune.frontends.base import Role
from hwprune.frontends.decodes import ULTRALYTICS_ROLES, YOLOX_ROLES
from hwprune.recovery.data import Batch, TrainingData, _from_dataset
from hwprune.recovery.distill import DetectorScales, bernoulli_kl, detector_scales, distillation_loss, scaled_error
from hwprune.recovery.world import World

CPU = World(0, 1, torch.device("cpu"))


def old_loss(teacher, student, targets, temperature, token_logits=False):
    """distillation_loss as it was before detectors had roles, written out."""
    loss = student[0].new_zeros(())
    for t, s in zip(teacher, student, strict=True):
        if t.shape[-1] > 1 and (t.dim() == 2 or (token_logits and t.dim() == 3)):
            kl = nn.functional.kl_div(nn.functional.log_softmax(s.reshape(-1, s.shape[-1]) / temperature, dim=-1),
                                      nn.functional.log_softmax(t.reshape(-1, t.shape[-1]) / temperature, dim=-1),
                                      log_target=True, reduction="batchmean")
            loss = loss + kl * temperature ** 2
        else:
            loss = loss + nn.functional.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)
    if targets is not None:
        loss = loss + nn.functional.cross_entropy(student[0], targets)
    return loss


@pytest.mark.parametrize("token_logits", [False, True])
@pytest.mark.parametrize("labelled", [False, True])
def test_without_roles_the_loss_is_the_old_one_bit_for_bit(token_logits, labelled):
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 10), (4, 7, 12), (4, 84, 6), (4, 1)]  # logits, tokens' logits (or a head), a detector's, a score
    teacher = [torch.randn(shape, generator=generator) for shape in shapes]
    student = [torch.randn(shape, generator=generator, requires_grad=True) for shape in shapes]
    targets = torch.tensor([1, 0, 9, 3]) if labelled else None
    new = distillation_loss(teacher, student, targets, 4.0, token_logits)
    assert torch.equal(new, old_loss(teacher, student, targets, 4.0, token_logits))
    grad_new = torch.autograd.grad(new, student)
    grad_old = torch.autograd.grad(old_loss(teacher, student, targets, 4.0, token_logits), student)
    assert all(torch.equal(a, b) for a, b in zip(grad_new, grad_old, strict=True))
    assert torch.equal(scaled_error(student[2], teacher[2]),
                       nn.functional.mse_loss(student[2], teacher[2]) / teacher[2].pow(2).mean())


def yolox_outputs(images: int, anchors: int = 400, seed: int = 0) -> torch.Tensor:
    """(images, anchors, 6) like a trained YOLOX head's: offsets about 0.5, log-sizes about 1.3 (the largest
    numbers), a sparse objectness (2% of anchors near 0.9, the rest near 0), a class score."""
    generator = torch.Generator().manual_seed(seed)
    offsets = 0.5 + 0.3 * torch.randn(images, anchors, 2, generator=generator)
    sizes = 1.3 + 0.4 * torch.randn(images, anchors, 2, generator=generator)
    objects = torch.rand(images, anchors, generator=generator) < 0.02
    objectness = torch.where(objects, 0.9, 0.002) + 0.001 * torch.rand(images, anchors, generator=generator)
    score = torch.rand(images, anchors, generator=generator)
    return torch.cat((offsets, sizes, objectness[..., None], score[..., None]), -1)


def scales_of(outputs: torch.Tensor, roles) -> DetectorScales:
    """The roles' scales with the outputs themselves as the teacher's, one image a batch."""
    data = TrainingData("made", len(outputs), False, _batches=[Batch(o[None], None) for o in outputs])
    return detector_scales(nn.Identity(), data, roles, CPU)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def test_a_detectors_outputs_take_the_kl_per_feature():
    """Box values: (s - t)^2 / (2 var), var the teacher's across the inputs; scores: the Bernoulli KL; summed over
    the features, averaged over images and anchors."""
    teacher = yolox_outputs(8).double()
    detector = scales_of(teacher, YOLOX_ROLES)
    variance = teacher[..., :4].var(0, unbiased=False).mean(0)
    assert torch.allclose(detector.variances[0].double(), variance, rtol=1e-5)
    assert detector.variances[1] is None and detector.variances[2] is None
    generator = torch.Generator().manual_seed(1)
    student = teacher.clone()
    student[..., :4] += 0.1 * torch.randn(teacher[..., :4].shape, generator=generator, dtype=torch.float64)
    student[..., 4:] = (student[..., 4:] + 0.05 * torch.rand(teacher[..., 4:].shape, generator=generator,
                                                             dtype=torch.float64)).clamp(0, 0.999)
    expected = ((student[..., :4] - teacher[..., :4]).pow(2) / (2 * variance)).mean((0, 1)).sum()
    expected += kl(teacher[..., 4:], student[..., 4:]).mean((0, 1)).sum()
    loss = distillation_loss([teacher], [student], None, 4.0, detector=detector)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss([teacher], [teacher], None, 4.0, detector=detector)) == pytest.approx(0, abs=1e-9)


def test_a_collapsed_objectness_counts_and_its_gradient_does_not_vanish():
    """The old scale of the whole output hardly sees the objectness, and its squared error on a score after the
    sigmoid has no gradient once the score has collapsed: the Bernoulli KL's gradient on the logit is s - t."""
    teacher = yolox_outputs(8)
    detector = scales_of(teacher, YOLOX_ROLES)
    logits = torch.full(teacher.shape[:2], -12.0, requires_grad=True)  # the objectness has collapsed

    def collapse() -> torch.Tensor:
        return torch.cat((teacher[..., :4], logits.sigmoid()[..., None], teacher[..., 5:]), -1)

    collapsed = collapse()
    relative = float(teacher[..., 4].pow(2).mean() / teacher[..., 4].var(0, unbiased=False).mean())
    moved = teacher.clone()  # every box value off by the same error relative to its variance across inputs
    noise = torch.randn(teacher[..., :4].shape, generator=torch.Generator().manual_seed(1))
    moved[..., :4] += noise / noise.pow(2).mean((0, 1)).sqrt() * (relative * detector.variances[0]).sqrt()
    old_ratio = float(distillation_loss([teacher], [collapsed], None, 4.0) / distillation_loss([teacher], [moved],
                                                                                             None, 4.0))
    new_ratio = float(distillation_loss([teacher], [collapsed], None, 4.0, detector=detector)
                      / distillation_loss([teacher], [moved], None, 4.0, detector=detector))
    assert old_ratio < 0.05 and new_ratio > 2 * old_ratio  # about a thirtieth, about a tenth
    objects = teacher[..., 4] > 0.5
    (old,) = torch.autograd.grad(distillation_loss([teacher], [collapse()], None, 4.0), logits)
    (new,) = torch.autograd.grad(distillation_loss([teacher], [collapse()], None, 4.0, detector=detector), logits)
    anchors = logits.numel()
    assert torch.allclose(new[objects] * anchors, collapsed[..., 4][objects] - teacher[..., 4][objects], atol=1e-4)
    assert float(old[objects].abs().max()) * 1e3 < float(new[objects].abs().min())


def test_a_student_that_ignores_the_image_loses_half_a_nat_per_value():
    """A value equal to the teacher's average over the inputs (per anchor) costs 1/2 nat: the variance is across
    inputs, so the anchor grid's fixed offsets, here an Ultralytics export's pixel centres, are no spread."""
    generator = torch.Generator().manual_seed(2)
    grid = torch.arange(400.0).repeat(4, 1) * 8.0  # cx, cy, w, h: fixed per anchor, large
    teacher = torch.cat((grid[None] + torch.randn(6, 4, 400, generator=generator),
                         torch.rand(6, 2, 400, generator=generator)), 1)  # (images, 4 + 2 classes, anchors)
    detector = scales_of(teacher, ULTRALYTICS_ROLES)
    assert torch.allclose(detector.variances[0], teacher[:, :4].var(0, unbiased=False).mean(1), rtol=1e-5)
    assert float(detector.variances[0].max()) < 1.5  # the noise's, not the grid's
    average = teacher.clone()
    average[:, :4] = teacher[:, :4].mean(0)
    assert float(distillation_loss([teacher], [average], None, 4.0, detector=detector)) == pytest.approx(2.0,
                                                                                                        rel=1e-4)
    assert detector.to_json()["classes"] == "Bernoulli KL on probabilities"


def test_scores_given_as_logits_take_the_same_kl():
    generator = torch.Generator().manual_seed(3)
    teacher, student = torch.randn(2, 5, 30, generator=generator), torch.randn(2, 5, 30, generator=generator)
    assert torch.allclose(bernoulli_kl(teacher, student, logits=True),
                          kl(teacher.sigmoid().double(), student.sigmoid().double()).float(), atol=1e-5)
    raw = (Role("boxes", 0, 1), Role("classes", 1, 1, kind="logit"))  # Ultralytics' raw (boxes, scores)
    boxes = torch.randn(4, 64, 30, generator=generator)
    detector = scales_of_outputs([boxes, teacher.repeat(2, 1, 1)], raw)
    loss = distillation_loss([boxes, teacher.repeat(2, 1, 1)], [boxes, student.repeat(2, 1, 1)], None, 4.0,
                             detector=detector)
    assert float(loss) == pytest.approx(float(bernoulli_kl(teacher, student, logits=True).mean((0, 2)).sum()),
                                        rel=1e-5)


def scales_of_outputs(outputs: list[torch.Tensor], roles) -> DetectorScales:
    """The roles' scales for a model of several outputs, a batch of all of them."""

    class Outputs(nn.Module):
        def forward(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(output[index.long()] for output in outputs)

    data = TrainingData("made", len(outputs[0]), False,
                        _batches=[Batch(torch.tensor([i]), None) for i in range(len(outputs[0]))])
    return detector_scales(Outputs(), data, roles, CPU)


def test_scales_are_over_the_data_not_the_batch_and_leave_the_random_state():
    """An image without objects has almost constant outputs: the variances come from all the training inputs,
    so its batch is not weighed thousands of times more. Drawing the batches (a DataLoader draws a seed) leaves
    the global random state as it was."""
    teacher = yolox_outputs(8)
    teacher[0, :, :4] = teacher[0, :1, :4]  # the first image's boxes are all alike
    dataset = torch.utils.data.TensorDataset(teacher)
    data = _from_dataset("made", dataset, 1, 0, 0, 1, shuffle=True)
    state = torch.get_rng_state()
    detector = detector_scales(nn.Identity(), data, YOLOX_ROLES, CPU)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(detector.variances[0], teacher[..., :4].var(0, unbiased=False).mean(0), rtol=1e-5)
    one = scales_of(teacher[1:2], YOLOX_ROLES)  # one input: the variance over the anchors
    assert torch.allclose(one.variances[0], teacher[1, :, :4].var(0, unbiased=False), rtol=1e-5)
    assert float(scales_of(teacher[:1], YOLOX_ROLES).variances[0].min()) == pytest.approx(1e-12)  # never below
    fewer = detector_scales(nn.Identity(), data, YOLOX_ROLES, CPU, samples=2)  # the first two of the epoch
    assert not torch.allclose(fewer.variances[0], detector.variances[0])


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="ultralytics not installed")
def test_a_native_ultralytics_detector_names_its_raw_outputs_roles():
    """``ultralytics:`` models return the head's raw (box-distribution logits, class logits): boxes are values,
    classes logits, both with their features along axis 1."""
    from hwprune.frontends import load_model
    from hwprune.frontends.ultralytics import RAW_ROLES

    loaded = load_model("ultralytics:yolov8n.yaml", input_shape=(1, 3, 64, 64))
    assert loaded.capabilities.detection_roles == RAW_ROLES
    generator = torch.Generator().manual_seed(0)
    data = TrainingData("made", 3, False, _batches=[Batch(torch.rand(1, 3, 64, 64, generator=generator), None)
                                                     for _ in range(3)])
    detector = detector_scales(loaded.module, data, RAW_ROLES, CPU)
    assert detector.variances[0].shape == (64,) and detector.variances[1] is None
    with torch.no_grad():
        boxes, scores = loaded.module(next(data.epoch(0)).inputs)
    assert float(distillation_loss([boxes, scores], [boxes, scores], None, 4.0, detector=detector)) == pytest.approx(
        0, abs=1e-6)
    moved = distillation_loss([boxes, scores], [boxes, scores - 1.0], None, 4.0, detector=detector)
    expected = bernoulli_kl(scores, scores - 1.0, logits=True).mean((0, 2)).sum()
    assert float(moved) == pytest.approx(float(expected), rel=1e-5) and float(moved) > 0
