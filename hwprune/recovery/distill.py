"""Knowledge distillation from the unpruned model (teacher) into the pruned one (student).

Loss per batch, summed: for each class-score output (N x C, or a language model's logits at every
position: B x S x vocabulary, as Minitron distils), KL(teacher/T || student/T) x T^2 (Hinton et al.);
for any other output (detection heads, embeddings), the mean squared error scaled by the teacher
output's mean square, so outputs of any magnitude weigh alike; with labels, the task's
cross-entropy on the first class-score output; with ``feature_loss``, the same scaled error between
the student's feature maps and the teacher's at the channels the plan kept (each pruned group's
root layer). AdamW with a cosine schedule over all steps.

A detector whose frontend names its outputs' roles (``Capabilities.detection_roles``: which features its
decode reads as boxes, objectness, class scores, and whether each is a real value, a probability or a logit)
takes instead, for those outputs, the KL divergence from the teacher's outputs to the student's with each
feature read as the distribution it stands for, summed over the features and averaged over the anchors:
a score (objectness, a class) is a Bernoulli probability, so the Bernoulli KL (the binary form of the KL on
class logits above); a real value (box offset, log-size, coordinate) is a Gaussian whose spread is the
teacher's own across the training inputs (``detector_scales``), so (s - t)^2 / (2 var). Why: the scale of the
whole output lets the largest numbers decide (on a YOLOX head the log-sizes hold 81% of the output's mean
square, the objectness 0.1%, though the objectness decides which boxes exist), and a squared error on a
score after its sigmoid has a gradient that vanishes as the score collapses (x s(1 - s)), so a lost
objectness did not come back; the Bernoulli KL's gradient on the score's logit is s - t, and every term is in
nats, so boxes and scores weigh by the information they carry, with no weights to tune. Standardising each
feature's squared error alike (every feature's relative error counted the same) was measured and rejected:
on ddddocr's detector it kept fewer boxes than the whole-output scale at both learning rates tried (weighing
the sparse objectness as heavily as the boxes left the held-out boxes worse, and at lr 1e-3 collapsed the
objectness for good); see docs/recover.md. The variance is across inputs, per output element, so an anchor grid's fixed
offsets (an Ultralytics export's pixel centres) are no spread, and over the data, not per batch, so an
image without objects does not make its near-constant outputs weigh thousands of times more.

The student is trained as the Plan built it, so every structural decision holds: width by the
shapes themselves. ``constraints`` are called after every optimiser step for decisions that
weights alone do not hold (N:M masks re-applied). BatchNorm layers train (batch statistics, running
statistics updated) like the rest of the student; the teacher stays in eval mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.evaluate.calibration import output_tensors
from hwprune.frontends.base import Role
from hwprune.recovery.data import Batch, TrainingData
from hwprune.recovery.world import World

SCALE_SAMPLES = 128  # a detector's feature variances are estimated on about this many training inputs


@dataclass(frozen=True)
class Recipe:
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 4.0
    batch_size: int = 64
    seed: int = 0
    feature_loss: bool = False


@dataclass
class Trained:
    """What a run has done, checkpointed each epoch: the loss per epoch and the samples per second."""

    epoch: int = 0  # epochs finished
    losses: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class DetectorScales:
    """A detector's roles (``frontends.base.Role``) and, for each ``value`` role, the teacher's variance of each of
    its features across the training inputs (``detector_scales``; None for scores): the loss on the outputs the
    roles cover."""

    roles: tuple[Role, ...]
    variances: tuple[torch.Tensor | None, ...]

    @property
    def outputs(self) -> set[int]:
        return {role.output for role in self.roles}

    def loss(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        """KL(teacher || student) per anchor, each feature by its kind, summed over the features and averaged
        over the batch and the anchors (see the module docstring)."""
        total = student[0].new_zeros(())
        for role, variance in zip(self.roles, self.variances, strict=True):
            t, s = role.of(teacher), role.of(student)
            if role.kind == "value":
                divergence = (s - t).pow(2) / (2 * variance.to(s))
            else:
                divergence = bernoulli_kl(t, s, role.kind == "logit")
            total = total + divergence.reshape(-1, divergence.shape[-1]).mean(0).sum()
        return total

    def to_json(self) -> dict[str, list[float] | str]:
        """Per role, the variance of each feature, or the divergence a score takes."""
        return {role.name: (variance.tolist() if variance is not None else
                            f"Bernoulli KL on {'logits' if role.kind == 'logit' else 'probabilities'}")
                for role, variance in zip(self.roles, self.variances, strict=True)}


def bernoulli_kl(teacher: torch.Tensor, student: torch.Tensor, logits: bool = False) -> torch.Tensor:
    """KL(teacher || student) of Bernoulli scores, elementwise: probabilities, or ``logits`` before their sigmoid.
    On the student's logit its gradient is s - t, which does not vanish as the score saturates."""
    if logits:  # the cross-entropy less the teacher's entropy, both in the same arithmetic: 0 when equal
        target = torch.sigmoid(teacher)
        cross = nn.functional.binary_cross_entropy_with_logits
    else:
        target = teacher = teacher.clamp(0, 1)
        cross = nn.functional.binary_cross_entropy
    return cross(student, target, reduction="none") - cross(teacher, target, reduction="none")


