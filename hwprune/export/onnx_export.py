"""ONNX export for onnxruntime and TensorRT 10.3 (opset 17; 18 from the dynamo exporter), static shapes unless asked,
written atomically.

With ``dynamic_batch`` the first axis of input and output is symbolic (TensorRT then needs an
optimisation profile, which the engine config adds). How a compile's models are exported is decided
once, on the unpruned model (:class:`ExportStyle`): under 1 GiB of weights, the TorchScript exporter
and, with onnxslim installed (``hwprune[slim]``), a cleanup (constant folding, dead nodes); from 1 GiB,
torch's dynamo exporter writing the weights as external data tensor by tensor (``runtime.onnx_files``).
The compile verifies the file that is finally written.
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


# the dynamo exporter's lowest opset (TensorRT 10.3 parses up to 20)
STREAMED_OPSET = 18
LARGE_BYTES = 1 << 30


def slim_available() -> bool:
    return importlib.util.find_spec("onnxslim") is not None


@dataclass(frozen=True)
class ExportStyle:
    """How the models of one compile are exported: decided on the unpruned model (:meth:`of`), so a baseline and
    every model pruned from it are exported alike (measured on the 0.5B decoder's pruned model: the two exporters'
    files run at a ratio of 1.001 in onnxruntime).

    ``slim``: onnxslim after the TorchScript exporter. ``streamed``: torch's dynamo exporter, which writes the
    weights as external data tensor by tensor; the TorchScript exporter builds the whole protobuf in memory under
    2 GB (held three times: measured 5.7 GB above a 1.35 GB model) and onnxslim holds several copies (8.5 GB)."""

    slim: bool = False
    streamed: bool = False

    @classmethod
    def of(cls, model: nn.Module) -> ExportStyle:
        """Streamed from 1 GiB of weights; else the TorchScript exporter, slimmed where onnxslim is installed."""
        large = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) >= LARGE_BYTES
        return cls(slim=slim_available() and not large, streamed=large)

    @property
    def exporter(self) -> str:
        return "dynamo" if self.streamed else "torchscript"

    @property
    def opset(self) -> int:
        return STREAMED_OPSET if self.streamed else ONNX_OPSET


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
                style: ExportStyle = ExportStyle(), io: OnnxIO = OnnxIO()) -> Path:
    """Export ``model`` on ``example_input`` to ``path`` in ``style``; returns the path. ``io``: the input and
    output names (and a symbolic batch) to keep, a user's file's for a model converted from it."""
    dynamic = dynamic_batch or io.dynamic_batch
    axes = {name: {0: "batch"} for name in (*io.inputs, *io.outputs)} if dynamic else None
    return export_named(model, (example_input,), path, list(io.inputs), list(io.outputs), axes, style)


def export_named(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | Path, input_names: list[str],
                 output_names: list[str], dynamic_axes: dict | None = None, style: ExportStyle = ExportStyle()) -> Path:
    """Export ``model`` on the inputs ``args``, named, to ``path`` atomically in ``style``; returns the path. For
    models of several inputs and outputs (a decode step's token and cache tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
            exported = Path(folder) / path.name  # external weights land beside it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model.eval(), args, str(exported), opset_version=style.opset,
                                  dynamo=style.streamed, verbose=False, external_data=True,
                                  input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
            if style.streamed:  # the model and NAME.onnx.data, which it names: moved as they are
                _publish(exported, path)
            elif any(file != exported for file in Path(folder).iterdir()):  # over 2 GB: one file per tensor
                copy_model(exported, path)  # gathered into one
            else:
                if style.slim:  # onnxslim saves one protobuf: 2 GB at most
                    _slim(exported)
                os.replace(exported, path)  # the same file system: atomic, and never parsed
                data_file(path).unlink(missing_ok=True)  # an older export's weights
    except Exception as exc:
        raise HwpruneError(f"ONNX export failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from exc
    return path


def _publish(exported: Path, path: Path) -> None:
    """``exported`` and its data file renamed to ``path`` and ``data_file(path)`` (the same names, so the
    locations inside hold), the weights first: a reader never sees a model whose data is not there."""
    if data_file(exported).is_file():
        os.replace(data_file(exported), data_file(path))
    else:
        data_file(path).unlink(missing_ok=True)  # an older export's weights
    os.replace(exported, path)


def _slim(path: Path) -> None:
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(str(path)), str(path))
