"""Numerical check of an exported ONNX file against the module it came from.

Both run on the same inputs (onnxruntime's CPU provider for the file); an element passes when
|onnx - torch| <= atol + rtol * |torch| (numpy.allclose, Polygraphy's convention). The worst
element is reported either way, so a pass is a number, not a boolean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.runtime.ort import VERIFY_SETTINGS, make_session

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass
class Verification:
    max_abs_err: float
    max_rel_err: float
    ok: bool
    atol: float
    rtol: float
    inputs: int
    worst: str

    def to_json(self) -> dict:
        return dict(vars(self))


def verify_onnx(model: nn.Module, path: str | Path, inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]],
                atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> Verification:
    """Compare ``path`` run by onnxruntime's CPU provider (numerics, whatever the target) with ``model``
    on every input: a tensor, or a tuple of tensors for a model of several inputs (fed in order)."""
    session = make_session(path, *VERIFY_SETTINGS)
    input_names = [item.name for item in session.get_inputs()]
    max_abs = max_rel = 0.0
    ok = True
    worst = "no outputs"
    with torch.no_grad():
        for n, x in enumerate(inputs):
            args = (x,) if isinstance(x, torch.Tensor) else tuple(x)
            expected = model(*args)
            expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
            produced = session.run(None, {name: a.numpy() for name, a in zip(input_names, args, strict=True)})
            for k, (want, got) in enumerate(zip(expected, produced, strict=True)):
                want = want.detach().numpy()
                error = np.abs(got - want)
                index = np.unravel_index(int(np.argmax(error)), error.shape) if error.size else ()
                if error.size and error[index] >= max_abs:
                    max_abs = float(error[index])
                    worst = (f"input {n}, output {k} at {tuple(int(i) for i in index)}: onnx {float(got[index]):.6g}, "
                             f"torch {float(want[index]):.6g}")
                scale = float(np.abs(want).max()) if want.size else 0.0
                max_rel = max(max_rel, float(error.max()) / scale if scale > 0 and error.size else 0.0)
                ok &= bool(np.allclose(got, want, atol=atol, rtol=rtol))
    return Verification(max_abs, max_rel, ok, atol, rtol, len(inputs), worst)


def check_inputs(example: torch.Tensor, dynamic_batch: bool = False) -> list[torch.Tensor]:
    """What an export is checked on: three seeded inputs of the example's shape (the example itself for
    integer inputs, token ids), and a batch of 3 when the batch axis is dynamic."""
    if not example.is_floating_point():
        return [example]
    shapes = [tuple(example.shape)] * 3 + ([(3, *example.shape[1:])] if dynamic_batch else [])
    return [torch.randn(shape, generator=torch.Generator().manual_seed(n)) for n, shape in enumerate(shapes)]


def verified(model: nn.Module, path: str | Path, example: torch.Tensor, dynamic_batch: bool, atol: float,
             rtol: float) -> Verification:
    """The check every exported model passes before it is reported (compile and apply alike): three
    seeded inputs of the example's shape, and a batch of 3 when the batch axis is dynamic. A
    mismatch is an error, not a warning."""
    verification = verify_onnx(model, path, check_inputs(example, dynamic_batch), atol, rtol)
    if not verification.ok:
        raise HwpruneError(f"exported ONNX does not match the pruned model (max abs err "
                           f"{verification.max_abs_err:.3g}; worst {verification.worst})")
    return verification
