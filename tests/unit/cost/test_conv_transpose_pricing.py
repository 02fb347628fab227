"""Transposed convolutions are priced like convolutions: their own signature, single-op graph,
FLOPs and widths, so the search sees what pruning them saves."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwprune.cost.layers import layer_signatures, model_layers
from hwprune.cost.onnx_ops import input_shape, single_op_model
from hwprune.cost.signature import OpSignature
from hwprune.graph.analyze import analyze
from hwprune.runtime.ort import make_session


class Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(torch.relu(self.conv(x)))))


@pytest.mark.parametrize("stride, padding, output_padding", [(2, 1, 1), (1, 0, 0), (2, 0, 0)])
def test_signature_shape_flops_and_graph_match_torch(stride, padding, output_padding):
    layer = nn.ConvTranspose2d(6, 10, 3, stride=stride, padding=padding, output_padding=output_padding)
    x = torch.randn(2, 6, 7, 9)
    sig = OpSignature("conv_transpose2d", 2, 6, 10, 7, 9, 3, stride, padding, output_padding=output_padding)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = layer(x)
    assert sig.out_hw == tuple(y.shape[2:])
    assert sig.flops() == counter.get_total_flops()
    session = make_session(single_op_model(sig), 1, "ORT_ENABLE_ALL")
    (out,) = session.run(None, {"x": np.zeros(input_shape(sig), dtype=np.float32)})
    assert out.shape == tuple(y.shape)


def test_old_keys_are_unchanged_and_new_fields_round_trip():
    conv = OpSignature("conv2d", 1, 8, 8, 4, 4, 3, 1, 1)
    assert "output_padding" not in conv.key()  # tables written before the field keep their keys
    deconv = OpSignature("conv_transpose2d", 1, 8, 4, 4, 4, 3, 2, 1, output_padding=1)
    assert OpSignature.from_key(deconv.key()) == deconv and OpSignature.from_key(conv.key()) == conv


def test_a_models_transposed_conv_is_a_timed_layer_sized_by_its_groups():
    model, x = Upsampler().eval(), torch.randn(1, 3, 8, 8)
    assert layer_signatures(model, x)["up"].op == "conv_transpose2d"
    analysis = analyze(model, x, "upsampler")
    layers = {layer.name: layer for layer in model_layers(analysis)}
    up = layers["up"]
    assert up.out_group == "up" and up.c_out({"up": 5}) == 5 and up.c_in({"conv": 12}) == 12
    assert onnx.load_from_string(single_op_model(up.signature)).graph.node[0].op_type == "ConvTranspose"
