"""ONNX export: one opset for onnxruntime and TensorRT 10.3, static shapes unless asked, written atomically.

With ``dynamic_batch`` the first axis of input and output is symbolic (TensorRT then needs an
optimisation profile, which the engine config adds). With onnxslim installed (``hwprune[slim]``)
the graph is cleaned up (constant folding, dead nodes) after export; the compile verifies the
file that is finally written. Weights stay inside the one file: the TorchScript exporter only
moves them to external data for models over 2 GB, beyond what hwprune targets.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.io import publish

# TensorRT 10.3 (JetPack 6) parses opsets up to 20; onnxruntime 1.18+ runs 17 everywhere.
ONNX_OPSET = 17


def slim_available() -> bool:
    return importlib.util.find_spec("onnxslim") is not None


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, dynamic_batch: bool = False,
                slim: bool = False) -> Path:
    """Export ``model`` on ``example_input`` (TorchScript exporter) to ``path``; returns the path."""
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    return export_named(model, (example_input,), path, ["input"], ["output"], axes, slim)


def export_named(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | Path, input_names: list[str],
                 output_names: list[str], dynamic_axes: dict | None = None, slim: bool = False) -> Path:
    """Export ``model`` on the inputs ``args``, named, to ``path`` atomically; returns the path. For models
    of several inputs and outputs (a decode step's token and cache tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), args, tmp, opset_version=ONNX_OPSET, dynamo=False,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
        if slim:
            _slim(Path(tmp))
        publish(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        raise HwpruneError(f"ONNX export failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from exc
    return path


def _slim(path: Path) -> None:
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(str(path)), str(path))