def detector_scales(teacher: nn.Module, data: TrainingData, roles: Sequence[Role], world: World,
                    samples: int = SCALE_SAMPLES) -> DetectorScales:
    """For each ``value`` role, the teacher's variance of each of its features across the training inputs (the
    first batches of the first epoch, up to ``samples`` inputs of all processes), per output element, averaged
    over the anchors; with one input, the variance over the anchors. Never below 1e-12. The global random state
    is kept."""
    teacher.eval()
    values = [role for role in roles if role.kind == "value"]
    sums: dict[int, list[torch.Tensor]] = {}
    count = 0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for batch in data.epoch(0) if values else ():
            if count * world.size >= samples:
                break
            outputs = output_tensors(teacher(batch.inputs.to(world.device)))
            for output in {role.output for role in values}:
                t = outputs[output].double()
                first, second = sums.setdefault(output, [t.new_zeros(t.shape[1:]), t.new_zeros(t.shape[1:])])
                first += t.sum(0)
                second += t.pow(2).sum(0)
            count += len(batch.inputs)
    if values:
        count = round(world.sum(count))
        for pair in sums.values():
            for total in pair:
                world.sum_tensor(total)
    variances: list[torch.Tensor | None] = []
    for role in roles:
        if role.kind != "value":
            variances.append(None)
            continue
        first, second = sums[role.output]
        mean = role.features(first[None] / count)
        mean = mean.reshape(-1, mean.shape[-1])
        if count > 1:
            square = role.features(second[None] / count)
            variance = (square.reshape(-1, square.shape[-1]) - mean.pow(2)).clamp_min(0).mean(0)
        else:
            variance = mean.var(0, unbiased=False)
        variances.append(variance.float().clamp_min(1e-12))
    return DetectorScales(tuple(roles), tuple(variances))


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], targets: torch.Tensor | None,
                      temperature: float, token_logits: bool = False,
                      detector: DetectorScales | None = None) -> torch.Tensor:
    """The distillation loss of one batch (see the module docstring); ``token_logits``: a 3-D output is
    logits at every position (a language model's B x S x vocabulary), so it takes the KL term too, per position;
    ``detector``: the outputs its roles cover take its loss instead of the scaled error."""
    loss = student[0].new_zeros(())
    covered: set[int] = set()
    if detector is not None:
        loss = loss + detector.loss(teacher, student)
        covered = detector.outputs
    for index, (t, s) in enumerate(zip(teacher, student, strict=True)):
        if index in covered:
            continue
        if t.shape[-1] > 1 and (t.dim() == 2 or (token_logits and t.dim() == 3)):
            kl = nn.functional.kl_div(nn.functional.log_softmax(s.reshape(-1, s.shape[-1]) / temperature, dim=-1),
                                      nn.functional.log_softmax(t.reshape(-1, t.shape[-1]) / temperature, dim=-1),
                                      log_target=True, reduction="batchmean")
            loss = loss + kl * temperature ** 2
        else:
            loss = loss + scaled_error(s, t)
    if targets is not None:
        loss = loss + nn.functional.cross_entropy(student[0], targets)
    return loss


