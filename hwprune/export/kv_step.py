"""A decoder's decode step (a module of plain tensors its frontend builds: ``forward(input_ids, key_0, value_0,
key_1, ...) -> (logits, new key_0, new value_0, ...)``) exported to ONNX with named inputs and outputs and checked
against PyTorch on seeded random tokens and caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.export.onnx_export import ExportStyle, export_named
from hwprune.export.verify import Verification, verify_onnx

VERIFY_INPUTS = 3  # seeded random tokens and caches the exported step is checked on


@dataclass(frozen=True)
class DecodeExport:
    """An exported decode step: the file, its check against PyTorch, and per layer the past keys' shape
    (batch, key/value heads, past length, head width; the values' alike)."""

    path: Path
    verification: Verification
    past: list[tuple[int, ...]]


def decode_inputs(shapes: list[tuple[int, ...]], vocab: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A random next token below ``vocab`` and random past keys and values of ``shapes``, seeded."""
    generator = torch.Generator().manual_seed(seed)
    token = torch.randint(0, vocab, (shapes[0][0], 1), generator=generator)
    return (token, *(torch.randn(shape, generator=generator) for shape in shapes for _ in range(2)))


def input_names(layers: int) -> list[str]:
    return ["input_ids", *(f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value"))]


def output_names(layers: int) -> list[str]:
    return ["logits", *(f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value"))]


def export_decode(step: nn.Module, shapes: list[tuple[int, ...]], vocab: int, path: str | Path, style: ExportStyle,
                  atol: float, rtol: float) -> DecodeExport:
    """Export a decode ``step`` whose cached layers' past keys (and values) have ``shapes`` to ``path`` and check
    it against PyTorch on :data:`VERIFY_INPUTS` seeded random tokens below ``vocab`` and caches; a mismatch is an
    error, as for the prefill export."""
    path = export_named(step, decode_inputs(shapes, vocab, 0), path, input_names(len(shapes)),
                        output_names(len(shapes)), style=style)
    verification = verify_onnx(step, path, [decode_inputs(shapes, vocab, seed) for seed in range(VERIFY_INPUTS)],
                               atol, rtol)
    if not verification.ok:
        raise HwpruneError(f"the exported decode step does not match PyTorch (max abs err "
                           f"{verification.max_abs_err:.3g}; worst {verification.worst})")
    return DecodeExport(path, verification, shapes)
