"""Model sources behind one registry: a spec (``torchvision:NAME``, ``timm:NAME``, ``file.py:factory``,
``file.pt2``, ``onnx:FILE.onnx``, ``ultralytics:NAME.yaml``, ``ultralytics:FILE.pt``, ``hf:PATH``, ``hf:NAME``)
is claimed by one frontend (one module each), which loads it and declares what the model can do.

Every failure is a :class:`ModelSpecError` whose message names the spec, so the CLI can print one
line and exit 2 instead of a traceback. Random weights are drawn under a seed (``DEFAULT_SEED`` unless
told otherwise), and so is the example input, so that the same spec always gives the same model: a plan
records the digest of the state dict it was made for (``state_digest``) and re-applying it rebuilds and
checks that model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import (
    DEFAULT_IMAGE_SHAPE,
    DEFAULT_SEED,
    HUB_WEIGHTS,
    Capabilities,
    LoadedModel,
    check_model,
    parse_input_shape,
    state_digest,
    user_function,
    weights_named,
)


@dataclass(frozen=True)
class Made:
    """What a frontend made of a spec."""

    module: nn.Module
    example: torch.Tensor | None  # the model's own example input; None: random at ``shape``
    shape: tuple[int, ...] | None = None  # the default example shape (None: DEFAULT_IMAGE_SHAPE)
    weights: str | None = None  # where the weights came from; None: random, drawn under the seed
    seeded: bool = False  # the weights depend on the seed though they have a source (a factory)
    shaped: bool = False  # the example already has the requested input shape and kind (ONNX, token ids)
    source_onnx: Path | None = None  # the user's ONNX file: the baseline compile measures against
    capabilities: Capabilities = field(default_factory=Capabilities)


@dataclass(frozen=True)
class Frontend:
    name: str
    claims: Callable[[str], bool]
    load: Callable[[str, tuple[int, ...] | None, str | None, int, bool], Made]  # spec, shape, weights, seed, pickle
    save: Callable[[nn.Module, str, Path], None] | None = None  # the pruned model in the framework's format
    native_file: str | None = None  # what ``save`` writes


def _torchvision(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.torchvision import _load_torchvision

    module, default = _load_torchvision(spec.split(":", 1)[1], weights)
    return Made(module, None, default, None if weights is None else f"torchvision {weights} {HUB_WEIGHTS}")


def _timm(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.timm import _load_timm

    module, default = _load_timm(spec.split(":", 1)[1], weights)
    return Made(module, None, default)


def _onnx(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.onnx import _load_onnx

    path = Path(spec.split(":", 1)[1])
    module, example, capabilities = _load_onnx(path, shape)
    return Made(module, example, weights=f"the ONNX file {path}", shaped=True, source_onnx=path,
                capabilities=capabilities)


def _ultralytics(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.ultralytics import RAW_ROLES, _load_ultralytics, box_decode

    module, default, checkpoint = _load_ultralytics(spec.split(":", 1)[1], weights, trust_pickle, shape)
    return Made(module, None, default, None if checkpoint is None else f"the Ultralytics checkpoint {checkpoint}",
                capabilities=Capabilities(detections=box_decode(module), detection_roles=RAW_ROLES,
                                          native_format=ULTRALYTICS_FILE))


def _hf(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.hf.decode import wrapped_decode_step
    from hwprune.frontends.hf.model import _load_hf

    module, example, source = _load_hf(spec.split(":", 1)[1], weights, shape)
    step = wrapped_decode_step if module.generates else None
    return Made(module, example, weights=source, shaped=True,
                capabilities=Capabilities(decode_step=step, native_format=HF_FOLDER))


def _pt2(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.pt2 import _load_exported

    module, example = _load_exported(Path(spec))
    return Made(module, example, weights=f"the program file {spec}")


def _factory(spec: str, shape, weights, seed, trust_pickle) -> Made:
    from hwprune.frontends.factory import _load_factory

    path, factory = spec.rsplit(":", 1)
    module, example = _load_factory(Path(path), factory)
    return Made(module, example, weights=f"{factory}() in {path}, called with the global seed {seed}", seeded=True)


def _save_ultralytics(module: nn.Module, spec: str, folder: Path) -> None:
    from hwprune.frontends.ultralytics import save_ultralytics

    save_ultralytics(module, spec, folder / ULTRALYTICS_FILE)


def _save_hf(module: nn.Module, spec: str, folder: Path) -> None:
    from hwprune.frontends.hf.model import HFModel, save_hf

    if not isinstance(module, HFModel):
        raise ModelSpecError(f"{spec}: only a model loaded from an hf: spec can be saved with save_pretrained")
    save_hf(module, folder / HF_FOLDER)


ULTRALYTICS_FILE, HF_FOLDER = "pruned_ultralytics.pt", "pruned_hf"
NATIVE_FILES = (ULTRALYTICS_FILE, HF_FOLDER)  # what save_native may write, for staging and clean-up
FRONTENDS = (
    Frontend("torchvision", lambda s: s.startswith("torchvision:"), _torchvision),
    Frontend("timm", lambda s: s.startswith("timm:"), _timm),
    Frontend("onnx", lambda s: s.startswith("onnx:"), _onnx),
    Frontend("ultralytics", lambda s: s.startswith("ultralytics:"), _ultralytics, _save_ultralytics, ULTRALYTICS_FILE),
    Frontend("hf", lambda s: s.startswith("hf:"), _hf, _save_hf, HF_FOLDER),
    Frontend("pt2", lambda s: s.endswith(".pt2"), _pt2),
    Frontend("factory", lambda s: ".py:" in s, _factory),
)


def frontend_of(spec: str) -> Frontend:
    """The frontend that claims ``spec`` (the first, in registry order), else a one-line error."""
    found = next((f for f in FRONTENDS if f.claims(spec)), None)
    if found is None:
        hint = f" (an ONNX file is loaded as onnx:{spec})" if spec.endswith(".onnx") else ""
        raise ModelSpecError(
            f"model spec {spec!r} not understood: use torchvision:NAME, timm:NAME, path/to/file.py:factory, "
            f"path/to/program.pt2, onnx:FILE.onnx, ultralytics:NAME.yaml, ultralytics:FILE.pt, hf:PATH or hf:NAME{hint}"
        )
    return found


def load_model(spec: str, input_shape: tuple[int, ...] | None = None, weights: str | None = None,
               seed: int = DEFAULT_SEED, trust_pickle: bool = False) -> LoadedModel:
    """Load ``spec``; ``input_shape`` overrides the model's default example input. Random weights,
    a factory's and the example input are drawn under ``seed`` (the global RNG is left as it was).
    ``trust_pickle`` lets an ``ultralytics:FILE.pt`` that ``torch.load(weights_only=True)`` refuses be
    fully unpickled, which can run code from the file: an explicit opt-in, never a fallback."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        made = frontend_of(spec).load(spec, input_shape, weights, seed, trust_pickle)
        example = made.example
        if input_shape is not None and not made.shaped:  # same kind of input as the model's own, new shape
            if example is None or example.is_floating_point():
                example = torch.randn(input_shape)
            else:
                example = torch.randint(0, int(example.max()) + 1, input_shape, dtype=example.dtype)
        elif example is None:
            example = torch.randn(made.shape or DEFAULT_IMAGE_SHAPE)
    random = made.weights is None
    return LoadedModel(spec, made.module.eval(), example, made.weights or f"random, seed {seed}",
                       seed if random or made.seeded else None, made.source_onnx, made.capabilities)


def save_native(module: nn.Module, spec: str, folder: Path) -> str | None:
    """Save a pruned model in its framework's own format beside ``pruned.pt``, where its frontend has one:
    an Ultralytics checkpoint for an ``ultralytics:`` model, a ``save_pretrained`` folder for an ``hf:``
    model whose widths a transformers config can hold (else a ModelSpecError). Returns the file's name,
    else None."""
    frontend = frontend_of(spec)
    if frontend.save is None:
        return None
    frontend.save(module, spec, folder)
    return frontend.native_file


__all__ = ["DEFAULT_SEED", "FRONTENDS", "NATIVE_FILES", "Capabilities", "Frontend", "LoadedModel", "Made",
           "check_model", "frontend_of", "load_model", "parse_input_shape", "save_native", "state_digest",
           "user_function", "weights_named"]
