"""How much each depth (or N:M) choice costs the model's outputs: take it alone and measure.

For every span (activations inside removed, padding moved to its first conv: exactly what the
merged conv computes) and every droppable block (branch gone), the model runs on a calibration
batch, BatchNorm statistics re-estimated when the compile re-estimates them, and the cost is
1 - mean cosine to the unpruned outputs: the same measure as a channel group's sensitivity
(``importance.sensitivity``), so the joint search weighs both in one currency. LayerMerge builds
the same table from accuracy after a short fine-tune per span; ``distil_steps`` > 0 is that
stronger proxy: each candidate (a copy of the model with that option taken) is first distilled
from the unpruned model for that many steps on the calibration batches (recovery's loss, Adam),
then measured on a batch it was not trained on. It costs a copy and a short training run per
candidate; the compile states the time.

An N:M option masks its layer's weights (magnitude, no channel permutation: the permutation the
plan may add only keeps more magnitude, so this is the upper bound) and measures the same way; the
distillation proxy is not applied to it (training would regrow what the mask removed).

A span that removes no activation and pads nothing after its first conv is exact: cost 0,
nothing run. The table is keyed by the option's key, so every refinement round and frontier point of
one compile reuses it; ``CostTable`` keeps it in the user cache across compiles, under a digest of
the weights, the batches and the proxy, so a new budget for the same model and data costs nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.cost.structural import StructuralOption
from hwprune.evaluate.batchnorm import recalibrate_batchnorm, restored_batchnorm
from hwprune.evaluate.calibration import output_tensors
from hwprune.graph.hooks import run_hooked
from hwprune.graph.stack import hidden_in, hidden_out
from hwprune.importance.cache import batches_digest
from hwprune.importance.sensitivity import flat_outputs, output_change
from hwprune.io import write_text_atomic
from hwprune.plan import DroppedBlock, MergedSpan, NMLayer
from hwprune.sparsity.masks import nm_mask


@dataclass(frozen=True)
class Taking:
    """What costing a depth option needs of the stages after it, passed in (importance never imports
    the transform or recovery): the model with spans unmerged and blocks dropped, replaced runs' maps
    fitted on the batches given (the transform's ``unmerged``), and the distillation loss (recovery's)."""

    view: Callable[[nn.Module, torch.Tensor, Sequence[MergedSpan], Sequence[DroppedBlock], Sequence[torch.Tensor]],
                   nn.Module]
    loss: Callable[..., torch.Tensor]


def depth_costs(model: nn.Module, example_input: torch.Tensor, options: Sequence[StructuralOption],
                batch: torch.Tensor, recalibration: Sequence[torch.Tensor] = (), progress: object | None = None,
                distil_steps: int = 0, training: Sequence[torch.Tensor] = (),
                scales: dict[str, torch.Tensor] | None = None, *, taking: Taking) -> dict[str, float]:
    """Per option key, the output change when that option alone is taken (after ``distil_steps`` of
    distillation on ``training`` batches, when given); a layer replaced by a linear map has it fitted on
    ``training``, never on ``batch``; N:M masks weigh magnitudes by ``scales`` (per layer, its input
    channels' activation norms) where given."""
    model = model.eval()
    task = progress.add_task("depth importance", total=len(options)) if progress is not None and options else None
    costs = {}
    with torch.no_grad():
        reference = flat_outputs(model(batch))
        for option in options:
            if option.kind == "merge" and _exact(model, option):
                costs[option.key] = 0.0
            else:
                with restored_batchnorm(model):  # the view shares the model's BatchNorms
                    costs[option.key] = _cost(model, example_input, option, batch, reference, recalibration,
                                              taking, distil_steps, training, scales or {})
            if task is not None:
                progress.advance(task)
    return costs


def _cost(model: nn.Module, example_input: torch.Tensor, option: StructuralOption, batch: torch.Tensor,
          reference: list[torch.Tensor], recalibration: Sequence[torch.Tensor], taking: Taking, distil_steps: int = 0,
          training: Sequence[torch.Tensor] = (), scales: dict[str, torch.Tensor] | None = None) -> float:
    if option.kind == "sparse":
        with _masked(model, option.name, option.choice, (scales or {}).get(option.name)):
            if recalibration:
                recalibrate_batchnorm(model, recalibration)
            return output_change(reference, model(batch))
    merge, depth = ([option.choice], []) if option.kind == "merge" else ([], [option.choice])
    student = copy.deepcopy(model) if distil_steps else model  # trained: never the model's own layers
    changed = taking.view(student, example_input, merge, depth, training)  # a map is fitted off the measured batch
    if recalibration:
        recalibrate_batchnorm(changed, recalibration)
    if distil_steps:
        _distil(model, changed, training, distil_steps, taking.loss)
    return output_change(reference, changed(batch))


def block_influence(model: nn.Module, layers: Sequence[str], batch: torch.Tensor) -> dict[str, float]:
    """Per stack layer (``graph.stack``), 1 - the mean cosine between its input and output hidden states
    on ``batch``, over every position: Minitron's and ShortGPT's layer importance, which ranks layers by how
    little they turn the residual stream. One forward; reported beside each layer's measured output change."""
    seen: dict[str, float] = {}

    def hook_for(name: str):
        def record(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            cosine = nn.functional.cosine_similarity(hidden_in(args, kwargs).double(), hidden_out(output).double(),
                                                     dim=-1)
            seen[name] = 1.0 - float(cosine.mean())
        return record

    run_hooked(model, batch, {model.get_submodule(name): hook_for(name) for name in layers}, with_kwargs=True)
    return seen


def _distil(teacher: nn.Module, student: nn.Module, batches: Sequence[torch.Tensor], steps: int,
            distillation_loss: Callable[..., torch.Tensor]) -> None:
    """A short distillation of ``student`` towards ``teacher``: Adam, recovery's loss, BatchNorm frozen."""
    optimiser = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    student.eval()  # BatchNorm keeps the statistics just re-estimated
    with torch.enable_grad():
        for step in range(steps):
            inputs = batches[step % len(batches)]
            with torch.no_grad():
                target = output_tensors(teacher(inputs))
            loss = distillation_loss(target, output_tensors(student(inputs)), None, 1.0,
                                     getattr(teacher, "returns_logits", False))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    student.eval()


@contextmanager
def _masked(model: nn.Module, layer: str, nm: NMLayer, scale: torch.Tensor | None) -> Iterator[None]:
    """``layer``'s weight N:M-masked (by magnitude, times ``scale`` per input channel where given) for
    the duration, then restored."""
    weight = model.get_submodule(layer).weight
    original = weight.detach().clone()
    weight.data.mul_(nm_mask(weight, nm.n, nm.m, scale))
    try:
        yield
    finally:
        weight.data.copy_(original)


def _exact(model: nn.Module, option: StructuralOption) -> bool:
    convs = option.choice.convs
    return not option.choice.activations and all(
        model.get_submodule(name).padding in ((0, 0), 0) for name in convs[1:])



class CostTable:
    """Depth costs kept in ``$HWPRUNE_CACHE/depth/``: one JSON file per (weights, batches, proxy,
    N:M criterion)."""

    def __init__(self, folder: Path, weights_digest: str, batches: Sequence[torch.Tensor], distil_steps: int,
                 criterion: str = "magnitude"):
        self.path = folder / f"{batches_digest(f'{weights_digest}|{distil_steps}|{criterion}|', batches)}.json"
        try:
            self.costs: dict[str, float] = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self.costs = {}  # absent or unreadable: measured again

    def missing(self, options: Sequence[StructuralOption]) -> list[StructuralOption]:
        return [o for o in options if o.key not in self.costs]

    def add(self, costs: dict[str, float]) -> None:
        self.costs.update(costs)
        if costs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.costs, indent=1, sort_keys=True) + "\n")
