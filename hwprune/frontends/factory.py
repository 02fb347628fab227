"""``file.py:factory`` (or ``module:factory``): the user's function returning a model, or a model and its
example input."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import user_function


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
