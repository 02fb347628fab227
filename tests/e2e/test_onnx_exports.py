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


def test_a_converted_c2f_split_is_pruned_by_equal_blocks_exactly_and_exports_with_its_new_sizes(tmp_path):
    """Every C2f chunk of an Ultralytics export is an ONNX Split with constant sizes [c, c]; loaded, it divides
    whatever width it gets (``frontends.onnx``), so its groups are prunable (8 refused before), removing
    zeroed channels is exact, and the pruned model's ONNX export splits at the new sizes, matches it, and keeps
    the user's file's input and output names, shapes and dtypes."""
    import random

    import torch

    from hwprune.export.onnx_export import OnnxIO, export_onnx
    from hwprune.export.verify import verify_onnx
    from hwprune.transform.prune import prune
    from tests.pruning_helpers import max_abs_diff, random_keep, zero_dropped_channels

    users = exported(tmp_path / "default", None)
    loaded = load_model(f"onnx:{users}")
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    split = [g for g in analysis.groups if "split" in g.couplings]
    assert len(split) >= 8 and all(g.prunable and g.repeat == 2 for g in split), [g.reason for g in split]
    assert not any("split" in (g.reason or "") for g in analysis.groups)
    # what stays whole is named as the user's file names it: the detection head's decode, node and op
    refused = [g.reason for g in analysis.groups if not g.prunable]
    assert refused and all("in ONNX node /model.22/" in r for r in refused if "could not map" in r)
    assert any("/model.22/Reshape" in r and "(Reshape)" in r for r in refused)
    rng = random.Random(0)
    keep = {g.id: random_keep(g, rng, 0.5) for g in split}
    for gid, kept in keep.items():
        zero_dropped_channels(analysis, analysis.group(gid), kept)
    x = loaded.example_input
    with torch.no_grad():
        reference = loaded.module(x)
    before = sum(p.numel() for p in loaded.module.parameters())
    pruned = prune(analysis, keep)
    with torch.no_grad():
        output = pruned(x)
    assert max_abs_diff(reference, output) <= 1e-4 * max(1.0, max_abs_diff(reference, 0 * reference))
    path = export_onnx(pruned, x, tmp_path / "pruned.onnx", io=OnnxIO.of(users))  # as a compile exports it
    # onnxruntime runs the file's Splits at the pruned widths (a Split at the old sizes would not run)
    assert verify_onnx(pruned, path, [x]).ok
    assert sum(p.numel() for p in pruned.parameters()) < before
    # the pruned file drops in where the user's was: the same input and output names, shapes and dtypes
    def io(file):
        graph = onnx.load(str(file)).graph
        weights = {t.name for t in graph.initializer}
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in (*[i for i in graph.input if i.name not in weights], *graph.output)]

    assert io(path) == io(users) and io(users)[0][0] == "images"
