"""Knowledge distillation from the unpruned model (teacher) into the pruned one (student).

Loss per batch, summed: for each class-score output (N x C, or a language model's logits at every
position: B x S x vocabulary, as Minitron distils), KL(teacher/T || student/T) x T^2 (Hinton et al.);
for any other output (detection heads, embeddings), the mean squared error scaled by the teacher
output's mean square, so outputs of any magnitude weigh alike; with labels, the task's
cross-entropy on the first class-score output; with ``feature_loss``, the same scaled error between
the student's feature maps and the teacher's at the channels the plan kept (each pruned group's
root layer). AdamW with a cosine schedule over all steps.

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
from hwprune.recovery.data import Batch, TrainingData
from hwprune.recovery.world import World


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


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], targets: torch.Tensor | None,
                      temperature: float, token_logits: bool = False) -> torch.Tensor:
    """The distillation loss of one batch (see the module docstring); ``token_logits``: a 3-D output is
    logits at every position (a language model's B x S x vocabulary), so it takes the KL term too, per position."""
    loss = student[0].new_zeros(())
    for t, s in zip(teacher, student, strict=True):
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
           on_epoch: Callable[[Trained, dict], None] | None = None) -> Trained:
    """Train ``student`` towards ``teacher`` for the recipe's epochs after ``progress.epoch``; ``state``
    (optimiser and schedule) resumes a run. ``on_epoch`` gets the progress and the state to checkpoint."""
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
                                         getattr(teacher, "returns_logits", False))
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

