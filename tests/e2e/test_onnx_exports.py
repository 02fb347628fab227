"""The ONNX file a user's framework writes loads through ``onnx:`` at the opset it was written in: Ultralytics'
own export of YOLOv8n (opset 18 by default here, whose Split onnx's version converter has no adapter for) is
analysed as its opset-17 export is, group for group."""

import os

import pytest

from hwprune.frontends import load_model
from hwprune.frontends.onnx_opset import default_opset
from hwprune.graph.analyze import analyze

pytest.importorskip("ultralytics")
onnx = pytest.importorskip("onnx")


def exported(folder, opset):
    """yolov8n built from its yaml (random weights, nothing downloaded), exported by Ultralytics at 160x160."""
    from ultralytics import YOLO

    os.environ["YOLO_OFFLINE"] = "1"
    folder.mkdir()
    model = YOLO("yolov8n.yaml")
    kwargs = {} if opset is None else {"opset": opset}
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        return folder / model.export(format="onnx", imgsz=160, **kwargs)
    finally:
        os.chdir(cwd)


def test_an_ultralytics_export_at_its_default_opset_analyses_as_its_opset_17_export(tmp_path):
    default, older = exported(tmp_path / "default", None), exported(tmp_path / "17", 17)
    assert default_opset(onnx.load(str(default))) > 17 and default_opset(onnx.load(str(older))) == 17
    groups = {}
    for name, path in (("default", default), ("17", older)):
        loaded = load_model(f"onnx:{path}")
        analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
        groups[name] = (len(analysis.groups), len(analysis.prunable()))
    assert groups["default"] == groups["17"] and groups["default"][1] > 0