def scaled_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-12)


def check_targets(batch: Batch, outputs: Sequence[torch.Tensor], spec: str) -> None:
    """Targets must be class indices of the first output's classes."""
    if batch.targets is None:
        return
    first = outputs[0]
    if first.dim() != 2 or batch.targets.dim() != 1 or batch.targets.is_floating_point():
        raise ModelSpecError(f"--data {spec}: targets of shape {list(batch.targets.shape)} do not fit the model's "
                             f"output {list(first.shape)} (class indices for an N x classes output)")
    low, high = int(batch.targets.min()), int(batch.targets.max())
    if low < 0 or high >= first.shape[1]:
        raise ModelSpecError(f"--data {spec}: targets run from {low} to {high}; the model has {first.shape[1]} "
                             "classes")


class FeatureTaps:
    """Forward hooks on the layers a feature loss compares, teacher channels selected by the plan."""

    def __init__(self, teacher: nn.Module, student: nn.Module, kept: dict[str, list[int]]):
        self.kept = kept
        self.teacher: dict[str, torch.Tensor] = {}
        self.student: dict[str, torch.Tensor] = {}
        self._handles = [self._tap(teacher, name, self.teacher) for name in kept]
        self._handles += [self._tap(student, name, self.student) for name in kept]

    @staticmethod
    def _tap(model: nn.Module, name: str, into: dict[str, torch.Tensor]):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            into[name] = output
        return model.get_submodule(name).register_forward_hook(record)

    def loss(self) -> torch.Tensor:
        parts = [scaled_error(self.student[name], self.teacher[name][:, self.kept[name]]) for name in self.kept]
        return sum(parts) / len(parts)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def distil(teacher: nn.Module, student: nn.Module, data: TrainingData, recipe: Recipe, world: World,
           progress: Trained, state: dict | None = None, kept: dict[str, list[int]] | None = None,
           constraints: Sequence[Callable[[nn.Module], None]] = (),
           on_batch: Callable[[int, float, int], None] | None = None,
           on_epoch: Callable[[Trained, dict], None] | None = None,
           detector: DetectorScales | None = None) -> Trained:
    """Train ``student`` towards ``teacher`` for the recipe's epochs after ``progress.epoch``; ``state``
    (optimiser and schedule) resumes a run. ``on_epoch`` gets the progress and the state to checkpoint;
    ``detector``: a detector's roles and their scales (``detector_scales``), for its outputs' loss."""
    teacher.eval()
    model = world.wrap(student)
    optimiser = torch.optim.AdamW(student.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * len(data)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    if state is not None:
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
    taps = FeatureTaps(teacher, student, kept) if recipe.feature_loss and kept else None
    checked = False
    try:
        for epoch in range(progress.epoch, recipe.epochs):
            student.train()
            total, samples, started = 0.0, 0, time.perf_counter()
            for index, batch in enumerate(data.epoch(epoch)):
                inputs = batch.inputs.to(world.device)
                targets = None if batch.targets is None else batch.targets.to(world.device)
                with torch.no_grad():
                    teacher_out = output_tensors(teacher(inputs))
                if not checked:
                    check_targets(batch, teacher_out, data.spec)
                    checked = True
                loss = distillation_loss(teacher_out, output_tensors(model(inputs)), targets, recipe.temperature,
                                         getattr(teacher, "returns_logits", False), detector)
                if taps is not None:
                    loss = loss + taps.loss()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                for constraint in constraints:
                    constraint(student)
                total += float(loss.detach()) * len(inputs)
                samples += len(inputs)
                if on_batch is not None:
                    on_batch(index, float(loss.detach()), len(inputs) * world.size)
            mean_loss = world.mean(total / max(samples, 1))
            progress.losses.append(mean_loss)
            progress.throughput.append(world.sum(samples) / max(time.perf_counter() - started, 1e-9))
            progress.epoch = epoch + 1
            if on_epoch is not None:
                on_epoch(progress, {"optimiser": optimiser.state_dict(), "schedule": schedule.state_dict()})
    finally:
        if taps is not None:
            taps.close()
    student.eval()
    return progress

