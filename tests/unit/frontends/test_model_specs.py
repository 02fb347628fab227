"""Model specs users have: ONNX files (through onnx2torch) and Ultralytics detectors, and one line
naming the file or spec for each bad one. Skipped only where the extra is not installed."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends import load_model, state_digest
from hwprune.frontends.ultralytics import save_ultralytics

needs_onnx2torch = pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is None,
                                      reason="onnx2torch not installed (pip install 'hwprune[onnx]')")
needs_ultralytics = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                       reason="ultralytics not installed (pip install 'hwprune[ultralytics]')")
SMALL = (1, 3, 64, 64)  # the smallest input a YOLO detector takes (stride 32): keeps these tests fast


def spec_error(spec: str, **kwargs) -> str:
    """The one-line message load_model raises for ``spec``."""
    with pytest.raises(ModelSpecError) as info:
        load_model(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


class ResidualBlock(nn.Module):
    """conv, BN, ReLU and a residual add, then pooling and a linear layer: what the ONNX round trip must keep."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.fc((torch.relu(self.bn(self.conv(y))) + y).mean((2, 3)))


def export_block(path: Path, dynamo: bool) -> tuple[nn.Module, Path]:
    """A ResidualBlock with non-trivial BN statistics, exported with a symbolic batch by hwprune's exporter
    (TorchScript, opset 17) or by torch's default one (dynamo, opset 18+)."""
    from hwprune.export.onnx_export import export_onnx

    torch.manual_seed(1)
    model = ResidualBlock().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.2, 0.2)
    example = torch.randn(2, 3, 16, 16)
    if not dynamo:
        return model, export_onnx(model, example, path, dynamic_batch=True)
    torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    return model, path


@pytest.fixture
def block_onnx(tmp_path: Path) -> tuple[nn.Module, Path]:
    return export_block(tmp_path / "block.onnx", dynamo=False)


@needs_onnx2torch
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_round_trip(tmp_path, dynamo):
    model, path = export_block(tmp_path / "block.onnx", dynamo)
    loaded = load_model(f"onnx:{path}")
    assert tuple(loaded.example_input.shape) == (1, 3, 16, 16)  # the symbolic batch became 1
    assert loaded.weights == f"the ONNX file {path}" and loaded.seed is None
    assert not loaded.module.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(loaded.example_input), model(loaded.example_input), atol=1e-5,
                                   rtol=1e-4)
    wider = load_model(f"onnx:{path}", input_shape=(3, 3, 16, 16))
    assert tuple(wider.example_input.shape) == (3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wider.module(wider.example_input), model(wider.example_input), atol=1e-5,
                                   rtol=1e-4)


