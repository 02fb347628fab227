"""``onnx:FILE.onnx``: an ONNX file as a module (through onnx2torch), measured against the file itself."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import Capabilities, _one_line


def _opset_lookup() -> None:
    """onnx2torch's modules that export through a symbolic of their own (Shape, Squeeze, the Reduce ops, ScatterND,
    NonMaxSuppression) read the export's opset from ``torch.onnx.symbolic_helper.GLOBALS``. In torch 2.14 that name
    is the exporter's module until something imports torch's public ``symbolic_helper``, a shim without
    ``GLOBALS`` (an ``hf:`` compile does); onnx2torch, imported after, then falls back to an attribute torch no
    longer has, and every export of such a model fails. Its lookup is pointed back at the exporter's module."""
    from onnx2torch.utils import common

    if hasattr(common.symbolic_helper, "GLOBALS"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter import symbolic_helper
    except ImportError:  # a torch whose public module is the exporter's own
        return
    common.symbolic_helper = symbolic_helper


def _load_onnx(path: Path, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, torch.Tensor, Capabilities]:
    """The ONNX file as an nn.Module (through onnx2torch), an example for its one input (the graph's static
    dims, a symbolic batch dim becoming 1, and dtype, or ``input_shape``) and, for a detector whose box decode
    the file tells (``onnx_boxes``), that decode."""
    if not path.is_file():
        raise ModelSpecError(f"{path}: file not found")
    try:
        import onnx2torch
    except ImportError:
        raise ModelSpecError(f"onnx:{path}: onnx2torch is not installed (pip install 'hwprune[onnx]')") from None
    _opset_lookup()
    import numpy
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelSpecError(f"{path}: not an ONNX model: {_one_line(exc)}") from exc
    if not proto.graph.node:
        raise ModelSpecError(f"{path}: not an ONNX model (no graph nodes)")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelSpecError(f"{path}: the graph has {len(inputs)} inputs; hwprune handles models with one input")
    tensor_type = inputs[0].type.tensor_type
    try:
        dtype = torch.from_numpy(numpy.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))).dtype
    except (KeyError, TypeError, ValueError):
        raise ModelSpecError(f"{path}: input {inputs[0].name!r} has an element type hwprune cannot feed "
                             f"({onnx.TensorProto.DataType.Name(tensor_type.elem_type)})") from None
    if input_shape is None:
        input_shape = _onnx_static_shape(path, inputs[0].name, tensor_type)
    from hwprune.frontends.onnx_boxes import box_decode, roles_of

    decode, unmeasured = box_decode(proto, input_shape)
    proto = _for_onnx2torch(proto, f"onnx:{path}")
    try:
        module = onnx2torch.convert(proto)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... per unsupported op or attribute
        raise ModelSpecError(f"{path}: onnx2torch cannot convert it: {_one_line(exc)}") from exc
    _equal_splits_as_chunks(module)
    from onnx2torch.onnx_graph import OnnxGraph

    # what refusals name (graph.origins): each module's ONNX node, as the user's file spells it
    module.onnx_nodes = {name: (node.proto.name, node.proto.op_type)
                         for name, node in OnnxGraph(proto.graph).nodes.items()}
    capabilities = Capabilities(detections=decode, detection_roles=roles_of(decode), boxes_unmeasured=unmeasured)
    if dtype.is_floating_point:
        return module, torch.randn(input_shape, dtype=dtype), capabilities
    return module, torch.zeros(input_shape, dtype=dtype), capabilities  # integer inputs are often indices: 0 is valid


def _for_onnx2torch(proto, where: str):
    """The same computation in the forms onnx2torch converts, which today's exporters do not always write:
    opset <= 17 (``frontends.onnx_opset``: torch's dynamo exporter and Ultralytics write 18+), weights as
    initializers (the TorchScript exporter aliases equal constants through Identity nodes, and some write
    Constant nodes), and Reshape's ``allowzero=1`` dropped where the shape has no 0 (then it means nothing)."""
    import onnx
    import onnx.numpy_helper

    from hwprune.frontends.onnx_opset import to_opset_17

    proto = to_opset_17(proto, where)
    graph = proto.graph
    constants = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in graph.node:  # an equal split needs no sizes: without them, the pieces follow the width (below)
        if node.op_type == "Split" and len(node.input) == 2 and node.input[1] in constants:
            sizes = onnx.numpy_helper.to_array(constants[node.input[1]])
            if len(set(sizes.tolist())) == 1 and len(sizes) == len(node.output):
                del node.input[1]
    for node in list(graph.node):  # in topological order, so chains of aliases resolve
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            allowzero = next((a for a in node.attribute if a.name == "allowzero" and a.i == 1), None)
            if allowzero is not None and 0 not in onnx.numpy_helper.to_array(constants[node.input[1]]):
                node.attribute.remove(allowzero)
            continue
        if node.output[0] in outputs:
            continue
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            value = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in constants:
            value = constants[node.input[0]]
        else:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        constants[tensor.name] = tensor
        graph.node.remove(node)
    return proto


def _equal_splits_as_chunks(module: nn.Module) -> None:
    """Each equal split (an ONNX Split without sizes, ``_for_onnx2torch``) as ``chunk``: onnx2torch computes
    its piece size from the width and calls ``torch.split`` with it, which reads as sizes fixed in code
    (``graph.pieces``), while ``chunk`` divides whatever width it is given: pruned by equal blocks, the
    converted model's C2f splits follow their producer's width as the native model's ``chunk`` does."""
    from onnx2torch.node_converters.split import OnnxSplit13
    from torch import fx

    if not isinstance(module, fx.GraphModule):
        return
    for node in list(module.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        split = module.get_submodule(node.target)
        if not isinstance(split, OnnxSplit13):
            continue
        with module.graph.inserting_after(node):
            chunk = module.graph.call_method("chunk", (node.args[0], split.num_splits, split.axis))
        node.replace_all_uses_with(chunk)
        module.graph.erase_node(node)
        module.delete_submodule(node.target)
    module.graph.lint()
    module.recompile()


def _onnx_static_shape(path: Path, name: str, tensor_type) -> tuple[int, ...]:
    if not tensor_type.HasField("shape"):
        raise ModelSpecError(f"{path}: input {name!r} has no shape in the graph; give --input-shape")
    shape = []
    for position, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif position == 0:
            shape.append(1)  # a symbolic batch: one sample
        else:
            raise ModelSpecError(f"{path}: input {name!r} has a symbolic dimension {dim.dim_param or '?'!r} at "
                                 f"position {position}; give --input-shape")
    return tuple(shape)
