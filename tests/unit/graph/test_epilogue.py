"""Per-channel constant Mul/Add ops after a layer (its epilogue, ``graph.epilogue``): found where they alone
read the layer's output, in a module built in code and in an ONNX file through onnx2torch, and pruned with
the layer's channels: zeroed-then-removed channels leave the output unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwprune.frontends import load_model
from hwprune.graph.analyze import analyze
from hwprune.graph.epilogue import epilogues, per_channel
from tests.pruning_helpers import pruned_exactly


class Epilogues(nn.Module):
    """A BatchNorm written as a Mul and an Add of buffers (what a converter leaves), a layer scale on a conv
    and on a linear layer, and two ops that are no epilogue: a shift on a conv's output that a residual add
    also reads, and a gate computed from the input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.register_buffer("scale", torch.rand(1, 32, 1, 1) + 0.5)
        self.register_buffer("shift", torch.randn(32, 1, 1))
        self.mid = nn.Conv2d(32, 32, 1)
        self.gamma = nn.Parameter(torch.rand(32, 1, 1) + 0.5)
        self.side = nn.Conv2d(32, 32, 1)
        self.register_buffer("bias2", torch.randn(1, 32, 1, 1))
        self.gated = nn.Conv2d(32, 32, 1)
        self.fc1 = nn.Linear(32, 24)
        self.layer_scale = nn.Parameter(torch.rand(24) + 0.5)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x) * self.scale + self.shift)
        h = torch.relu(self.mid(h) * self.gamma)
        s = self.side(h)
        h = torch.relu(s + self.bias2) + s
        g = self.gated(h)
        h = g * torch.sigmoid(g.mean((2, 3), keepdim=True))
        return self.fc2(torch.relu(self.fc1(h.mean((2, 3))) * self.layer_scale))


def epilogue_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Epilogues().eval(), torch.randn(1, 3, 8, 8)


def onnx_epilogue_file(path) -> str:
    """Conv, Mul, Add (a BatchNorm exported as a scale and a shift, as paddle2onnx and tf2onnx write it), Relu,
    then a 1x1 Conv: the ``onnx:`` spec of it."""
    rng = np.random.default_rng(0)
    constants = {"w": (16, 3, 3, 3), "b": (16,), "scale": (1, 16, 1, 1), "shift": (1, 16, 1, 1), "w2": (8, 16, 1, 1)}
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                    for name, shape in constants.items()]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Mul", ["c", "scale"], ["m"]), helper.make_node("Add", ["m", "shift"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "converted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return f"onnx:{path}"


def test_a_layers_epilogue_is_the_per_channel_constant_ops_that_alone_read_it():
    model, x = epilogue_model()
    assert epilogues(analyze(model, x, strict=False).capture) == {"stem": "mul_add", "mid": "mul", "fc1": "mul"}


def test_the_onnx_frontend_keeps_a_converted_batchnorm_as_an_epilogue(tmp_path):
    loaded = load_model(onnx_epilogue_file(tmp_path / "converted.onnx"))
    assert epilogues(analyze(loaded.module, loaded.example_input, strict=False).capture) == {"Conv": "mul_add"}


@pytest.mark.parametrize("constant, output, axis, expected", [
    ((32,), (1, 5, 32), 2, True), ((1, 1, 32), (1, 5, 32), 2, True), ((32, 1, 1), (1, 32, 8, 8), 1, True),
    ((1, 32, 1, 1), (1, 32, 8, 8), 1, True), ((32,), (1, 32, 8, 32), 1, False), ((1, 1, 8, 8), (1, 32, 8, 8), 1, False),
    ((1, 32, 8, 8), (1, 32, 8, 8), 1, False), ((1,), (1, 32, 8, 8), 1, False),
    ((2, 1, 32, 1, 1), (1, 32, 8, 8), 1, False)])
def test_a_constant_is_per_channel_only_along_the_channel_axis(constant, output, axis, expected):
    assert per_channel(constant, output, axis) is expected


def _exact_removal(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` pruned at random keep sets, checked against the same channels silenced; returns it."""
    analysis = analyze(model, x, strict=False)
    assert analysis.prunable()
    return pruned_exactly(analysis, x)


def test_epilogue_constants_are_pruned_with_their_layers_channels():
    model, x = epilogue_model()
    pruned = _exact_removal(model, x)
    assert pruned.scale.shape[1] == pruned.shift.shape[0] == pruned.stem.out_channels < 32
    assert pruned.gamma.shape[0] == pruned.mid.out_channels < 32
    assert pruned.layer_scale.shape[0] == pruned.fc1.out_features < 24


def test_a_converted_onnx_files_epilogue_is_pruned_exactly(tmp_path):
    loaded = load_model(onnx_epilogue_file(tmp_path / "converted.onnx"))
    pruned = _exact_removal(loaded.module, loaded.example_input)
    assert pruned.Conv.out_channels < 16
