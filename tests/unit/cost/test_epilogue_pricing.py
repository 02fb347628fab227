"""A layer's per-channel constant Mul/Add epilogue is priced with the layer: its signature names it (and a
layer without one keeps exactly its old key), the profiler's graph runs it after the layer, the analytic model
adds its traffic (none for a conv's, which is folded into it), a merged span keeps its last conv's, and a shipped
table prices it from the bare layer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hwprune.cost.analytic import epilogue_ms, predict_ms
from hwprune.cost.layers import Layer, layer_signatures, model_layers
from hwprune.cost.lut import Entry, LatencyTable
from hwprune.cost.onnx_ops import input_shape, single_op_model
from hwprune.cost.shipped import op_scales
from hwprune.cost.signature import OpSignature
from hwprune.cost.structural import depth_options
from hwprune.frontends import load_model
from hwprune.graph.analyze import analyze
from hwprune.graph.spans import depth_candidates
from hwprune.targets import load_target
from tests.unit.graph.test_epilogue import epilogue_model, onnx_epilogue_file

CONV = OpSignature("conv2d", 1, 16, 24, 10, 10, 3, 1, 1)
LINEAR = OpSignature("linear", 2, 16, 24, 7, 1)
TRANSPOSED = OpSignature("conv_transpose2d", 1, 16, 24, 5, 5, 2, 2)


def test_layers_with_an_epilogue_name_it_in_their_signature_and_key():
    model, x = epilogue_model()
    layers = {layer.name: layer.signature for layer in model_layers(analyze(model, x, strict=False))}
    assert {name: sig.epilogue for name, sig in layers.items() if sig.epilogue} == {
        "stem": "mul_add", "mid": "mul", "fc1": "mul"}
    assert layers["stem"].key().endswith("|epilogue=mul_add")
    assert all(OpSignature.from_key(sig.key()) == sig for sig in layers.values())


def test_an_onnx_files_converted_batchnorm_is_in_its_convs_signature(tmp_path):
    loaded = load_model(onnx_epilogue_file(tmp_path / "converted.onnx"))
    layers = model_layers(analyze(loaded.module, loaded.example_input, strict=False))
    assert {layer.name: layer.signature.epilogue for layer in layers} == {"Conv": "mul_add", "Conv_1": ""}


def test_a_model_without_epilogues_keeps_its_old_signatures_and_keys():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(576, 4)).eval()
    x = torch.randn(1, 3, 8, 8)
    old = layer_signatures(model, x)
    layers = model_layers(analyze(model, x, strict=False))
    assert {layer.name: layer.signature for layer in layers} == old
    assert all("epilogue" not in layer.signature.key() for layer in layers)


@pytest.mark.parametrize("sig", [CONV, LINEAR, TRANSPOSED], ids=lambda s: s.op)
def test_the_profilers_graph_runs_the_epilogue_after_the_layer(sig):
    bare, scaled = sig, replace(sig, epilogue="mul_add")
    graph = onnx.load_from_string(single_op_model(scaled))
    assert [node.op_type for node in graph.graph.node][-2:] == ["Mul", "Add"]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    assert constants["c0"].shape == constants["c1"].shape == ((24,) if sig.op == "linear" else (1, 24, 1, 1))
    x = np.random.default_rng(1).standard_normal(input_shape(sig)).astype(np.float32)
    run = {s: ort.InferenceSession(single_op_model(s)).run(None, {"x": x})[0] for s in (bare, scaled)}
    out_h, out_w = sig.out_hw
    assert run[scaled].shape == ((2, 7, 24) if sig.op == "linear" else (1, 24, out_h, out_w))
    np.testing.assert_allclose(run[scaled], run[bare] * constants["c0"] + constants["c1"], rtol=1e-5, atol=1e-5)


def test_the_analytic_model_adds_the_epilogues_traffic_where_it_is_not_folded_into_a_conv():
    target = load_target("jetson-orin-nano")
    for sig in (CONV, LINEAR, TRANSPOSED):
        scaled = replace(sig, epilogue="mul_add")
        elements = sig.batch * sig.c_out * sig.out_hw[0] * sig.out_hw[1]
        assert scaled.epilogue_bytes() == 2 * (2 * elements + sig.c_out) * 4 and sig.epilogue_bytes() == 0
        assert predict_ms(scaled, target) == pytest.approx(predict_ms(sig, target) + epilogue_ms(scaled, target))
        assert (epilogue_ms(scaled, target) == 0) is (sig.op == "conv2d") and scaled.flops() == sig.flops()


class ScaledSpan(nn.Module):
    """A 3x3 conv, ReLU, a 1x1 conv (a span that can merge), then a layer scale on the last conv's output."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1)
        self.gamma = nn.Parameter(torch.rand(16, 1, 1))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.relu(self.c1(x))) * self.gamma))


def test_a_merged_span_keeps_its_last_convs_epilogue():
    model, x = ScaledSpan().eval(), torch.randn(1, 3, 8, 8)
    analysis = analyze(model, x, strict=False)
    layers = model_layers(analysis)
    merges = [o for o in depth_options(analysis, depth_candidates(model, x), layers) if o.kind == "merge"]
    assert [o.adds[0].signature.epilogue for o in merges] == ["mul"]


def test_a_shipped_table_prices_an_epilogue_from_its_bare_layers_entry():
    target = load_target("rtx-2080ti-trt84-fp32")
    table = LatencyTable({"per_call_ms": 0.1})
    table.entries[CONV.key()] = Entry(1.1, 1.1, 10)
    scales = op_scales(table, [Layer("conv", replace(CONV, epilogue="mul"), None)], target)
    assert scales == {"conv": pytest.approx(1.0 / predict_ms(CONV, target))}
