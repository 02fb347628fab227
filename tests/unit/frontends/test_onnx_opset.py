"""ONNX files of opsets past 17 (what Ultralytics and torch's dynamo exporter write) in the opset-17 form
onnx2torch converts: the ops whose form changed rewritten, computing the same (checked in onnxruntime), and an
op with no opset-17 form refused by name."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwprune.errors import ModelSpecError
from hwprune.frontends.onnx_opset import _rewritten, default_opset, to_opset_17

ort = pytest.importorskip("onnxruntime")


def opset18_model() -> onnx.ModelProto:
    """x (1, 6, 4, 4) -> Split(num_outputs=3, axis 1) -> ReduceMean(axes input [2, 3]) of the first piece,
    Resize (antialias 0, nearest x2) of the second, the third as it is."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", "c", "h", "w"]) for n in ("mean", "up", "rest")]
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b", "c"], name="split", axis=1, num_outputs=3),
        helper.make_node("ReduceMean", ["a", "axes"], ["mean"], name="mean", keepdims=1),
        helper.make_node("Resize", ["b", "", "scales"], ["up"], name="resize", mode="nearest", antialias=0),
        helper.make_node("Identity", ["c"], ["rest"], name="rest"),
    ]
    init = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")]
    graph = helper.make_graph(nodes, "g", [x], outs, init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_the_rewrite_puts_each_changed_op_in_its_opset_17_form_computing_the_same():
    model = opset18_model()
    rewritten = _rewritten(model, "onnx:test.onnx")
    assert default_opset(rewritten) == 17
    nodes = {n.name: n for n in rewritten.graph.node}
    assert len(nodes["split"].input) == 2 and not any(a.name == "num_outputs" for a in nodes["split"].attribute)
    assert list(nodes["mean"].input) == ["a"] and helper.get_attribute_value(
        next(a for a in nodes["mean"].attribute if a.name == "axes")) == [2, 3]
    assert not any(a.name == "antialias" for a in nodes["resize"].attribute)
    x = np.random.default_rng(0).standard_normal((1, 6, 4, 4)).astype(np.float32)
    for before, after in zip(run(model, x), run(rewritten, x), strict=True):
        np.testing.assert_array_equal(before, after)
    assert default_opset(to_opset_17(model, "onnx:test.onnx")) == 17  # the converter, or this rewrite


def test_an_uneven_split_gives_the_last_piece_the_rest():
    model = opset18_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    model.graph.node[0].attribute[1].i = 3  # num_outputs 3 of 7: 3, 3, 1
    rewritten = _rewritten(model, "onnx:test.onnx")
    sizes = next(t for t in rewritten.graph.initializer if t.name.endswith("_split_sizes"))
    assert numpy_helper.to_array(sizes).tolist() == [3, 3, 1]


def test_an_op_without_an_opset_17_form_is_refused_by_name():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    init = [numpy_helper.from_array(np.ones(2, dtype=np.float32), n) for n in ("scale", "bias")]
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], name="gn", num_groups=2)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], init),
                              opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ModelSpecError, match=r"node 'gn' \(GroupNormalization, opset 18\)"):
        _rewritten(model, "onnx:gn.onnx")
