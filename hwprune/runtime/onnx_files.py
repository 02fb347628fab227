"""ONNX files whose weights live beside them: one ``NAME.onnx.data`` per ``NAME.onnx``.

A protobuf cannot exceed 2 GB, so a larger model's weights must be external data. torch's dynamo exporter
(``export.onnx_export`` uses it from 1 GiB of weights) writes them as one ``NAME.onnx.data``; the TorchScript
exporter writes them one file per tensor, named after the tensor, into the folder of the model: a
build folder would fill with hundreds of files, two exports in one folder would overwrite each
other's, and moving the model alone would break it. So every export is written in a folder of its own
and copied out (the dynamo exporter's pair: renamed) as the model and one data file named after it, and
the files of a build are copied, moved and removed as pairs (:func:`copy_model`, :func:`move_model`,
:func:`remove_model`). onnxruntime and onnx read such a pair by the model's path, as any ONNX file with
external data.

Weights are streamed tensor by tensor (never the whole model in memory), and the data file, then
the model, are published atomically: a reader never sees a model whose data is not there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hwprune.io import write_atomic

DATA_SUFFIX = ".data"
CHUNK = 1 << 24  # bytes copied at a time


def data_file(model: Path) -> Path:
    """Where ``model``'s weights are when they are not inside it."""
    return model.with_name(model.name + DATA_SUFFIX)


def has_external_data(model: Path) -> bool:
    """Whether ``model``, a file this module wrote (an export, a copy), keeps its weights in ``data_file(model)``:
    told by the folder, not by parsing the protobuf (which holds a file of weights under 2 GB in memory)."""
    return data_file(model).is_file()


def copy_model(source: Path, target: Path) -> Path:
    """Write ``source`` (an ONNX file, its external tensors wherever its locations say, relative to its
    folder) as ``target`` and, where it has external tensors, ``data_file(target)`` holding them all.
    ``source`` and its files are left as they are. Returns ``target``."""
    import onnx

    proto = onnx.load(str(source), load_external_data=False)
    tensors = [t for t in _tensors(proto.graph) if _external(t)]
    data = data_file(target)
    if not tensors:
        write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
        data.unlink(missing_ok=True)  # an older pair's weights
        return target

    def gather(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for tensor in tensors:
                info = {entry.key: entry.value for entry in tensor.external_data}
                offset = out.tell()
                length = _copy_range(source.parent / info["location"], int(info.get("offset", 0)),
                                     int(info["length"]) if "length" in info else None, out)
                del tensor.external_data[:]
                for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value

    write_atomic(data, gather)  # the weights first: the model never names a data file not there
    write_atomic(target, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    return target


def move_model(source: Path, target: Path) -> Path:
    """``source`` moved to ``target``: renamed where its weights are inside it, else re-pointed at
    ``data_file(target)`` and the old pair removed."""
    if not has_external_data(source):
        os.replace(source, target)
        data_file(target).unlink(missing_ok=True)  # an older pair's weights
        return target
    copy_model(source, target)
    remove_model(source)
    return target


def remove_model(model: Path) -> None:
    """``model`` and its data file, where there are."""
    model.unlink(missing_ok=True)
    data_file(model).unlink(missing_ok=True)


def _tensors(graph) -> Iterator:
    """Every tensor a graph holds: its initializers and its nodes' tensor attributes (a Constant's value),
    subgraphs' included; the exporter puts any of them in external data."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(sub)


def _external(tensor) -> bool:
    from onnx import TensorProto

    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def _copy_range(path: Path, offset: int, length: int | None, out) -> int:
    """Bytes ``offset`` .. ``offset + length`` of ``path`` (to its end where ``length`` is None) appended to
    ``out``; returns how many."""
    copied = 0
    with open(path, "rb") as source:
        source.seek(offset)
        while length is None or copied < length:
            chunk = source.read(CHUNK if length is None else min(CHUNK, length - copied))
            if not chunk:
                break
            out.write(chunk)
            copied += len(chunk)
    return copied
