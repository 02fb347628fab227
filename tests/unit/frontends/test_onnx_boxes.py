"""ONNX detectors tell their box decode: an Ultralytics export by its metadata, a YOLOX head (ddddocr's text
detector) by its output's layout; any other layout is refused with its reason. Small detectors built here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.evaluate.boxes import box_agreement
from hwprune.frontends import load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is None,
                                reason="onnx2torch not installed (pip install 'hwprune[onnx]')")
SHAPE = (1, 3, 64, 64)  # anchors: 8x8 at stride 8, 4x4 at 16, 2x2 at 32: 84
STRIDES = (8, 16, 32)
ULTRALYTICS_METADATA = {"author": "Ultralytics", "stride": "32", "task": "detect", "imgsz": "[64, 64]",
                        "names": "{0: 'word', 1: 'line'}", "end2end": "False"}


class TinyDetector(nn.Module):
    """Features at strides 8, 16 and 32, a 1x1 head on each: YOLOX's layout, (B, anchors, 4 offsets, objectness,
    one class), or Ultralytics' export's, (B, 4 + 2 classes, anchors) with boxes decoded in pixels. ``shift``
    moves every box by that share of a cell; ``width``: the features' channels. Shapes are constants of
    ``SHAPE`` (the file has no Shape op), as in a file exported at a fixed size."""

    def __init__(self, ultralytics: bool = False, shift: float = 0.0, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ultralytics = ultralytics
        self.levels = nn.ModuleList([nn.Conv2d(3, width, 8, stride=8), nn.Conv2d(width, width, 2, stride=2),
                                     nn.Conv2d(width, width, 2, stride=2)])
        self.heads = nn.ModuleList(nn.Conv2d(width, 6, 1) for _ in range(3))
        with torch.no_grad():
            for head in self.heads:
                head.weight.mul_(0.1)
                head.bias.copy_(torch.tensor([shift, 0, 0, 0, 3, 3]))  # confident: a box in every cell
        for stride in STRIDES:  # each level's cells, x then y
            rows, cols = torch.meshgrid(torch.arange(SHAPE[2] // stride), torch.arange(SHAPE[3] // stride),
                                        indexing="ij")
            self.register_buffer(f"cells_{stride}", torch.stack((cols, rows)).float().reshape(1, 2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for stride, level, head in zip(STRIDES, self.levels, self.heads, strict=True):
            x = torch.relu(level(x))
            y = head(x).reshape(SHAPE[0], 6, (SHAPE[2] // stride) * (SHAPE[3] // stride))
            if self.ultralytics:
                cells = getattr(self, f"cells_{stride}")
                y = torch.cat(((y[:, :2] + cells + 0.5) * stride, y[:, 2:4].exp() * stride, y[:, 4:].sigmoid()), 1)
            else:
                y = torch.cat((y[:, :4], y[:, 4:].sigmoid()), 1)
            outputs.append(y)
        output = torch.cat(outputs, 2)
        return output if self.ultralytics else output.transpose(1, 2)


def export(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    import onnx

    from hwprune.export.onnx_export import export_onnx

    export_onnx(model.eval(), torch.randn(SHAPE), path)
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.save(proto, str(path))
    return f"onnx:{path}"


def test_a_yolox_file_decodes_its_boxes_and_agrees_with_itself_not_with_moved_boxes(tmp_path):
    loaded = load_model(export(TinyDetector(), tmp_path / "yolox.onnx"))
    moved = load_model(export(TinyDetector(shift=0.5), tmp_path / "moved.onnx"))
    decode = loaded.capabilities.detections
    assert decode is not None and loaded.capabilities.boxes_unmeasured is None
    images = [torch.rand(SHAPE) for _ in range(2)]
    with torch.no_grad():
        (boxes,) = decode([loaded.module(images[0])], SHAPE)
        (direct,) = decode([TinyDetector().eval()(images[0])], SHAPE)
    assert len(boxes) > 0 and boxes.shape[1] == 6 and torch.allclose(boxes, direct, atol=1e-4)
    assert box_agreement(loaded.module, loaded.module, images, decode) == 1.0
    assert box_agreement(loaded.module, moved.module, images, decode) < 0.5  # half a cell: IoU 1/3 at best


def test_an_ultralytics_detect_export_decodes_by_its_metadata(tmp_path):
    loaded = load_model(export(TinyDetector(ultralytics=True), tmp_path / "yolo.onnx", ULTRALYTICS_METADATA))
    moved = load_model(export(TinyDetector(ultralytics=True, shift=0.5), tmp_path / "moved.onnx",
                              ULTRALYTICS_METADATA))
    decode = loaded.capabilities.detections
    assert decode is not None and loaded.capabilities.boxes_unmeasured is None
    images = [torch.rand(SHAPE)]
    with torch.no_grad():
        (boxes,) = decode([loaded.module(images[0])], SHAPE)
    assert len(boxes) > 0 and set(boxes[:, 5].tolist()) <= {0.0, 1.0}
    assert box_agreement(loaded.module, loaded.module, images, decode) == 1.0
    assert box_agreement(loaded.module, moved.module, images, decode) < 0.5


@pytest.mark.parametrize("metadata, reason", [
    ({**ULTRALYTICS_METADATA, "task": "pose"}, "an Ultralytics pose export: box agreement is measured on detect"),
    ({**ULTRALYTICS_METADATA, "end2end": "True"}, "end-to-end export (NMS inside the file)"),
    ({**ULTRALYTICS_METADATA, "names": "{0: 'word'}"}, "output0 is (1, 6, 84), not (batch, 4 + 1 classes"),
    (None, "output layout (1, 6, 84) not recognised as an Ultralytics detect export's (its metadata, task detect) "
           "or a YOLOX head's (batch, 84 anchors: one per cell at strides 8/16/32 of 64x64, 5 + classes)"),
], ids=["pose", "end-to-end", "classes", "neither"])
def test_other_layouts_are_refused_with_their_reason(tmp_path, metadata, reason):
    loaded = load_model(export(TinyDetector(ultralytics=True), tmp_path / "other.onnx", metadata))
    assert loaded.capabilities.detections is None and reason in loaded.capabilities.boxes_unmeasured


def test_a_classifier_is_not_taken_for_a_detector(tmp_path):
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    capabilities = load_model(export(classifier, tmp_path / "classifier.onnx")).capabilities
    assert capabilities.detections is None and capabilities.boxes_unmeasured is None


def test_recovery_measures_box_agreement_with_the_same_decode(tmp_path):
    """recover reports box agreement before and after distillation from the outputs it already compares."""
    from hwprune.recovery.data import Batch, TrainingData
    from hwprune.recovery.run import _evaluate

    loaded = load_model(export(TinyDetector(), tmp_path / "yolox.onnx"))
    moved = load_model(export(TinyDetector(shift=0.5), tmp_path / "moved.onnx"))
    data = TrainingData("images", 2, False, _batches=[Batch(torch.rand(SHAPE), None) for _ in range(2)])
    decode, device = loaded.capabilities.detections, torch.device("cpu")
    images = [batch.inputs for batch in data.epoch(0)]
    assert _evaluate(loaded.module, loaded.module, data, device, decode)["box_agreement"] == 1.0
    assert (_evaluate(loaded.module, moved.module, data, device, decode)["box_agreement"]
            == box_agreement(loaded.module, moved.module, images, decode) < 0.5)
    assert "box_agreement" not in _evaluate(loaded.module, moved.module, data, device, None)


@pytest.mark.parametrize("metadata", [None, {**ULTRALYTICS_METADATA, "task": "segment"}], ids=["yolox", "segment"])
def test_compile_reports_box_agreement_or_says_why_not(tmp_path, capsys, monkeypatch, metadata):
    """On the user's images, a detector whose decode the file tells gets box agreement in the report; one
    refused gets one line saying why."""
    import json

    from hwprune.cli import main

    spec = export(TinyDetector(metadata is not None, width=256), tmp_path / "detector.onnx", metadata)
    (tmp_path / "images.py").write_text("import torch\n\ndef images():\n"
                                        f"    return [torch.rand({SHAPE}, generator=torch.Generator().manual_seed(i)) "
                                        "for i in range(2)]\n")
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    assert main(["compile", "--refine", "1", spec, "--target", "cpu", "--latency", "0.8", "--calib-data",
                 f"{tmp_path / 'images.py'}:images", "--out", str(tmp_path / "build")]) == 0
    agreement = json.loads((tmp_path / "build" / "report.json").read_text())["fidelity"]["box_agreement"]
    err = " ".join(capsys.readouterr().err.split())
    if metadata is None:
        assert 0.0 <= agreement <= 1.0 and "box agreement not measured" not in err
    else:
        assert agreement is None
        assert "box agreement not measured: an Ultralytics segment export: box agreement is measured on detect" in err


def test_the_file_names_its_outputs_roles_for_recovery(tmp_path):
    """A detector's frontend names which features its decode reads as boxes, objectness and class scores."""
    from hwprune.frontends.decodes import ULTRALYTICS_ROLES, YOLOX_ROLES

    yolox = load_model(export(TinyDetector(), tmp_path / "yolox.onnx")).capabilities
    ultralytics = load_model(export(TinyDetector(ultralytics=True), tmp_path / "yolo.onnx", ULTRALYTICS_METADATA))
    assert yolox.detection_roles == YOLOX_ROLES
    assert ultralytics.capabilities.detection_roles == ULTRALYTICS_ROLES
    assert load_model(export(TinyDetector(ultralytics=True), tmp_path / "other.onnx")).capabilities.detection_roles \
        is None
    output = torch.arange(2 * 84 * 6.0).reshape(2, 84, 6)  # YOLOX: (B, anchors, 5 + classes)
    assert [tuple(role.of([output]).shape) for role in YOLOX_ROLES] == [(2, 84, 4), (2, 84, 1), (2, 84, 1)]
    assert torch.equal(YOLOX_ROLES[1].of([output])[..., 0], output[..., 4])
    boxes, classes = (role.of([output.transpose(1, 2)]) for role in ULTRALYTICS_ROLES)  # (B, 4 + classes, anchors)
    assert torch.equal(boxes, output[..., :4]) and torch.equal(classes, output[..., 4:])


