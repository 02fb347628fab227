"""2:4 on PyTorch's semi-structured kernels (``runtime.torch_sparse``), on this CPU: the rules that say why a
layer cannot take them, and the conversion of modules and single-op graphs with the CUDA-only parts faked
(the GPU's capability, PyTorch's conversion); on the CPU itself no weight is ever converted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensor

from hwprune.cost.onnx_ops import input_shape, single_op_model
from hwprune.cost.signature import OpSignature
from hwprune.runtime import runtime_for, torch_sparse
from hwprune.runtime.pytorch import TorchRuntime
from hwprune.runtime.torch_onnx import OnnxProgram
from hwprune.runtime.torch_sparse import refusal, sparsify_module, sparsify_program
from hwprune.sparsity.masks import nm_mask
from hwprune.targets import load_target

FP16 = torch.float16


@pytest.fixture
def cusparselt(monkeypatch):
    """The default backend, whatever this build was compiled with."""
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", False)


@pytest.fixture
def fake_gpu(monkeypatch, cusparselt):
    """A Hopper GPU as far as the runtime asks, and a conversion that records what it was handed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    converted = []

    def convert(weight):
        converted.append(tuple(weight.shape))
        return weight.detach().clone()  # the dense values stand in for the sparse tensor

    monkeypatch.setattr(torch_sparse, "to_semi_structured", convert)
    return converted


def _refuse(op, shape):
    return refusal("2:4", op, shape, FP16, "cuda", (9, 0))


def _masked(layer: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        layer.weight.mul_(nm_mask(layer.weight, 2, 4))
    return layer


@pytest.mark.parametrize("pattern, op, shape, dtype, device, gpu, why", [
    ("1:4", "linear", (64, 64), FP16, "cuda", (9, 0), "run 2:4 only"),
    ("2:4", "linear", (64, 64), FP16, "cpu", None, "on CUDA GPUs only, not on the cpu"),
    ("2:4", "linear", (64, 64), FP16, "cuda", None, "compute capability 8.0 or later (here: none visible)"),
    ("2:4", "linear", (64, 64), FP16, "cuda", (7, 5), "compute capability 8.0 or later (here: 7.5)"),
    ("2:4", "linear", (64, 64), torch.float32, "cuda", (8, 0), "not torch.float32"),
    ("2:4", "conv2d", (64, 64), FP16, "cuda", (8, 0), "take linear layers (a 2-D weight), not conv2d"),
    ("2:4", "linear", (1000, 2048), FP16, "cuda", (8, 0), "a 1000x2048 (out x in) weight"),
    ("2:4", "linear", (64, 8), FP16, "cuda", (8, 0), "take multiples of 16x16"),
])
def test_each_rule_says_why_a_layer_cannot_take_the_sparse_kernel(cusparselt, pattern, op, shape, dtype, device,
                                                                  gpu, why):
    found = refusal(pattern, op, shape, dtype, device, gpu)
    assert found is not None and why in found


def test_a_layer_within_the_rules_is_taken_and_the_rules_are_the_backends_own(cusparselt, monkeypatch):
    assert refusal("2:4", "linear", (1024, 2048), FP16, "cuda", (8, 0)) is None
    assert refusal("2:4", None, None, FP16, "cuda", (12, 0)) is None  # asked of every layer: the device allows it
    assert refusal("2:4", "linear", (48, 48), FP16, "cuda", (9, 0)) is None  # cuSPARSELt: multiples of 16
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", True)  # CUTLASS: 32 rows, 64 columns
    assert "multiples of 32x64" in refusal("2:4", "linear", (48, 48), FP16, "cuda", (9, 0))
    assert refusal("2:4", "linear", (64, 128), FP16, "cuda", (9, 0)) is None
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", False)
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: False)
    assert "no cuSPARSELt" in refusal("2:4", "linear", (64, 128), FP16, "cuda", (9, 0))


def test_a_module_puts_its_2_4_linear_weights_on_the_sparse_kernel_and_says_why_not_for_the_others(fake_gpu):
    torch.manual_seed(0)
    model = nn.Sequential(_masked(nn.Linear(64, 32)), nn.ReLU(), nn.Linear(32, 64), _masked(nn.Linear(64, 24)),
                          nn.Unflatten(-1, (4, 2, 3)), nn.Conv2d(4, 8, 1)).half()
    with torch.no_grad():
        model[5].weight.mul_(nm_mask(model[5].weight.float(), 2, 4).half())  # a 2:4 conv: never converted
    found = sparsify_module(model, _refuse)
    assert found.sparse == ["0"] and fake_gpu == [(32, 64)]
    assert list(found.dense) == ["3"] and "a 24x64 (out x in) weight" in found.dense["3"]
    assert not model[0].weight.requires_grad  # the converted weight is a parameter of the layer, frozen
    assert found.to_json() == {"sparse_kernel": ["0"], "dense_kernel": found.dense}


def test_a_2_4_single_op_graph_multiplies_by_the_sparse_weight_in_the_right_layout(fake_gpu):
    sig = OpSignature("linear", 1, 64, 32, 16, 1, sparsity="2:4")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(input_shape(sig), dtype=np.float32)).half()
    want = OnnxProgram(single_op_model(sig)).to("cpu", FP16)(x)
    program = OnnxProgram(single_op_model(sig)).to("cpu", FP16)
    found = sparsify_program(program, _refuse)
    assert found.sparse == ["w"] and fake_gpu == [(32, 64)]  # converted as (out, in), multiplied transposed
    torch.testing.assert_close(program(x), want)
    dense = OnnxProgram(single_op_model(OpSignature("linear", 1, 64, 32, 16, 1))).to("cpu", FP16)
    assert sparsify_program(dense, _refuse).to_json() == {"sparse_kernel": [], "dense_kernel": {}}


def test_the_cuda_runtime_asks_the_rules_of_its_gpu_and_precision_and_its_dense_twin_converts_nothing(fake_gpu,
                                                                                                    monkeypatch):
    runtime = runtime_for(load_target("cuda"))
    assert runtime.sparse_refusal("2:4") is None
    assert runtime.sparse_refusal("2:4", "linear", (64, 64)) is None
    assert "not conv2d" in runtime.sparse_refusal("2:4", "conv2d", (64, 64))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (7, 5))
    assert "here: 7.5" in runtime.sparse_refusal("2:4", "linear", (64, 64))
    twin = TorchRuntime(load_target("cuda"))
    twin.semi_structured = False
    assert "switched off" in twin._refuse("linear", (64, 64))


def test_on_the_cpu_a_2_4_layer_is_loaded_dense_and_recorded_so_never_named_sparse():
    torch.manual_seed(0)
    model = nn.Sequential(_masked(nn.Linear(64, 32)), nn.ReLU(), nn.Linear(32, 8))
    runner = runtime_for(load_target("cpu-torch")).load_model(model, (torch.randn(1, 64),))
    try:
        assert runner.semi_structured.sparse == []
        assert list(runner.semi_structured.dense) == ["0"]
        assert "CUDA GPUs only" in runner.semi_structured.dense["0"]
        assert not any(isinstance(p, SparseSemiStructuredTensor) for p in runner.forward.parameters())
    finally:
        runner.close()
