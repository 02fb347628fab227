"""An ONNX graph of any opset a current exporter writes (17 up to ``onnx.defs.onnx_opset_version()``) in
opset 17, the newest onnx2torch converts.

onnx's version converter goes first; it lacks adapters for some steps (it failed on a YOLOv8 file Ultralytics
exported at opset 18 and on torch's dynamo exports), and then the graph is rewritten here: the ops whose form
changed after 17 are put back in their opset-17 form (Split's ``num_outputs`` as split sizes, the Reduce ops'
``axes`` input as an attribute, Resize, Pad, Cast and AveragePool without the attributes they gained, where those
hold their defaults), and every other op, whose later versions only widened the types it takes, keeps its node
as it is. An op with no opset-17 form (a new op, or a new attribute used) is refused by name.
"""

from __future__ import annotations

import math

import numpy
import onnx
import onnx.numpy_helper
import onnx.shape_inference
import onnx.version_converter
from onnx import ModelProto, NodeProto, helper

from hwprune.errors import ModelSpecError

TARGET = 17
REDUCE = {"ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
          "ReduceLogSumExp", "ReduceSumSquare"}  # axes moved from an attribute to an input in opset 18
DEFAULTS = {  # attributes an op gained after 17, with the value that means its opset-17 behaviour
    "Resize": {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"},
    "Cast": {"saturate": 1},
    "AveragePool": {"dilations": None},  # all ones
}


def default_opset(proto: ModelProto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def to_opset_17(proto: ModelProto, where: str) -> ModelProto:
    """``proto`` in opset 17 (itself where it is at or below); a ModelSpecError naming the node and op that
    has no opset-17 form, ``where`` the file it came from."""
    if default_opset(proto) <= TARGET:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, TARGET)
        onnx.checker.check_model(converted)
        return converted
    except Exception:  # no adapter for some op on the way: rewrite below
        pass
    return _rewritten(proto, where)


def _rewritten(proto: ModelProto, where: str) -> ModelProto:
    model = ModelProto()
    model.CopyFrom(proto)
    shapes = _shapes(model)
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        what = f"{where}: node {node.name or node.output[0]!r} ({node.op_type}, opset {default_opset(proto)})"
        _check_known(node, what)
        if node.op_type == "Split":
            _split_sizes(node, shapes, model, what)
        elif node.op_type in REDUCE and len(node.input) > 1 and node.input[1]:
            _axes_attribute(node, constants, what)
        elif node.op_type == "Pad" and (len(node.input) > 3 and node.input[3] or any(
                a.name == "mode" and a.s == b"wrap" for a in node.attribute)):
            raise ModelSpecError(f"{what}: pads only some axes or wraps around, which opset 17 cannot say")
        elif node.op_type == "GridSample":
            _grid_sample_modes(node)
        elif node.op_type in DEFAULTS:
            _drop_defaults(node, what)
        elif node.op_type in ("ScatterElements", "ScatterND") and any(
                a.name == "reduction" and a.s in (b"max", b"min") for a in node.attribute):
            raise ModelSpecError(f"{what}: a max/min scatter reduction, which opset 17 lacks")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = TARGET
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelSpecError(f"{where}: no opset-17 form of this opset-{default_opset(proto)} graph: "
                             f"{str(exc).strip().splitlines()[0]}") from None
    return model


def _check_known(node: NodeProto, what: str) -> None:
    try:
        onnx.defs.get_schema(node.op_type, TARGET, "")
    except onnx.defs.SchemaError:
        raise ModelSpecError(f"{what}: an op that opset 17 does not have") from None


def _shapes(model: ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's inferred shape (None for a symbolic dim)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            found[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                for d in info.type.tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        found[tensor.name] = list(tensor.dims)
    return found


def _split_sizes(node: NodeProto, shapes: dict, model: ModelProto, what: str) -> None:
    """Opset 18's ``num_outputs`` as opset 17's split sizes: equal pieces, the last smaller where the
    dimension does not divide (ceil(d / n) each, as opset 18 defines it)."""
    pieces = next((a for a in node.attribute if a.name == "num_outputs"), None)
    if pieces is None:
        return
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    shape = shapes.get(node.input[0])
    if shape is None or shape[axis] is None:
        raise ModelSpecError(f"{what}: splits into {pieces.i} along an axis whose size is not known before it runs")
    size, count = shape[axis], pieces.i
    each = math.ceil(size / count)
    sizes = [each] * (count - 1) + [size - each * (count - 1)]
    name = f"{node.output[0]}_split_sizes"
    model.graph.initializer.append(onnx.numpy_helper.from_array(numpy.asarray(sizes, dtype=numpy.int64), name))
    node.attribute.remove(pieces)
    del node.input[1:]
    node.input.append(name)


def _axes_attribute(node: NodeProto, constants: dict, what: str) -> None:
    if node.input[1] not in constants:
        raise ModelSpecError(f"{what}: reduces along axes computed at run time, which opset 17 cannot say")
    axes = [int(a) for a in onnx.numpy_helper.to_array(constants[node.input[1]]).reshape(-1)]
    empty = next((a for a in node.attribute if a.name == "noop_with_empty_axes"), None)
    if empty is not None:
        if empty.i and not axes:
            raise ModelSpecError(f"{what}: reduces nothing (noop_with_empty_axes), which opset 17 cannot say")
        node.attribute.remove(empty)
    del node.input[1:]
    node.attribute.append(helper.make_attribute("axes", axes))


def _grid_sample_modes(node: NodeProto) -> None:
    """Opset 20 renamed GridSample's modes (linear, cubic); opset 16 calls them bilinear, bicubic."""
    for attribute in node.attribute:
        if attribute.name == "mode":
            attribute.s = {b"linear": b"bilinear", b"cubic": b"bicubic"}.get(attribute.s, attribute.s)


def _drop_defaults(node: NodeProto, what: str) -> None:
    defaults = DEFAULTS[node.op_type]
    for attribute in list(node.attribute):
        if attribute.name not in defaults:
            continue
        value = helper.get_attribute_value(attribute)
        default = defaults[attribute.name]
        if (default is None and all(v == 1 for v in value)) or value == default:
            node.attribute.remove(attribute)
        else:
            raise ModelSpecError(f"{what}: {attribute.name}={value!r}, which opset 17 lacks")
    if node.op_type == "Resize" and any(a.name == "axes" or a.name == "coordinate_transformation_mode" and
                                        a.s == b"half_pixel_symmetric" for a in node.attribute):
        raise ModelSpecError(f"{what}: resizes only some axes or half-pixel-symmetric, which opset 17 cannot say")