@needs_onnx2torch
def test_onnx_weights_behind_identity_and_constant_nodes(tmp_path):
    """Exporters alias equal weights through Identity nodes or write them as Constant nodes, where
    onnx2torch expects initializers: hwprune rewrites them so that such files convert."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv = nn.Conv2d(3, 4, 3)
    nodes = [helper.make_node("Identity", ["w"], ["w_alias"]),
             helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(conv.bias.detach().numpy(), "b")),
             helper.make_node("Conv", ["x", "w_alias", "b"], ["y"], kernel_shape=[3, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [numpy_helper.from_array(conv.weight.detach().numpy(), "w")])
    path = tmp_path / "aliased.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    loaded = load_model(f"onnx:{path}")
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(loaded.example_input), conv(loaded.example_input))


@needs_onnx2torch
def test_a_converted_shape_op_exports_whichever_symbolic_helper_onnx2torch_bound(tmp_path, monkeypatch):
    """onnx2torch binds ``torch.onnx.symbolic_helper`` when first imported: after an ``hf:`` compile in the same
    process that is torch's public shim, without ``GLOBALS`` (stood in for here by an empty module), and the Shape
    op's export failed. Loading an ``onnx:`` file points onnx2torch back at the exporter's module."""
    import types

    import onnx2torch.utils.common as common

    from hwprune.export.onnx_export import export_onnx
    from hwprune.export.verify import verify_onnx

    class Flatten(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1)  # a Shape node in the exported file

    path = tmp_path / "shape.onnx"
    torch.onnx.export(Flatten(), (torch.randn(2, 3, 4),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    monkeypatch.setattr(common, "symbolic_helper", types.ModuleType("public_symbolic_helper"))
    loaded = load_model(f"onnx:{path}")
    exported = export_onnx(loaded.module, loaded.example_input, tmp_path / "again.onnx", dynamic_batch=True)
    assert verify_onnx(loaded.module, exported, [loaded.example_input, torch.randn(3, 3, 4)]).ok


@needs_onnx2torch
def test_onnx_bad_inputs_are_one_line(tmp_path, block_onnx, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    assert str(tmp_path / "missing.onnx") in spec_error(f"onnx:{tmp_path / 'missing.onnx'}")
    text = tmp_path / "notes.onnx"
    text.write_text("these are not the bytes of an ONNX model\n" * 3)
    assert "not an ONNX model" in spec_error(f"onnx:{text}")

    def single_node(name: str, node: onnx.NodeProto, dims: list, **kwargs) -> Path:
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
        path = tmp_path / name
        onnx.save(helper.make_model(graph, **kwargs), path)
        return path

    relu = helper.make_node("Relu", ["x"], ["y"])
    symbolic = single_node("symbolic.onnx", relu, ["N", 3, "H", "W"])
    message = spec_error(f"onnx:{symbolic}")
    assert str(symbolic) in message and "'H'" in message and "--input-shape" in message
    assert tuple(load_model(f"onnx:{symbolic}", input_shape=(2, 3, 8, 8)).example_input.shape) == (2, 3, 8, 8)
    custom = single_node("custom.onnx", helper.make_node("Frobnicate", ["x"], ["y"], domain="example.ops"), [1, 3],
                         opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.ops", 1)])
    message = spec_error(f"onnx:{custom}")
    assert str(custom) in message and "onnx2torch cannot convert" in message and "Frobnicate" in message

    _, path = block_onnx
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # as if the extra were not installed
    message = spec_error(f"onnx:{path}")
    assert str(path) in message and "pip install 'hwprune[onnx]'" in message


@needs_ultralytics
def test_yolov8n_yaml_loads_seeded_and_returns_tensors():
    loaded = load_model("ultralytics:yolov8n.yaml")
    assert tuple(loaded.example_input.shape) == (1, 3, 640, 640)
    assert loaded.weights == "random, seed 0" and loaded.seed == 0 and not loaded.module.training
    with torch.no_grad():
        boxes, scores = loaded.module(loaded.example_input)
        _, raw = loaded.module.detector(loaded.example_input)  # ultralytics' own eval forward
    assert boxes.shape == (1, 64, 8400) and scores.shape == (1, 80, 8400)  # 4 x 16 DFL bins, 80 classes
    assert torch.equal(boxes, raw["boxes"]) and torch.equal(scores, raw["scores"])
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.module.modules())  # not fused

    again = load_model("ultralytics:yolov8n.yaml", input_shape=SMALL).module.state_dict()
    first = loaded.module.state_dict()
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert state_digest(load_model("ultralytics:yolov8n.yaml", input_shape=SMALL, seed=1).module) != state_digest(
        loaded.module)


@needs_ultralytics
def test_ultralytics_builds_offline():
    """No DNS look-up or connection while importing ultralytics and building a model, and no leaked
    OMP_NUM_THREADS: run in a fresh interpreter, since ultralytics decides whether it is online at import."""
    script = textwrap.dedent("""
        import os, socket
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(repr(args[:2]))
            raise OSError("no network in this test")
        socket.getaddrinfo = socket.create_connection = socket.socket.connect = refuse
        os.environ.pop("OMP_NUM_THREADS", None)
        from hwprune.frontends import load_model
        load_model("ultralytics:yolo11n.yaml", input_shape=(1, 3, 64, 64))
        print(attempts, os.environ.get("OMP_NUM_THREADS"))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # ultralytics goes quiet under pytest
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[] None"


class Opaque:
    """A class outside every allow-list: unpickling it needs full trust."""


