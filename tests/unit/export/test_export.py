"""ONNX export options: dynamic batch, onnxslim cleanup and the streamed (dynamo) export, each checked against
PyTorch."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hwprune.export.onnx_export import STREAMED_OPSET, ExportStyle, export_onnx, slim_available
from hwprune.export.verify import verify_onnx
from hwprune.runtime.onnx_files import data_file


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def test_static_export_has_fixed_shapes_and_matches(tmp_path):
    model, x = small_model(), torch.randn(1, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 16, 16]
    assert verify_onnx(model, path, [x]).ok


def test_dynamic_batch_export_runs_other_batch_sizes(tmp_path):
    model, x = small_model(), torch.randn(1, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx", dynamic_batch=True)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    result = verify_onnx(model, path, [torch.randn(4, 3, 16, 16), x])
    assert result.ok and result.max_abs_err < 1e-5


@pytest.mark.skipif(not slim_available(), reason="onnxslim is not installed (pip install 'hwprune[slim]')")
def test_slimmed_export_still_matches(tmp_path):
    model, x = small_model(), torch.randn(1, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx", style=ExportStyle(slim=True))
    assert verify_onnx(model, path, [x]).ok


def test_verification_reports_the_worst_element_of_a_mismatch(tmp_path):
    model, x = small_model(), torch.randn(1, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    with torch.no_grad():
        model[-1].bias += 1.0  # the module now differs from what was exported
    result = verify_onnx(model, path, [x])
    assert not result.ok and np.isclose(result.max_abs_err, 1.0, atol=1e-5) and "input 0, output 0" in result.worst


def test_a_model_over_a_gibibyte_of_weights_is_streamed_not_slimmed():
    big = nn.Linear(20_000, 15_000, device="meta")  # 1.2 GB of fp32 weights, none allocated
    assert ExportStyle.of(big) == ExportStyle(slim=False, streamed=True)
    assert ExportStyle.of(small_model()) == ExportStyle(slim=slim_available(), streamed=False)
    assert (ExportStyle.of(big).exporter, ExportStyle.of(big).opset) == ("dynamo", STREAMED_OPSET)


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_streamed_export_is_a_model_and_its_data_file_and_matches(tmp_path, dynamic):
    model, x = small_model(), torch.randn(1, 3, 16, 16)
    target = tmp_path / "m.onnx"
    data_file(target).write_bytes(b"an older export's weights")
    path = export_onnx(model, x, target, dynamic_batch=dynamic, style=ExportStyle(streamed=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # nothing half-written left
    proto = onnx.load(str(path), load_external_data=False)
    assert proto.opset_import[0].version == STREAMED_OPSET
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {"m.onnx.data"}
    assert (proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch") == dynamic
    result = verify_onnx(model, path, [torch.randn(3, 3, 16, 16), x] if dynamic else [x])
    assert result.ok and result.max_abs_err < 1e-5
