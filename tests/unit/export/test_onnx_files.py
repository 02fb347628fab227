"""ONNX files with external weights (models over 2 GB) are gathered into one data file beside them, and
copied, moved and removed as pairs that onnxruntime still runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from hwprune.runtime.onnx_files import copy_model, data_file, has_external_data, move_model, remove_model


def _linear_model(folder, rng) -> tuple:
    """y = x @ W + b saved as the TorchScript exporter saves a large model: one file per tensor beside it, a
    Constant node's value (b) among them."""
    w, b = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b, "b")),
         helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "exported.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0,
                    convert_attribute=True)
    return path, w, b


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_copy_gathers_the_weights_into_one_file_and_move_repoints_them(tmp_path):
    rng = np.random.default_rng(0)
    export = tmp_path / "export"
    export.mkdir()
    source, w, b = _linear_model(export, rng)
    assert sorted(p.name for p in export.iterdir()) == ["W", "b", "exported.onnx"]
    x = rng.standard_normal((2, 8)).astype(np.float32)

    build = tmp_path / "build"
    copied = copy_model(source, build / "pruned-round0.onnx")
    assert sorted(p.name for p in build.iterdir()) == ["pruned-round0.onnx", "pruned-round0.onnx.data"]
    assert has_external_data(copied) and data_file(copied).stat().st_size == w.nbytes + b.nbytes
    np.testing.assert_allclose(_run(copied, x), x @ w + b, rtol=1e-5, atol=1e-5)

    moved = move_model(copied, build / "pruned.onnx")  # a renamed model must still find its weights
    assert sorted(p.name for p in build.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]
    np.testing.assert_allclose(_run(moved, x), x @ w + b, rtol=1e-5, atol=1e-5)
    remove_model(moved)
    assert list(build.iterdir()) == []


def test_a_model_with_its_weights_inside_is_copied_and_moved_as_one_file(tmp_path):
    rng = np.random.default_rng(1)
    source, w, b = _linear_model(tmp_path, rng)
    inline = onnx.load(str(source))  # weights read back into the protobuf
    path = tmp_path / "inline.onnx"
    onnx.save_model(inline, str(path))
    assert not has_external_data(path)
    stale = data_file(tmp_path / "out.onnx")
    stale.write_bytes(b"an older model's weights")
    moved = move_model(copy_model(path, tmp_path / "copy.onnx"), tmp_path / "out.onnx")
    assert not stale.exists() and not data_file(tmp_path / "copy.onnx").exists()
    x = rng.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, x), x @ w + b, rtol=1e-5, atol=1e-5)
