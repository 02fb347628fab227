"""``FILE.pt2``: a ``torch.export`` program, lifted back to a module."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError


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
