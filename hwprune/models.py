"""Resolve a model spec (``torchvision:NAME``, ``timm:NAME``, ``file.py:factory``, ``file.pt2``) to a module.

Every failure is a :class:`ModelSpecError` whose message names the spec, so the CLI can print one
line and exit 2 instead of a traceback.

Random weights are drawn under a seed (``DEFAULT_SEED`` unless told otherwise), and so is the
example input, so that the same spec always gives the same model: a plan records the digest of
the state dict it was made for (``state_digest``) and re-applying it rebuilds and checks that model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hwprune.errors import ModelSpecError

DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
DEFAULT_SEED = 0


@dataclass
class LoadedModel:
    """A model in eval mode with the input it is analysed, exported and timed on."""

    name: str
    module: nn.Module
    example_input: torch.Tensor
    weights: str  # where the weights came from, for the plan's provenance
    seed: int | None  # the seed random weights and the example were drawn with; None: weights from a file


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


def load_model(spec: str, input_shape: tuple[int, ...] | None = None, weights: str | None = None,
               seed: int = DEFAULT_SEED) -> LoadedModel:
    """Load ``spec``; ``input_shape`` overrides the model's default example input. Random weights,
    a factory's and the example input are drawn under ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _load(spec, input_shape, weights, seed)


def _load(spec: str, input_shape: tuple[int, ...] | None, weights: str | None, seed: int) -> LoadedModel:
    source = f"random, seed {seed}"
    if spec.startswith("torchvision:"):
        module, shape = _load_torchvision(spec.split(":", 1)[1], weights)
        example = None
        source = source if weights is None else f"torchvision {weights} weights from the torch hub cache"
    elif spec.startswith("timm:"):
        module, shape = _load_timm(spec.split(":", 1)[1], weights)
        example = None
    elif spec.endswith(".pt2"):
        module, example = _load_exported(Path(spec))
        shape = None
        source = f"the program file {spec}"
    elif ".py:" in spec:
        path, factory = spec.rsplit(":", 1)
        module, example = _load_factory(Path(path), factory)
        shape = None
        source = f"{factory}() in {path}, called with the global seed {seed}"
    else:
        raise ModelSpecError(
            f"model spec {spec!r} not understood: use torchvision:NAME, timm:NAME, path/to/file.py:factory "
            "or path/to/program.pt2"
        )
    if input_shape is not None:  # same kind of input as the model's own example, new shape
        if example is None or example.is_floating_point():
            example = torch.randn(input_shape)
        else:
            example = torch.randint(0, int(example.max()) + 1, input_shape, dtype=example.dtype)
    elif example is None:
        example = torch.randn(shape or DEFAULT_IMAGE_SHAPE)
    seeded = source.startswith("random") or ".py:" in spec  # the weights depend on the seed
    return LoadedModel(spec, module.eval(), example, source, seed if seeded else None)


def _load_torchvision(name: str, weights: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelSpecError(f"torchvision:{name}: no such torchvision model (see torchvision.models.list_models())")
    shape = DEFAULT_IMAGE_SHAPE
    weight_enum = None
    try:
        weight_enum = torchvision.models.get_model_weights(name).DEFAULT
        crop = weight_enum.transforms().crop_size
        size = crop[0] if isinstance(crop, (list, tuple)) else crop
        shape = (1, 3, int(size), int(size))
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    if weights is None:
        return torchvision.models.get_model(name, weights=None), shape
    if weight_enum is None:
        raise ModelSpecError(f"torchvision:{name}: has no pretrained weights")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight_enum.url).name
    if not cached.exists():
        raise ModelSpecError(f"torchvision:{name}: weights not present at {cached} (hwprune never downloads)")
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return model, shape


def _load_timm(name: str, weights: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import timm
    except ImportError:
        raise ModelSpecError(f"timm:{name}: timm is not installed (pip install 'hwprune[timm]')") from None
    if name not in timm.list_models():
        raise ModelSpecError(f"timm:{name}: no such timm model")
    if weights is not None:
        raise ModelSpecError(f"timm:{name}: loading timm weights is not supported offline; use a .py factory")
    model = timm.create_model(name, pretrained=False)
    return model, (1, *model.default_cfg.get("input_size", DEFAULT_IMAGE_SHAPE[1:]))


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


def _load_factory(path: Path, factory: str) -> tuple[nn.Module, torch.Tensor | None]:
    fn = user_function(str(path), factory)
    try:
        made = fn()
    except Exception as exc:
        raise ModelSpecError(f"{path}:{factory}() failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        module, example = made
        if not isinstance(example, torch.Tensor):
            raise ModelSpecError(f"{path}:{factory}() must return a tensor as its example input")
        return module, example
    if isinstance(made, nn.Module):
        return made, None
    raise ModelSpecError(f"{path}:{factory}() must return an nn.Module or (nn.Module, example_input)")


def _load_exported(path: Path) -> tuple[nn.Module, torch.Tensor | None]:
    if not path.is_file():
        raise ModelSpecError(f"{path}: file not found")
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ModelSpecError(f"{path}: not a torch.export program: {type(exc).__name__}: {exc}") from exc
    args = program.example_inputs[0] if program.example_inputs else ()
    example = args[0] if args and isinstance(args[0], torch.Tensor) else None
    from hwprune.graph.lift import lift_exported_program

    return lift_exported_program(program), example