def test_distillation_with_the_roles_brings_moved_boxes_back(tmp_path):
    """recover's loss on a YOLOX file, its roles and their scales from the frontend: a student whose boxes are
    half a cell off (and whose objectness is lower) is distilled back to the teacher's boxes."""
    import copy

    from hwprune.recovery.data import Batch, TrainingData
    from hwprune.recovery.distill import Recipe, Trained, detector_scales, distil
    from hwprune.recovery.world import World

    teacher = load_model(export(TinyDetector(), tmp_path / "yolox.onnx"))
    student = copy.deepcopy(load_model(export(TinyDetector(shift=0.5), tmp_path / "moved.onnx")).module)
    with torch.no_grad():  # less sure of every box: objectness lower
        for parameter in student.parameters():
            if parameter.dim() == 1 and parameter.shape[0] == 6:
                parameter[4] -= 2.0
    generator = torch.Generator().manual_seed(0)
    data = TrainingData("images", 4, False,
                        _batches=[Batch(torch.rand(SHAPE, generator=generator), None) for _ in range(4)])
    images = [batch.inputs for batch in data.epoch(0)]
    world, decode = World(0, 1, torch.device("cpu")), teacher.capabilities.detections
    detector = detector_scales(teacher.module, data, teacher.capabilities.detection_roles, world)
    assert set(detector.to_json()) == {"boxes", "objectness", "classes"}
    assert box_agreement(teacher.module, student, images, decode) < 0.5
    progress = distil(teacher.module, student, data, Recipe(epochs=15, lr=1e-2, batch_size=1), world, Trained(),
                      detector=detector)
    assert progress.losses[-1] < 0.1 * progress.losses[0]
    assert box_agreement(teacher.module, student, images, decode) > 0.9
