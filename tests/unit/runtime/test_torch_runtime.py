"""The torch runtime on this CPU (target cpu-torch): ONNX graphs rebuilt as torch ops compute what
onnxruntime computes, modules load without being changed, timing holds the target's threads, the
precision check can fail; and its CUDA paths' rules with fakes (no GPU here): a cuda target stops with
its reason, the GPU's facts are parsed from nvidia-smi, torch is imported lazily."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwprune.cli import main
from hwprune.cost.onnx_ops import identity_model, input_shape, single_op_model
from hwprune.cost.signature import OpSignature
from hwprune.errors import DeviceError, HwpruneError
from hwprune.runtime import pytorch, runtime_for
from hwprune.runtime.pytorch import TorchRuntime, gpu_facts, tensors
from hwprune.runtime.torch_onnx import OnnxProgram
from hwprune.targets import load_target
from tests.unit.runtime.test_targets import GOOD

CPU = load_target("cpu-torch")

SIGNATURES = [
    OpSignature("conv2d", 2, 8, 16, 9, 9, kernel=3, stride=2, padding=1),
    OpSignature("conv2d", 1, 16, 16, 8, 8, kernel=3, padding=1, groups=16),
    OpSignature("conv2d", 1, 8, 8, 8, 8, kernel=3, padding=2, dilation=2, sparsity="2:4"),
    OpSignature("conv_transpose2d", 1, 8, 4, 5, 5, kernel=3, stride=2, padding=1, output_padding=1),
    OpSignature("linear", 2, 32, 24, 7, 1),
    OpSignature("gather", 1, 16, 6, 4, 4),
    OpSignature("slice", 1, 16, 6, 4, 4),
    OpSignature("attention", 1, 2, 2, 5, 5, kernel=8),
    OpSignature("attention", 1, 2, 2, 3, 7, kernel=8, causal=1),
]


def _ort(graph: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.key())
def test_single_op_graphs_compute_what_onnxruntime_computes(sig):
    graph = single_op_model(sig)
    x = np.random.default_rng(1).standard_normal(input_shape(sig), dtype=np.float32)
    got = OnnxProgram(graph)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(graph, x), atol=1e-4, rtol=1e-4)


class SmallNet(nn.Module):
    """The ops of CNN exports: Conv, MaxPool, Clip, Add, GlobalAveragePool, Flatten, Gemm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.clamp(self.conv(x), 0, 6), 2)
        y = y + self.conv2(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(model, (x,), str(path), input_names=["input"], opset_version=17, dynamo=False)
    return path


def test_a_whole_cnn_export_computes_what_onnxruntime_computes(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    path = _export(SmallNet().eval(), x, tmp_path / "net.onnx")
    program = OnnxProgram(path)
    assert program.inputs == [((2, 3, 16, 16), False)]
    np.testing.assert_allclose(program(x).numpy(), _ort(path.read_bytes(), x.numpy()), atol=1e-5, rtol=1e-4)


def test_a_conv_with_asymmetric_pads_pads_first():
    weight = np.random.default_rng(2).standard_normal((4, 3, 2, 2), dtype=np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[2, 2], pads=[0, 1, 1, 0])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 6])],
                              initializer=[numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(3).standard_normal((1, 3, 5, 6), dtype=np.float32)
    got = OnnxProgram(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(model.SerializeToString(), x), atol=1e-5, rtol=1e-5)


def test_an_op_without_a_torch_equivalent_is_named():
    graph = helper.make_graph([helper.make_node("NonMaxSuppression", ["x"], ["y"], name="nms")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(HwpruneError, match="ONNX op NonMaxSuppression .*'nms'.* no torch equivalent"):
        OnnxProgram(helper.make_model(graph))


def test_a_computed_slice_bound_is_refused_in_one_line():
    graph = helper.make_graph([helper.make_node("Slice", ["x", "s", "x"], ["y"], name="cut")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              initializer=[numpy_helper.from_array(np.array([0], dtype=np.int64), "s")])
    with pytest.raises(HwpruneError, match="Slice node 'cut': input 2 must be a constant"):
        OnnxProgram(helper.make_model(graph))


def test_cpu_torch_times_single_ops_with_the_targets_threads(monkeypatch):
    torch.set_num_threads(2)
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    runtime = runtime_for(CPU)
    sig = SIGNATURES[0]
    timing = runtime.time_graph(single_op_model(sig), input_shape(sig), calls=7)
    assert timing.samples >= 7 and timing.median_ms > 0
    assert seen and seen[0] == 1 and torch.get_num_threads() == 2  # held while timing, given back after
    assert runtime.time_graph(identity_model(), (1,), calls=5).samples >= 5
    with pytest.raises(HwpruneError, match=r"takes inputs \[\(2, 8, 9, 9\)\], not \(1, 8, 9, 9\)"):
        runtime.time_graph(single_op_model(sig), (1, 8, 9, 9))


def test_a_module_is_timed_as_a_copy_and_left_as_it_is():
    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runtime = runtime_for(replace(CPU, default_dtype="fp16"))
    runner = runtime.load_model(model, (x,))
    assert runner.inputs[0].dtype == torch.float16 and runner.input_shapes == [(1, 3, 16, 16)]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    comparison = runtime.interleaved([runner, runtime.load_model(model, (x,))], rounds=2)
    assert len(comparison.ratios) == 2 and len(comparison.round_ratios[1]) == 2


def test_integer_inputs_keep_their_type():
    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(10, 4)

        def forward(self, ids):
            return self.table(ids).sum(-1)

    runner = runtime_for(replace(CPU, default_dtype="fp16")).load_model(Embed(), (torch.tensor([[1, 2, 3]]),))
    assert runner.inputs[0].dtype == torch.int64 and runner.outputs(torch.tensor([[3, 2, 1]]))[0].shape == (1, 3)


def test_a_pt2_program_and_an_onnx_file_load(tmp_path):
    torch.manual_seed(0)
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "net.pt2")
    runtime = runtime_for(CPU)
    from_pt2 = runtime.load(tmp_path / "net.pt2")
    assert from_pt2.input_shapes == [(1, 3, 16, 16)]
    torch.testing.assert_close(from_pt2.outputs(x)[0], model(x))
    from_onnx = runtime.load(_export(model, x, tmp_path / "net.onnx"))
    torch.testing.assert_close(from_onnx.outputs(x)[0], model(x), atol=1e-5, rtol=1e-4)
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(HwpruneError, match="bad.pt2: not a torch.export program"):
        runtime.load(tmp_path / "bad.pt2")


class HalfBroken(nn.Module):
    """Computes something else in fp16: what the precision check is for."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + (1.0 if self.fc.weight.dtype == torch.float16 else 0.0)


def test_the_precision_check_passes_a_faithful_module_and_fails_a_broken_one():
    inputs = [torch.randn(2, 4, generator=torch.Generator().manual_seed(n)) for n in range(3)]
    half = runtime_for(replace(CPU, default_dtype="fp16"))
    torch.manual_seed(0)
    good = half.check_module(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), inputs, 1e-4, 1e-3)
    assert good["ok"] and 0 < good["max_abs_err"] < 1e-2 and good["atol"] == 1e-2 and good["output_scaled_atol"]
    bad = half.check_module(HalfBroken().eval(), inputs, 1e-4, 1e-3)
    assert not bad["ok"] and bad["max_abs_err"] > 0.5
    fp32 = runtime_for(CPU).check_module(HalfBroken().eval(), inputs, 1e-4, 1e-3)
    assert fp32["ok"] and fp32["max_abs_err"] == 0.0 and not fp32["output_scaled_atol"]


def test_provenance_binds_the_mode_and_device():
    found = runtime_for(load_target("cpu-torch:compile")).provenance()
    assert (found["runtime"], found["threads"], found["graph_optimization_level"]) == ("torch", 1, "compile")
    assert found["host"]["device"] == "cpu" and found["host"]["gpu"] is None
    assert runtime_for(CPU).method["statistic"] == "median of eager calls, wall clock"


def test_torch_target_profiles_and_modes():
    cuda = load_target("cuda")
    assert (cuda.runtime, cuda.device, cuda.mode, cuda.default_dtype, cuda.threads) == ("torch", "cuda", "eager",
                                                                                        "fp16", None)
    assert cuda.sparse_24  # 2:4 on PyTorch's semi-structured kernels, offered where measured faster
    assert (CPU.device, CPU.mode, CPU.threads, CPU.default_dtype) == ("cpu", "eager", 1, "fp32")
    assert load_target("cuda:cudagraph").mode == "cudagraph" and load_target("cuda:cudagraph").name == "cuda:cudagraph"
    for name, message in (("cpu-torch:cudagraph", "needs device cuda"), ("cpu:compile", "torch targets only"),
                          ("cuda:fast", "is not one of eager, cudagraph, compile")):
        with pytest.raises(DeviceError, match=message):
            load_target(name)


# a valid profile (test_targets.GOOD) made a torch one, with the torch settings under test in its place
TORCH_GOOD = GOOD.replace('runtime = "tensorrt"', 'runtime = "torch"\n{settings}')


@pytest.mark.parametrize("settings, message", [
    ('mode = "eager"', "lacks device"),
    ('device = "cuda"', "lacks mode"),
    ('device = "tpu"\nmode = "eager"', "device = 'tpu' is not one of cpu, cuda"),
    ('device = "cpu"\nmode = "eager"', "lacks threads"),
    ('device = "cuda"\nmode = "eager"\nthreads = 2', "threads only apply to torch targets on the cpu"),
    ('device = "cuda"\nmode = "eager"\ngraph_optimization_level = "ORT_ENABLE_ALL"', "only apply to onnxruntime"),
])
def test_broken_torch_profiles_name_the_problem(tmp_path, settings, message):
    (tmp_path / "dev.toml").write_text(TORCH_GOOD.format(name="dev", settings=settings))
    with pytest.raises(DeviceError, match=message):
        load_target("dev", directory=tmp_path)


def test_a_cuda_target_without_a_gpu_stops_with_its_reason(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HwpruneError, match="no CUDA GPU is visible to PyTorch"):
        runtime_for(load_target("cuda"))
    assert main(["latency", "torchvision:resnet18", "--target", "cuda"]) == 2
    compile_args = ["torchvision:resnet18", "--target", "cuda", "--latency", "0.5", "--out", str(tmp_path)]
    assert main(["compile", *compile_args]) == 2
    assert list(tmp_path.iterdir()) == []  # nothing predicted or timed in its place
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("hwprune: error: target cuda is timed with PyTorch: no CUDA GPU")
                                    for e in errors)


def test_a_torch_target_is_never_timed_over_ssh(monkeypatch):
    import hwprune.runtime as runtime

    monkeypatch.setattr(runtime, "_REMOTE", [object()])
    with pytest.raises(DeviceError, match="--remote times onnxruntime and TensorRT targets only"):
        runtime_for(CPU)


def test_gpu_facts_read_what_nvidia_smi_says(monkeypatch):
    monkeypatch.setattr(pytorch, "_command", lambda *argv: "NVIDIA H100 80GB HBM3, 570.86.15, 1980, 2619, 1980, "
                                                           "2619, 700.00\n")
    facts = gpu_facts()
    assert facts["driver"] == "570.86.15" and facts["power_limit_w"] == "700.00"
    assert facts["clocks_mhz"] == {"sm": "1980", "mem": "2619", "max_sm": "1980", "max_mem": "2619"}
    monkeypatch.setattr(pytorch, "_command", lambda *argv: None)  # no nvidia-smi: null, never guessed
    assert gpu_facts()["driver"] is None and gpu_facts()["clocks_mhz"] is None


def test_a_cuda_fingerprint_names_the_gpu_and_its_versions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(pytorch, "_command", lambda *argv: None)
    found = TorchRuntime(load_target("cuda:cudagraph")).fingerprint()
    assert found["host"]["gpu"] == "Fake GPU" and found["capability"] == "9.0" and found["cudnn"] == 91002
    assert found["graph_optimization_level"] == "cudagraph" and found["single_ops"] == "cudagraph"
    assert found["threads"] is None and found["host"]["dtype"] == "fp16"


def test_outputs_of_any_structure_become_tensors():
    a, b = torch.ones(1), torch.zeros(2)
    assert [t.shape for t in tensors({"logits": a, "past": (b, (a,))})] == [(1,), (2,), (1,)]
    assert tensors(None) == []


def test_the_torch_runtime_imports_torch_lazily():
    """torch only inside functions: the runtime layer (and the on-device kit that reaches it) imports
    without it."""
    for name in ("pytorch.py", "torch_onnx.py"):
        tree = ast.parse((Path(pytorch.__file__).parent / name).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names} | {
            n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert not {m for m in names if m and m.split(".")[0] == "torch"}, name
