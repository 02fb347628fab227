"""What every frontend shares: the loaded model and what it can do, the weights' digest a plan is made
for, input shapes, a user's function from a file or module, and the check that a model is the one a plan
was made for."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hwprune.errors import ModelSpecError, PlanError
from hwprune.plan import Plan

# a detector's outputs and its input's shape to boxes per image, (n, 6) rows of x1, y1, x2, y2, score, class
Decode = Callable[[list[torch.Tensor], tuple[int, ...]], list[torch.Tensor]]
DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
DEFAULT_SEED = 0
HUB_WEIGHTS = "weights from the torch hub cache"


@dataclass(frozen=True)
class Role:
    """One kind of quantity a detector's decode reads from its outputs (``boxes``, ``objectness``, ``classes``):
    output ``output``'s features ``start`` to ``stop`` (None: the last) along ``axis``; ``kind``: ``value`` (a
    real number: box offsets, sizes, coordinates), ``probability`` (a score after its sigmoid) or ``logit`` (a
    score before it). A frontend names its format's roles beside its decode (``Capabilities.detection_roles``),
    and recover distils each feature by the divergence its kind calls for."""

    name: str
    output: int
    axis: int
    start: int = 0
    stop: int | None = None
    kind: str = "value"

    def of(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """This role's features of the model's ``outputs``, moved to the last axis: (batch, ..., features)."""
        return self.features(outputs[self.output])

    def features(self, output: torch.Tensor) -> torch.Tensor:
        """This role's features of its output (or of a tensor shaped like it), moved to the last axis."""
        return output.movedim(self.axis, -1)[..., self.start:self.stop]


@dataclass(frozen=True)
class StepModule:
    """A decoder's one decode step as a module of plain tensors: ``forward(input_ids, key_0, value_0, ...)`` ->
    ``(logits, new key_0, new value_0, ...)``; ``past``: per cached layer, its past keys' shape (values alike);
    ``vocab``: the token ids it takes are below it."""

    module: nn.Module
    past: list[tuple[int, ...]]
    vocab: int


@dataclass(frozen=True)
class Capabilities:
    """What a loaded model can do beyond a forward, as its frontend declares it; the pipeline reads these,
    never the model's attributes."""

    # a decoder with a KV cache (compile also measures its decode step): builds the step of the model as loaded
    # or pruned, at a batch and a past length
    decode_step: Callable[[nn.Module, int, int], StepModule] | None = None
    detections: Decode | None = None  # a box decode (``frontends.decodes``): box agreement on the user's images
    # which features of the detector's outputs the decode reads as boxes, objectness, class scores (recover's loss)
    detection_roles: tuple[Role, ...] | None = None
    boxes_unmeasured: str | None = None  # why a model whose outputs look like a detector's has no box decode
    native_format: str | None = None  # the framework's own format the pruned model is saved in, if any


@dataclass
class LoadedModel:
    """A model in eval mode with the input it is analysed, exported and timed on."""

    name: str
    module: nn.Module
    example_input: torch.Tensor
    weights: str  # where the weights came from, for the plan's provenance
    seed: int | None  # the seed random weights and the example were drawn with; None: weights from a file
    source_onnx: Path | None = None  # an onnx: spec's file: the baseline compile measures and checks against
    capabilities: Capabilities = field(default_factory=Capabilities)


def weights_named(source: str) -> str | None:
    """The ``--weights`` value a recorded weights source was loaded with (``DEFAULT`` for torchvision's
    hub weights), so a model can be rebuilt from a plan alone; None for every other source."""
    if source.startswith("torchvision ") and source.endswith(HUB_WEIGHTS):
        return source.split()[1]
    return None


def state_digest(module: nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and values: which weights a plan was made for."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,3,224,224`` (or ``1x3x224x224``) into a tuple of positive ints."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise ModelSpecError(f"--input-shape {text!r}: expected comma-separated integers like 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelSpecError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return shape


def user_function(source: str, name: str) -> Callable:
    """``name`` from a Python file path or an importable module; any failure is a ModelSpecError."""
    if source.endswith(".py") and not Path(source).is_file():
        raise ModelSpecError(f"{source}: file not found")
    try:
        user = _import_file(Path(source)) if source.endswith(".py") else importlib.import_module(source)
    except Exception as exc:  # the user's file is arbitrary code: report any failure in one line
        raise ModelSpecError(f"{source}: importing failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(user, name, None)
    if not callable(fn):
        raise ModelSpecError(f"{source}: has no callable {name!r}")
    return fn


def _import_file(path: Path) -> ModuleType:
    module_name = f"_hwprune_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a Python file")
    user = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = user
    spec.loader.exec_module(user)
    return user


def _one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line: third-party errors often span several."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def check_model(plan: Plan, loaded: LoadedModel, plan_name: str) -> None:
    """A PlanError unless ``loaded`` has the input shape and the weights the plan was made for."""
    made_for = plan.provenance
    shape = tuple(loaded.example_input.shape)
    if shape != made_for.input_shape:
        raise PlanError(f"{plan_name}: made for input {made_for.input_shape}, the model's input is {shape} "
                        "(use --input-shape)")
    if made_for.state_sha256 is None:
        return
    digest = state_digest(loaded.module)
    if digest != made_for.state_sha256:
        raise PlanError(f"{plan_name}: made for {made_for.model} with weights sha256 {made_for.state_sha256[:16]} "
                        f"({made_for.weights}); {loaded.name} ({loaded.weights}) has {digest[:16]}: pass the model, "
                        "--weights or --seed the plan was made with")
