"""Which layers the search may give N:M on a torch target: linear layers PyTorch's semi-structured kernels
take, never convolutions, and none where the runtime refuses the pattern outright; and, as everywhere, a
layer whose measured 2:4 time is not faster is not offered (times given, none measured here)."""

from __future__ import annotations

import pytest
import torch
from torch.sparse import SparseSemiStructuredTensor

from hwprune.cost.layers import Layer
from hwprune.cost.signature import OpSignature
from hwprune.cost.sparse import MIN_SAVING, not_offered, parse_mode, sparse_key, sparse_options, worthwhile
from hwprune.targets import load_target

AUTO = parse_mode("auto")
LAYERS = [
    Layer("conv", OpSignature("conv2d", 32, 512, 512, 14, 14, kernel=3, padding=1, dtype="fp16"), "g1"),
    Layer("fc1", OpSignature("linear", 1, 1024, 4096, 512, 1, dtype="fp16"), "g2"),
    Layer("fc2", OpSignature("linear", 1, 4096, 1024, 512, 1, dtype="fp16"), "g3"),
    Layer("head", OpSignature("linear", 1, 1024, 1000, 512, 1, dtype="fp16"), None),  # 1000 rows: not a multiple
]


@pytest.fixture
def gpu(monkeypatch):
    """A visible Ampere GPU with cuSPARSELt, as far as the torch runtime asks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 0))
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", False)


def test_on_cuda_auto_offers_the_linear_layers_the_sparse_kernel_takes_and_never_a_convolution(gpu):
    cuda = load_target("cuda")
    assert not_offered(AUTO, cuda, measured=True) is None  # measured pairs decide, as on cpu with 2:4
    options = sparse_options(LAYERS, cuda, AUTO, measured=True)
    assert [o.name for o in options] == ["fc1", "fc2"]
    assert all(o.adds[0].signature.sparsity == "2:4" for o in options)
    assert [o.name for o in sparse_options(LAYERS, load_target("cpu"), parse_mode("2:4"), measured=True)] == [
        "conv", "fc1", "fc2", "head"]  # onnxruntime is handed the zeroed weights of every candidate


def test_a_gpu_without_sparse_tensor_cores_or_another_pattern_is_refused_outright(gpu, monkeypatch):
    cuda = load_target("cuda")
    assert "run 2:4 only" in not_offered(parse_mode("1:4"), cuda, measured=True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (7, 5))
    assert "compute capability 8.0 or later" in not_offered(AUTO, cuda, measured=True)
    assert sparse_options(LAYERS, cuda, AUTO, measured=True) == []


def test_cpu_torch_offers_none_and_says_the_kernels_are_cuda_only():
    cpu_torch = load_target("cpu-torch")
    reason = not_offered(parse_mode("2:4"), cpu_torch, measured=True)
    assert reason == "target cpu-torch: PyTorch runs semi-structured sparse kernels on CUDA GPUs only, not on the cpu"
    assert sparse_options(LAYERS, cpu_torch, parse_mode("2:4"), measured=True) == []


def test_a_layer_whose_measured_sparse_time_is_not_faster_is_not_offered(gpu):
    cuda = load_target("cuda")
    options = sparse_options(LAYERS, cuda, AUTO, measured=True)
    dense = {"fc1": 1.0, "fc2": 1.0}
    sparse = {sparse_key("fc1"): 0.8, sparse_key("fc2"): 1.0 - MIN_SAVING / 2}  # fc2 saves under MIN_SAVING
    kept, check = worthwhile(options, dense, sparse, AUTO, cuda, "measured", measured=True)
    assert [o.name for o in kept] == ["fc1"] and check.offered == ["fc1"] and check.reason is None
    slower = {sparse_key("fc1"): 1.02, sparse_key("fc2"): 1.1}
    kept, check = worthwhile(options, dense, slower, AUTO, cuda, "measured", measured=True)
    assert kept == [] and check.source == "measured"
    assert check.reason.startswith("measured on cuda: 2:4 layers run at 1.02-1.10x their dense time")


def test_with_no_candidate_the_reason_names_what_the_runtime_refuses(gpu):
    cuda = load_target("cuda")
    _, check = worthwhile([], {}, {}, AUTO, cuda, "measured", measured=True)
    assert "take linear layers (a 2-D weight), not conv2d" in check.reason
    _, check = worthwhile([], {}, {}, parse_mode("2:4"), load_target("cpu"), "measured", measured=True)
    assert check.reason == "no layer can take 2:4 (conv or linear, ungrouped, input channels in runs of 4)"
