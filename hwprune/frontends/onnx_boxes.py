"""Which decode turns a converted detector's outputs into boxes, told by the ONNX file itself: an Ultralytics
export by the metadata its exporter writes, a YOLOX head (ddddocr's text detector) by its one output's shape.
A file is never guessed at: any other output that could be a detector's (three dimensions) gets the reason box
agreement is not measured, and a model whose outputs cannot be (a classifier's) gets neither."""

from __future__ import annotations

import ast

import torch

from hwprune.frontends.base import Decode, Role
from hwprune.frontends.decodes import (
    ULTRALYTICS_ROLES,
    YOLOX_ROLES,
    YOLOX_STRIDES,
    ultralytics_boxes,
    yolox_anchors,
    yolox_boxes,
)


def box_decode(proto, input_shape: tuple[int, ...]) -> tuple[Decode | None, str | None]:
    """The decode for ``proto``'s outputs on inputs of ``input_shape``, or why there is none (None, None: the
    outputs are not a detector's); ``roles_of`` names its features."""
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    shapes = [_dims(output) for output in proto.graph.output]
    if "task" in metadata and "stride" in metadata:  # Ultralytics' exporter writes both
        return _ultralytics(metadata, shapes[0])
    image = len(input_shape) == 4
    anchors = yolox_anchors(*input_shape[2:]) if image else None
    if len(shapes) == 1 and len(shapes[0]) == 3 and anchors and shapes[0][1] == anchors and _at_least(shapes[0][2], 6):
        return _yolox, None
    if not any(len(shape) == 3 for shape in shapes):
        return None, None
    layout = ", ".join(f"({', '.join(map(str, shape))})" for shape in shapes)
    yolox = (f"(batch, {anchors} anchors: one per cell at strides {'/'.join(map(str, YOLOX_STRIDES))} of "
             f"{input_shape[2]}x{input_shape[3]}, 5 + classes)" if image else "(an image model's)")
    return None, (f"output layout {layout} not recognised as an Ultralytics detect export's (its metadata, task "
                  f"detect) or a YOLOX head's {yolox}")


def _ultralytics(metadata: dict[str, str], shape: tuple[int | str, ...]) -> tuple[Decode | None, str | None]:
    """An Ultralytics export: a detect export's output0 is (batch, 4 + classes, anchors), boxes decoded in the
    file; other tasks and end-to-end exports (NMS in the file) are refused by name."""
    task = metadata["task"]
    if task != "detect":
        return None, f"an Ultralytics {task} export: box agreement is measured on detect exports"
    if metadata.get("end2end") == "True":
        return None, "an Ultralytics end-to-end export (NMS inside the file): box agreement is not measured"
    classes = len(ast.literal_eval(metadata.get("names", "{}")))
    if len(shape) != 3 or (isinstance(shape[1], int) and shape[1] != 4 + classes):
        return None, (f"an Ultralytics detect export whose output0 is ({', '.join(map(str, shape))}), not (batch, "
                      f"4 + {classes} classes, anchors)")
    return _ultralytics_export, None


def roles_of(decode: Decode | None) -> tuple[Role, ...] | None:
    """Which features of the file's output ``decode`` reads as boxes, objectness and class scores."""
    return {_ultralytics_export: ULTRALYTICS_ROLES, _yolox: YOLOX_ROLES}.get(decode)


def _ultralytics_export(outputs: list[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
    return ultralytics_boxes(outputs[0])


def _yolox(outputs: list[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
    return yolox_boxes(outputs[0], shape)


def _dims(output) -> tuple[int | str, ...]:
    """An output's shape as the graph gives it: sizes, or the names of symbolic dimensions ('?' unnamed)."""
    dims = output.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims)


def _at_least(dim: int | str, size: int) -> bool:
    return isinstance(dim, int) and dim >= size
