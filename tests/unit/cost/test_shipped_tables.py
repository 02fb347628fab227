"""Shipped latency tables: the RTX 2080 Ti TensorRT table loads with its full provenance, it is chosen by the
target's device, precision and batch (never by this host), its predictor returns the measured values for
mobilenet_v2's unpruned layers, and pruned widths are filled from the analytic model anchored on them."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest
import torch
from torchvision.models import mobilenet_v2, resnet18

from hwprune.cost.analytic import predict_ms
from hwprune.cost.lut import LutError, fingerprint, load_table
from hwprune.cost.shipped import shipped_predictor, shipped_tables
from hwprune.cost.signature import OpSignature
from hwprune.cost.space import channel_choices
from hwprune.graph.analyze import Analysis, analyze
from hwprune.targets import load_target

TABLE = "rtx-2080ti-trt84-fp32-b128.json"
TARGET = "rtx-2080ti-trt84-fp32"


def meta_analysis(model: torch.nn.Module, batch: int, name: str) -> Analysis:
    """The model analysed on the meta device: exact shapes, no compute. The predictor needs shapes only, and a
    real batch-128 analysis of mobilenet_v2 takes about 50 s on a 2-core CPU."""
    return analyze(model.eval().to("meta"), torch.empty(batch, 3, 224, 224, device="meta"), name)


@pytest.fixture(scope="module")
def mobilenet() -> Analysis:
    return meta_analysis(mobilenet_v2(weights=None), 128, "torchvision:mobilenet_v2")


@pytest.fixture(scope="module")
def shipped(mobilenet):
    return shipped_predictor(mobilenet, load_target(TARGET))


@pytest.fixture(scope="module")
def table():
    return dict(shipped_tables())[TABLE]


def test_table_loads_with_its_full_provenance(table):
    provenance = table.provenance
    assert provenance["device"] == "rtx-2080ti" and provenance["target"] == TARGET
    assert (provenance["runtime"], provenance["runtime_version"], provenance["precision"], provenance["batch"]) == (
        "tensorrt", "8.4.3", "fp32", 128)
    assert provenance["statistic"].startswith("mean of 1000") and "mean" in provenance["fields"]
    assert provenance["date"] and provenance["licence"].startswith("MIT")
    assert provenance["source"]["repository"] == "snu-mllab/Efficient-CNN-Depth-Compression"
    assert provenance["source"]["files"] and len(provenance["source"]["sha256"]) == 64
    assert "skip add" in provenance["mapping"]["residual_rows"]
    assert provenance["fingerprint"] == fingerprint(provenance) and table.call_overhead_ms is None
    assert 0 < provenance["per_call_ms"] < min(entry.median_ms for entry in table.entries.values())
    # the profile the table names has the table's settings
    target = load_target(provenance["target"])
    assert (target.runtime, target.default_dtype, target.default_batch) == ("tensorrt", "fp32", 128)
    # 50 measured layers; repeated blocks share a signature and pool their rows into one entry
    records = provenance["mapping"]["layers"]
    assert len(records) == 50 and {r["signature"] for r in records} == set(table.entries)
    for key, entry in table.entries.items():
        sig = OpSignature.from_key(key)
        rows = [r["mean_ms"] for r in records if r["signature"] == key]
        assert (sig.batch, sig.dtype, sig.op) == (128, "fp32", "conv2d")
        assert entry.median_ms == pytest.approx(statistics.fmean(rows), rel=1e-12)
        assert entry.samples == 1000 * len(rows) and entry.p90_ms >= entry.median_ms


def test_unpruned_mobilenet_v2_predicts_the_measured_layers(shipped, table):
    predictor, provenance = shipped
    assert provenance["source"] == "shipped" and provenance["table"] == TABLE
    assert (provenance["device"], provenance["precision"], provenance["batch"]) == ("rtx-2080ti", "fp32", 128)
    assert provenance["measured_layers"] == 50 and provenance["filled_analytically"] > 0
    assert provenance["unmeasured_layers"] == ["features.0.0", "features.18.0", "classifier.1"]
    assert predictor.provenance().runtime == "tensorrt" and predictor.provenance().source != "analytic"
    predicted = predictor.predict({}).layers_ms
    records = table.provenance["mapping"]["layers"]
    for record in records:
        assert predicted[record["layer"]] == pytest.approx(table.entries[record["signature"]].median_ms, rel=1e-12)
        if sum(r["signature"] == record["signature"] for r in records) == 1:
            assert predicted[record["layer"]] == pytest.approx(record["mean_ms"], rel=1e-12)


def test_pruned_widths_keep_the_per_call_cost_and_scale_the_measured_op_part(shipped, mobilenet, table):
    predictor, _ = shipped
    target = load_target(TARGET)
    keep = {}
    for group in mobilenet.prunable():
        choices = channel_choices(group, target.channel_alignment)
        keep[group.id] = choices[len(choices) // 2]
    full, pruned = predictor.predict({}), predictor.predict(keep)
    assert math.isfinite(pruned.total_ms) and 0 < pruned.total_ms < full.total_ms
    layer = next(layer for layer in predictor.layers if layer.name == "features.2.conv.0.0")  # 1x1, 16 -> 96
    sig = layer.signature
    per_call = table.provenance["per_call_ms"]
    scale = (table.get(sig).median_ms - per_call) / predict_ms(sig, target)
    ms, _exact = predictor.layer_ms(layer, sig.c_in, 48)
    assert ms == pytest.approx(per_call + scale * predict_ms(sig.with_channels(sig.c_in, 48), target), rel=1e-12)
    assert per_call < ms < table.get(sig).median_ms


def test_filled_points_can_never_be_saved_as_measurements(shipped, tmp_path):
    predictor, _ = shipped
    assert any(entry.samples == 0 for entry in predictor.table.entries.values())
    predictor.table.save(tmp_path / "filled.json")
    with pytest.raises(LutError, match="no valid measurement"):
        load_table(tmp_path / "filled.json")


def test_the_table_matches_by_device_profile_name_and_settings_never_by_host(mobilenet):
    same_gpu_fp32 = replace(load_target("rtx-2080ti"), default_dtype="fp32")
    assert shipped_predictor(mobilenet, same_gpu_fp32) is not None
    other_gpu = replace(load_target("t4"), default_dtype="fp32", default_batch=128)
    assert shipped_predictor(mobilenet, other_gpu) is None


def test_other_precision_batch_runtime_or_model_gets_none(mobilenet):
    assert shipped_predictor(mobilenet, load_target("rtx-2080ti")) is None  # same GPU, fp16
    assert shipped_predictor(mobilenet, load_target("cpu")) is None  # onnxruntime on another device
    single = meta_analysis(mobilenet_v2(weights=None), 1, "torchvision:mobilenet_v2")
    assert shipped_predictor(single, load_target(TARGET)) is None  # batch 1
    other = meta_analysis(resnet18(weights=None), 128, "torchvision:resnet18")
    assert shipped_predictor(other, load_target(TARGET)) is None  # none of its layers measured
