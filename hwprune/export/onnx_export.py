"""ONNX export: static shapes, one opset for onnxruntime and TensorRT 10.3, written atomically."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError

# TensorRT 10.3 (JetPack 6) parses opsets up to 20; onnxruntime 1.18+ runs 17 everywhere.
ONNX_OPSET = 17


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` on ``example_input`` (TorchScript exporter) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example_input,), tmp, opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["input"], output_names=["output"])
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise HwpruneError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    return path