@needs_ultralytics
def test_ultralytics_bad_inputs_are_one_line(tmp_path, monkeypatch):
    assert "no such model yaml" in spec_error("ultralytics:yolov99z.yaml")
    assert "a segment model" in spec_error("ultralytics:yolov8n-seg.yaml")
    assert "a classify model" in spec_error("ultralytics:yolov8n-cls.yaml")
    assert "its head is v10Detect" in spec_error("ultralytics:yolov10n.yaml")
    assert "expected a model yaml" in spec_error("ultralytics:yolov8n.onnx")
    assert "never downloads" in spec_error("ultralytics:https://example.com/yolov8n.pt")
    assert "--weights does not apply" in spec_error("ultralytics:yolov8n.yaml", weights="DEFAULT")
    assert "multiples of the model's stride 32" in spec_error("ultralytics:yolov8n.yaml", input_shape=(1, 3, 100, 100))
    missing = tmp_path / "missing.pt"
    assert f"{missing}: file not found" in spec_error(f"ultralytics:{missing}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert f"{junk}: not a torch.save checkpoint" in spec_error(f"ultralytics:{junk}")

    detector = load_model("ultralytics:yolov8n.yaml", input_shape=SMALL).module.detector
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": detector, "note": Opaque()}, pickled)
    message = spec_error(f"ultralytics:{pickled}")
    assert str(pickled) in message and "--trust-pickle" in message
    trusted = load_model(f"ultralytics:{pickled}", input_shape=SMALL, trust_pickle=True)
    assert state_digest(trusted.module.detector) == state_digest(detector)

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if the extra were not installed
    assert "pip install 'hwprune[ultralytics]'" in spec_error("ultralytics:yolov8n.yaml")


@needs_ultralytics
def test_pruned_detector_saved_for_ultralytics(tmp_path):
    """Halve one prunable group, save, and load the file back both as ultralytics:FILE.pt (weights_only)
    and with ultralytics' own YOLO(): same pruned widths, same outputs."""
    from ultralytics import YOLO

    from hwprune.graph.analyze import analyze
    from hwprune.transform.realise import apply_plan
    from tests.pruning_helpers import plan_of

    loaded = load_model("ultralytics:yolov8n.yaml", input_shape=SMALL)
    analysis = analyze(copy.deepcopy(loaded.module), loaded.example_input, loaded.name)
    group = next(g for g in analysis.groups if g.prunable and g.channels >= 32)
    pruned = apply_plan(plan_of(analysis, {group.id: list(range(0, group.channels, 2))}), analysis).eval()
    path = tmp_path / "pruned.pt"
    save_ultralytics(pruned, loaded.name, path)

    reloaded = load_model(f"ultralytics:{path}", input_shape=SMALL)
    assert reloaded.weights == f"the Ultralytics checkpoint {path}" and reloaded.seed is None
    assert state_digest(reloaded.module) == state_digest(pruned) != state_digest(loaded.module)
    yolo = YOLO(str(path))
    with torch.no_grad():
        expected = pruned(loaded.example_input)
        torch.testing.assert_close(reloaded.module(loaded.example_input), expected)
        _, raw = yolo.model.eval()(loaded.example_input)
    torch.testing.assert_close((raw["boxes"], raw["scores"]), expected)
    with pytest.raises(ModelSpecError):
        save_ultralytics(nn.Linear(2, 2), "ultralytics:yolov8n.yaml", tmp_path / "linear.pt")


@pytest.mark.e2e
@needs_onnx2torch
def test_onnx_compile_measures_against_the_users_own_file(tmp_path, capsys, monkeypatch):
    """An onnx: model's baseline is the user's file itself (byte for byte), once its conversion is
    checked to compute what it does; the pruned file keeps the user's input and output names; a conversion
    that differs stops the compile with one line."""
    import onnx

    from hwprune.cli import main
    from hwprune.export.onnx_export import export_named
    from hwprune.export.verify import Verification

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),  # enough work to prune
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    path = export_named(wide, (torch.randn(1, 3, 32, 32),), tmp_path / "wide.onnx", ["images"], ["logits"])
    out = tmp_path / "build"
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    assert main(["compile", "--refine", "2",
                 f"onnx:{path}", "--target", "cpu", "--latency", "0.7", "--out", str(out)]) == 0
    assert (out / "baseline.onnx").read_bytes() == path.read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["baseline"].startswith(f"the user's ONNX file {path}")
    assert f"Baseline: the user's ONNX file {path}" in (out / "report.md").read_text()
    assert "keeps its input and output names (images -> logits)" in report["export"]["baseline"]
    pruned = onnx.load(str(out / "pruned.onnx")).graph
    assert [i.name for i in pruned.input] == ["images"] and [o.name for o in pruned.output] == ["logits"]

    failed = Verification(0.5, 0.5, False, 1e-4, 1e-3, 1, "input 0, output 0 at (0, 1): onnx 1, torch 0.5")
    monkeypatch.setattr("hwprune.pipeline.prepare.verify_onnx", lambda *args, **kwargs: failed)
    capsys.readouterr()
    assert main(["compile", "--refine", "2", f"onnx:{path}", "--target", "cpu", "--latency", "0.7",
                 "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert "conversion does not compute what the file does" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "other" / "report.json").exists()


@needs_ultralytics
def test_box_agreement_of_a_detector():
    """A native detector's boxes are its predict's (Ultralytics' decode and NMS at the predict defaults); it
    agrees with itself completely, and one that finds nothing gives no number rather than a perfect one."""
    from ultralytics.utils.nms import non_max_suppression

    from hwprune.evaluate.boxes import box_agreement
    loaded = load_model("ultralytics:yolov8n.yaml", input_shape=SMALL)
    decode, images = loaded.capabilities.detections, [torch.rand(2, 3, 64, 64)]
    assert box_agreement(loaded.module, loaded.module, images, decode) is None  # random init: no box passes 0.25
    with torch.no_grad():
        for branch in loaded.module.detector.model[-1].cv3:
            branch[-1].bias.add_(20.0)  # confident classes everywhere (the init is about -10): many boxes
        found = decode(list(loaded.module(images[0])), tuple(images[0].shape))
        predicted = non_max_suppression(loaded.module.detector.eval()(images[0])[0], 0.25, 0.7)
    for ours, theirs in zip(found, predicted, strict=True):
        assert len(ours) > 0
        torch.testing.assert_close(ours[ours[:, 4].argsort()], theirs[theirs[:, 4].argsort()])
    assert box_agreement(loaded.module, loaded.module, images, decode) == 1.0
