"""ONNX export: one opset for onnxruntime and TensorRT 10.3, static shapes unless asked, written atomically.

With ``dynamic_batch`` the first axis of input and output is symbolic (TensorRT then needs an
optimisation profile, which the engine config adds). With onnxslim installed (``hwprune[slim]``)
the graph of a model under 1 GiB of weights is cleaned up (constant folding, dead nodes) after
export (``slim_for``); the compile verifies the file that is finally written. The TorchScript
exporter moves the weights of a model over 2 GB to external data (``runtime.onnx_files``).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.runtime.onnx_files import copy_model, data_file

# TensorRT 10.3 (JetPack 6) parses opsets up to 20; onnxruntime 1.18+ runs 17 everywhere.
ONNX_OPSET = 17


SLIM_LIMIT_BYTES = 1 << 30


def slim_available() -> bool:
    return importlib.util.find_spec("onnxslim") is not None


def slim_for(model: nn.Module) -> bool:
    """Whether the exports of ``model`` and of every model pruned from it are slimmed: onnxslim is installed and
    ``model``'s weights are under 1 GiB. onnxslim holds several copies of the weights while it works (measured
    here: 8.5 GB above a 1.35 GB model), and onnxruntime and TensorRT fold and fuse the graph at load anyway;
    deciding on the unpruned model keeps a baseline and its pruned models exported alike."""
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return slim_available() and size < SLIM_LIMIT_BYTES


@dataclass(frozen=True)
class OnnxIO:
    """An ONNX file's input and output names, whether its batch is symbolic, and its opset: a pruned model
    exported with a user's file's (``OnnxIO.of``) drops in where that file was."""

    inputs: tuple[str, ...] = ("input",)
    outputs: tuple[str, ...] = ("output",)
    dynamic_batch: bool = False
    opset: int = ONNX_OPSET

    @classmethod
    def of(cls, path: str | Path) -> OnnxIO:
        import onnx

        from hwprune.frontends.onnx_opset import default_opset

        model = onnx.load(str(path), load_external_data=False)
        weights = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in weights]
        dims = inputs[0].type.tensor_type.shape.dim if inputs else []
        return cls(tuple(i.name for i in inputs), tuple(o.name for o in model.graph.output),
                   bool(dims) and not dims[0].HasField("dim_value"), default_opset(model))


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, dynamic_batch: bool = False,
                slim: bool = False, io: OnnxIO = OnnxIO()) -> Path:
    """Export ``model`` on ``example_input`` (TorchScript exporter) to ``path``; returns the path. ``io``: the
    input and output names (and a symbolic batch) to keep, a user's file's for a model converted from it."""
    dynamic = dynamic_batch or io.dynamic_batch
    axes = {name: {0: "batch"} for name in (*io.inputs, *io.outputs)} if dynamic else None
    return export_named(model, (example_input,), path, list(io.inputs), list(io.outputs), axes, slim)


def export_named(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | Path, input_names: list[str],
                 output_names: list[str], dynamic_axes: dict | None = None, slim: bool = False) -> Path:
    """Export ``model`` on the inputs ``args``, named, to ``path`` atomically; returns the path. For models
    of several inputs and outputs (a decode step's token and cache tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
            exported = Path(folder) / path.name  # over 2 GB, the exporter's per-tensor files land beside it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model.eval(), args, str(exported), opset_version=ONNX_OPSET, dynamo=False,
                                  input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
            external = any(file != exported for file in Path(folder).iterdir())  # the exporter's weight files
            if external:
                copy_model(exported, path)  # the exporter's weight files gathered into one
            else:
                if slim:  # onnxslim saves one protobuf: 2 GB at most
                    _slim(exported)
                os.replace(exported, path)  # the same file system: atomic, and never parsed
                data_file(path).unlink(missing_ok=True)  # an older export's weights
    except Exception as exc:
        raise HwpruneError(f"ONNX export failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from exc
    return path


def _slim(path: Path) -> None:
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(str(path)), str(path))
